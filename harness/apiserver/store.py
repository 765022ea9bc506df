"""The fake API server's state: objects, resourceVersions, watch history, and the lifecycle rules
(status subresource, generation, finalizers, garbage collection, namespace termination) that the
real API server and its built-in controllers apply.

Everything here is synchronous and must only be called from one thread (the server's event loop);
work the real cluster does asynchronously (garbage collection, namespace cleanup) is handed to
`schedule`, which the server points at `loop.call_soon`.

One module: resourceVersions, watch history, finalizers, garbage collection and conversion act on
the same locked state; split, that state would leak across modules.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import random
import re
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harness.apiserver import errors
from harness.apiserver.errors import ApiError
from harness.apiserver.patches import (
    FieldPath,
    JsonObj,
    apply_conflicts,
    deep_copy,
    fields_v1,
    json_patch,
    leaf_paths,
    merge_patch,
    remove_path,
    strategic_merge_patch,
)
from harness.apiserver.resources import ResourceRegistry, ResourceType, crd_resource_types
from harness.apiserver.validation import Cause, meta_causes, name_causes

StorageKey = tuple[str, str]
ObjKey = tuple[str, str]  # (namespace or "" for cluster-scoped, name)
Sink = Callable[[str, JsonObj], None]
Predicate = Callable[[Mapping[str, Any]], bool]
# validate(crd, obj, old) -> errors with `.field` and `.reason` (kairay.api.crds.schema.FieldError).
Validator = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any] | None], Sequence[Any]]
# default(crd, obj) -> a copy of obj with the schema's defaults (kairay.api.crds.schema.apply_defaults).
Defaulter = Callable[[Mapping[str, Any], Mapping[str, Any]], JsonObj]
# The validator's reason for a field the schema doesn't declare (kairay.api.crds.schema.NOT_DECLARED):
# the real server prunes such fields rather than refusing the object.
UNKNOWN_FIELD = "field not declared in schema"

NAMESPACES: StorageKey = ("", "namespaces")
CRDS: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH, APPLY_PATCH)
# fieldValidation: refuse unknown fields, drop them with a Warning header (the default), or silently.
STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
FIELD_VALIDATIONS = (STRICT, WARN, IGNORE)

# Metadata the server owns: a client's values are ignored on create and carried over on update.
_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's generateName alphabet
_MISSING = object()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> JsonObj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _owner_uids(obj: Mapping[str, Any] | None) -> set[str]:
    if obj is None:
        return set()
    return {
        ref["uid"]
        for ref in _meta(obj).get("ownerReferences") or ()
        if isinstance(ref, dict) and "uid" in ref
    }


def _content(obj: Mapping[str, Any], without_status: bool) -> dict[str, Any]:
    """What `generation` tracks: everything but metadata (and status when it is a subresource)."""
    skip = {"metadata", "status"} if without_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


@dataclass
class WatchEvent:
    rv: int
    type: str
    namespace: str
    obj: JsonObj
    old: JsonObj | None


class Watcher:
    """One watch stream's filter. Selector transitions become ADDED / DELETED like upstream: an
    object modified into the selector is ADDED for this watcher, one modified out of it DELETED."""

    def __init__(self, key: StorageKey, namespace: str | None, predicate: Predicate, sink: Sink) -> None:
        self.key = key
        self.namespace = namespace
        self.predicate = predicate
        self.sink = sink

    def offer(self, event: WatchEvent) -> None:
        if self.namespace is not None and event.namespace != self.namespace:
            return
        new_match = self.predicate(event.obj)
        if event.type == "MODIFIED" and event.old is not None:
            old_match = self.predicate(event.old)
            if new_match:
                self.sink("MODIFIED" if old_match else "ADDED", event.obj)
            elif old_match:
                self.sink("DELETED", event.obj)
        elif new_match:
            self.sink(event.type, event.obj)


class Store:
    def __init__(
        self,
        registry: ResourceRegistry,
        *,
        history_size: int = 10_000,
        validator: Validator | None = None,
        defaulter: Defaulter | None = None,
        schedule: Callable[[Callable[[], None]], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.history_size = history_size
        self.validator = validator
        self.defaulter = defaulter
        self.schedule: Callable[[Callable[[], None]], Any] = schedule or (lambda fn: fn())
        self.rv = 0
        self._objects: dict[StorageKey, dict[ObjKey, JsonObj]] = defaultdict(dict)
        self._by_uid: dict[str, tuple[StorageKey, ObjKey]] = {}
        self._dependents: dict[str, set[str]] = defaultdict(set)
        self._history: dict[StorageKey, deque[WatchEvent]] = defaultdict(deque)
        self._evicted_rv: dict[StorageKey, int] = {}
        self._watchers: dict[StorageKey, set[Watcher]] = defaultdict(set)
        self._ns_counts: Counter[str] = Counter()
        self._apply_owners: dict[str, dict[str, frozenset[FieldPath]]] = {}
        self._next_ip = 10
        # Warnings for the request being served (the HTTP layer clears and sends them as headers).
        self.warnings: list[str] = []
        self._next_node_port = 30000
        ns_type = self.type_for(NAMESPACES)
        for name in DEFAULT_NAMESPACES:
            self.create(ns_type, None, {"metadata": {"name": name}})

    # --- lookups ---------------------------------------------------------------------------------

    def type_for(self, key: StorageKey) -> ResourceType:
        """Some served version of a storage key, for work that isn't tied to a request's version."""
        for rt in self.registry.all_types():
            if rt.storage_key == key:
                return rt
        raise KeyError(key)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> JsonObj:
        obj = self._objects[rt.storage_key].get((namespace or "", name))
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return obj

    def find(self, key: StorageKey, namespace: str | None, name: str) -> JsonObj | None:
        return self._objects[key].get((namespace or "", name))

    def stored(self, key: StorageKey, namespace: str | None) -> list[JsonObj]:
        """Every object of a storage key, in `namespace` when one is given."""
        return [o for (ns, _), o in self._objects[key].items() if namespace in (None, ns)]

    def select(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[JsonObj], str, str | None, int | None]:
        """Items sorted like etcd keys, the list's resourceVersion, next continue token, remaining.

        Pages are read from the live state, not from a snapshot at the first page's revision."""
        objects = self._objects[rt.storage_key]
        keys = sorted(objects) if namespace is None else sorted(k for k in objects if k[0] == namespace)
        if continue_token:
            try:
                start = tuple(json.loads(base64.urlsafe_b64decode(continue_token.encode()))["start"])
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise errors.bad_request(f"invalid continue token: {exc}") from exc
            keys = [k for k in keys if k > start]
        matching = [objects[k] for k in keys if predicate(objects[k])]
        if limit and len(matching) > limit:
            page = matching[:limit]
            last = _meta(page[-1])
            token = base64.urlsafe_b64encode(
                json.dumps({"start": [last.get("namespace", ""), last["name"]]}).encode()
            ).decode()
            return page, str(self.rv), token, len(matching) - limit
        return matching, str(self.rv), None, None

    # --- create / update / patch -----------------------------------------------------------------

    def _check_kind(self, rt: ResourceType, obj: JsonObj) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if rt.is_custom and (not api_version or not kind):
            raise errors.bad_request("Object 'Kind' is missing in the request body")
        if (api_version and api_version != rt.api_version) or (kind and kind != rt.kind):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})"
                if api_version != rt.api_version
                else f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        # Stored in the storage version; every served version reads it (`conversion: None`: the
        # versions share one schema, so converting rewrites apiVersion alone).
        obj["apiVersion"], obj["kind"] = rt.storage_api_version, rt.kind
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = WARN,
        apply_owners: dict[str, frozenset[FieldPath]] | None = None,
    ) -> JsonObj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = deep_copy(body)
        self._check_kind(rt, obj)
        meta = obj["metadata"]
        ns = self._request_namespace(rt, namespace, meta)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    "",
                    [("metadata.name", "Required value: name or generateName is required")],
                )
            meta["name"] = self._generate_name(rt.storage_key, ns, meta["generateName"])
        name = meta["name"]
        if ns:
            self._check_namespace_open(rt, ns, name)
        for field in (*_SERVER_META, "resourceVersion", "selfLink"):
            meta.pop(field, None)
        if apply_owners is None:
            meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rt.is_custom or "spec" in obj:
            meta["generation"] = 1
        if rt.status_subresource:
            obj.pop("status", None)
        self._default(rt, obj, None)
        obj = self._admit(rt, obj, None, name_causes(name, _name_rule(rt)), field_validation)
        meta = obj["metadata"]
        if (ns, name) in self._objects[rt.storage_key]:
            raise errors.already_exists(rt.plural, rt.group, name)
        if dry_run:
            return obj
        self._commit(rt.storage_key, obj, None)
        if apply_owners is not None:
            self._apply_owners[meta["uid"]] = apply_owners
        if rt.storage_key == CRDS:
            self.registry.register_crd(obj)
        return obj

    def _request_namespace(self, rt: ResourceType, namespace: str | None, meta: JsonObj) -> str:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return ""
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        ns = namespace or body_ns
        if not ns:
            raise errors.bad_request("an empty namespace may not be set during creation")
        meta["namespace"] = ns
        return str(ns)

    def _check_namespace_open(self, rt: ResourceType, ns: str, name: str) -> None:
        ns_obj = self._objects[NAMESPACES].get(("", ns))
        if ns_obj is None:
            raise errors.not_found("namespaces", "", ns)
        if _meta(ns_obj).get("deletionTimestamp"):
            raise errors.forbidden(
                rt.plural,
                rt.group,
                name,
                f"unable to create new content in namespace {ns} because it is being terminated",
            )

    def _generate_name(self, key: StorageKey, ns: str, prefix: str) -> str:
        while True:
            name = prefix[:58] + "".join(random.choices(_NAME_CHARS, k=5))
            if (ns, name) not in self._objects[key]:
                return name

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = WARN,
    ) -> tuple[JsonObj, bool]:
        """PUT; returns (object, created) since a few types create on update."""
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        meta: JsonObj = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old = self.find(rt.storage_key, namespace, name)
        if old is None:
            if rt.create_on_update and subresource is None:
                created = {**body, "metadata": {**meta, "name": name}}
                return self.create(
                    rt, namespace, created, dry_run=dry_run, field_validation=field_validation
                ), True
            raise errors.not_found(rt.plural, rt.group, name)
        rv = meta.get("resourceVersion")
        if not rv and rt.is_custom:
            raise errors.invalid(
                rt.kind,
                rt.group,
                name,
                [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")],
            )
        if rv and rv != _meta(old)["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name, errors.STALE_OBJECT)
        obj = deep_copy(body)
        self._check_kind(rt, obj)
        return self._replace(
            rt, old, obj, subresource=subresource, dry_run=dry_run, field_validation=field_validation
        ), False

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = WARN,
        field_manager: str | None = None,
        force: bool = False,
    ) -> tuple[JsonObj, bool]:
        """Returns (object, created); only server-side apply creates."""
        if patch_type == APPLY_PATCH:
            return self._apply(
                rt, namespace, name, patch, field_manager, force, subresource, dry_run, field_validation
            )
        if patch_type == STRATEGIC_MERGE_PATCH and rt.is_custom:
            # Custom resources carry no merge strategies, so the real server refuses the patch type.
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join(t for t in PATCH_TYPES if t != STRATEGIC_MERGE_PATCH),
            )
        old = self.get(rt, namespace, name)
        # A patch applies to the object as the request's version shows it.
        base = {**old, "apiVersion": rt.api_version}
        if patch_type == JSON_PATCH:
            new = json_patch(base, patch)
        elif not isinstance(patch, dict):
            raise errors.bad_request("the patch must be a JSON object")
        elif patch_type == STRATEGIC_MERGE_PATCH:
            new = strategic_merge_patch(deep_copy(base), patch)
        else:
            new = merge_patch(deep_copy(base), patch)
        if not isinstance(new, dict):
            raise ApiError(422, "the patched object must be a JSON object")
        new_meta = _meta(new)
        if new_meta.get("resourceVersion") not in (None, _meta(old)["resourceVersion"]):
            raise errors.conflict(rt.plural, rt.group, name, errors.STALE_OBJECT)
        if new_meta.get("uid") not in (None, _meta(old)["uid"]):
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {new_meta.get('uid')}, UID in object meta: "
                f"{_meta(old)['uid']}",
            )
        self._check_kind(rt, new)
        return self._replace(
            rt, old, new, subresource=subresource, dry_run=dry_run, field_validation=field_validation
        ), False

    def _apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        applied: Any,
        manager: str | None,
        force: bool,
        subresource: str | None,
        dry_run: bool,
        field_validation: str,
    ) -> tuple[JsonObj, bool]:
        """Simplified server-side apply: each applying manager owns the leaf fields it last applied;
        fields it stops applying are removed unless another applier owns them; changing a field
        another applier owns is a 409 unless `force`. Updates by non-appliers take no ownership."""
        if not manager:
            raise errors.bad_request("fieldManager is required for apply requests")
        if not isinstance(applied, dict):
            raise errors.bad_request("the applied configuration must be an object")
        applied = deep_copy(applied)
        meta = applied.setdefault("metadata", {})
        if not isinstance(meta, dict) or meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        if not applied.get("apiVersion") or not applied.get("kind"):
            raise errors.bad_request("apiVersion and kind must be set in an applied configuration")
        if subresource == "status":
            applied = {k: v for k, v in applied.items() if k in ("apiVersion", "kind", "metadata", "status")}
        paths = frozenset(leaf_paths(applied))
        old = self.find(rt.storage_key, namespace, name)
        if old is None:
            if subresource is not None:
                raise errors.not_found(rt.plural, rt.group, name)
            meta["managedFields"] = [_managed_entry(manager, rt, paths)]
            created = self.create(
                rt,
                namespace,
                applied,
                dry_run=dry_run,
                field_validation=field_validation,
                apply_owners={manager: paths},
            )
            return created, True
        self._check_kind(rt, applied)
        owners = self._apply_owners.get(_meta(old)["uid"], {})
        conflicts = apply_conflicts(old, applied, manager, owners)
        if conflicts and not force:
            listed = "\n".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
            raise ApiError(
                409,
                f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: {listed}",
            )
        merge = merge_patch if rt.is_custom else strategic_merge_patch
        new = merge(deep_copy(old), applied)
        others = {m: (p - paths if force else p) for m, p in owners.items() if m != manager}
        still_owned = frozenset().union(*others.values()) if others else frozenset()
        for path in owners.get(manager, frozenset()) - paths - still_owned:
            remove_path(new, path)
        new_owners = {**others, manager: paths}
        previous = {e.get("manager"): e for e in _meta(old).get("managedFields") or () if isinstance(e, dict)}
        _meta(new)["managedFields"] = [
            previous[m]
            if m in previous and previous[m].get("fieldsV1") == fields_v1(p)
            else _managed_entry(m, rt, p)
            for m, p in new_owners.items()
        ]
        result = self._replace(
            rt,
            old,
            new,
            subresource=subresource,
            dry_run=dry_run,
            field_validation=field_validation,
            keep_managed_fields=True,
        )
        if not dry_run:
            self._apply_owners[_meta(result)["uid"]] = new_owners
        return result, False

    def _replace(
        self,
        rt: ResourceType,
        old: JsonObj,
        new: JsonObj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = WARN,
        keep_managed_fields: bool = False,
        validate: bool = True,
    ) -> JsonObj:
        """The common tail of update, patch and apply: enforce what a client may change, then
        store (or finish deleting) the object. A write that changes nothing is not stored."""
        old_meta = _meta(old)
        name = old_meta["name"]
        if subresource == "status":
            status = new.get("status", _MISSING)
            new = deep_copy(old)
            if status is _MISSING:
                new.pop("status", None)
            else:
                new["status"] = status
        elif rt.status_subresource:
            if "status" in old:
                new["status"] = deep_copy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name", name) != name:
            raise errors.invalid(
                rt.kind, rt.group, name, [("metadata.name", "Invalid value: field is immutable")]
            )
        if rt.namespaced:
            meta["namespace"] = old_meta["namespace"]
        else:
            meta.pop("namespace", None)
        meta["name"] = name
        for field in _SERVER_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if not keep_managed_fields:
            if "managedFields" in old_meta:
                meta["managedFields"] = old_meta["managedFields"]
            else:
                meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or () if f not in (old_meta.get("finalizers") or ())]
            if added:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        (
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {added}",
                        )
                    ],
                )
        self._default(rt, new, old)
        if validate:
            new = self._admit(rt, new, old, [], field_validation)
            meta = new["metadata"]
        if "generation" in old_meta and _content(new, rt.status_subresource) != _content(
            old, rt.status_subresource
        ):
            meta["generation"] = old_meta["generation"] + 1
        if new == old:
            return old
        if dry_run:
            return new
        if old_meta.get("deletionTimestamp") and not self._pending_finalizers(rt.storage_key, new):
            return self._remove(rt.storage_key, new)
        self._commit(rt.storage_key, new, old)
        if rt.storage_key == CRDS:
            self.registry.register_crd(new)
        return new

    # --- type-specific behaviour -----------------------------------------------------------------

    def _default(self, rt: ResourceType, obj: JsonObj, old: JsonObj | None) -> None:
        """The defaulting and allocation the real server does for the types tests meet."""
        key = rt.storage_key
        meta = obj["metadata"]
        if key == NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            if old is None:
                obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
                obj["status"] = {"phase": "Active"}
        elif key == ("", "pods") and old is None:
            obj["status"] = {"phase": "Pending"}
        elif key == ("", "secrets"):
            self._default_secret(obj)
        elif key == ("", "services"):
            self._default_service(rt, obj, old)
        elif key == CRDS:
            obj["status"] = _crd_status(obj, (old or {}).get("status"))

    @staticmethod
    def _default_secret(obj: JsonObj) -> None:
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = obj.setdefault("data", {}) or {}
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data

    def _default_service(self, rt: ResourceType, obj: JsonObj, old: JsonObj | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or ():
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        if spec["type"] == "ExternalName":
            return
        old_spec = (old or {}).get("spec") or {}
        old_ip = old_spec.get("clusterIP")
        if old_ip and not spec.get("clusterIP"):
            # A PUT without the allocated IP keeps it (the real server's patchAllocatedValues).
            spec["clusterIP"], spec["clusterIPs"] = old_ip, old_spec.get("clusterIPs", [old_ip])
        elif old_ip and spec["clusterIP"] != old_ip:
            raise errors.invalid(
                rt.kind,
                rt.group,
                obj["metadata"]["name"],
                [("spec.clusterIPs[0]", f'Invalid value: "{spec["clusterIP"]}": may not change once set')],
            )
        elif not spec.get("clusterIP"):
            spec["clusterIP"] = f"10.96.{self._next_ip // 250}.{self._next_ip % 250 + 1}"
            self._next_ip += 1
        if spec["clusterIP"] != "None":
            spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            old_ports = {p.get("port"): p.get("nodePort") for p in old_spec.get("ports") or ()}
            for port in spec.get("ports") or ():
                if not port.get("nodePort"):
                    port["nodePort"] = old_ports.get(port.get("port")) or self._allocate_node_port()
        if old is None:
            obj["status"] = {"loadBalancer": {}}

    def _allocate_node_port(self) -> int:
        self._next_node_port += 1
        return self._next_node_port

    def _admit(
        self, rt: ResourceType, obj: JsonObj, old: JsonObj | None, causes: list[Cause], field_validation: str
    ) -> JsonObj:
        """Validate `obj`, and for custom resources do what the real server does with a CRD schema:
        prune undeclared fields (or refuse them under fieldValidation=Strict), apply defaults, then
        check the schema and CEL rules. Returns the object to store."""
        name = obj["metadata"]["name"]
        causes = causes + meta_causes(obj["metadata"])
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        if rt.storage_key == CRDS:
            crd_resource_types(obj)
        crd = self._objects[CRDS].get(("", rt.crd_name)) if rt.crd_name else None
        if crd is None or self.validator is None:
            return obj
        found = self._run_validator(crd, obj, old)
        unknown = [field for field, reason in found if reason == UNKNOWN_FIELD]
        if unknown and field_validation == STRICT:
            raise errors.bad_request(
                "strict decoding error: " + ", ".join(f'unknown field "{field}"' for field in unknown)
            )
        if field_validation == WARN:
            self.warnings += [f'unknown field "{field}"' for field in unknown]
        for field in unknown:
            _prune(obj, field)
        changed = False
        if self.defaulter is not None:
            defaulted = self.defaulter(crd, obj)
            changed = defaulted != obj
            obj = defaulted
        if unknown or changed:
            found = self._run_validator(crd, obj, old)
        if found:
            raise errors.invalid(rt.kind, rt.group, name, found)
        return obj

    def _run_validator(self, crd: JsonObj, obj: JsonObj, old: JsonObj | None) -> list[Cause]:
        assert self.validator is not None
        found = [
            (str(getattr(e, "field", "")), str(getattr(e, "reason", e)))
            for e in self.validator(crd, obj, old)
        ]
        # Every object has these, whether or not the schema declares them.
        return [
            (field, reason)
            for field, reason in found
            if not (reason == UNKNOWN_FIELD and field in ("apiVersion", "kind", "metadata"))
        ]

    def _pending_finalizers(self, key: StorageKey, obj: JsonObj) -> list[str]:
        pending = list(_meta(obj).get("finalizers") or ())
        if key == NAMESPACES:
            pending += (obj.get("spec") or {}).get("finalizers") or []
        return pending

    # --- delete ----------------------------------------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[JsonObj, bool]:
        """Returns (object as now stored or as last seen, removed). Objects with finalizers get a
        deletionTimestamp and stay until the last finalizer goes."""
        old = self.get(rt, namespace, name)
        old_meta = _meta(old)
        for field in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != old_meta[field]:
                label = "UID" if field == "uid" else "ResourceVersion"
                raise errors.conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted}, {label} in object meta: "
                    f"{old_meta[field]}",
                )
        policy = propagation or "Background"
        if policy not in ("Foreground", "Background", "Orphan"):
            raise errors.bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        if dry_run or old_meta.get("deletionTimestamp"):
            return old, False
        return self._delete(rt.storage_key, old, policy)

    def _delete(self, key: StorageKey, old: JsonObj, policy: str) -> tuple[JsonObj, bool]:
        uid = _meta(old)["uid"]
        if policy == "Orphan":
            self._orphan_dependents(uid)
        new = deep_copy(old)
        meta = new["metadata"]
        foreground = policy == "Foreground" and bool(self._live_dependents(uid))
        if foreground and "foregroundDeletion" not in (meta.get("finalizers") or ()):
            meta["finalizers"] = [*(meta.get("finalizers") or ()), "foregroundDeletion"]
        if key == NAMESPACES:
            new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
        if not self._pending_finalizers(key, new):
            return self._remove(key, old), True
        meta["deletionTimestamp"] = now()
        meta["deletionGracePeriodSeconds"] = 0
        if "generation" in meta:
            meta["generation"] += 1
        self._commit(key, new, old)
        if foreground:
            self.schedule(lambda: self._delete_dependents(uid, "Foreground"))
        if key == NAMESPACES:
            self.schedule(lambda: self._purge_namespace(meta["name"]))
        return new, False

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate,
        *,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> None:
        for obj in self.select(rt, namespace, predicate)[0]:
            meta = _meta(obj)
            self.delete(rt, meta.get("namespace"), meta["name"], propagation=propagation, dry_run=dry_run)

    def _live_dependents(self, uid: str) -> list[str]:
        return [d for d in self._dependents.get(uid, ()) if d in self._by_uid]

    def _locate(self, uid: str) -> tuple[StorageKey, JsonObj] | None:
        where = self._by_uid.get(uid)
        if where is None:
            return None
        key, obj_key = where
        return key, self._objects[key][obj_key]

    def _orphan_dependents(self, owner_uid: str) -> None:
        for dep_uid in self._live_dependents(owner_uid):
            located = self._locate(dep_uid)
            if located is None:
                continue
            key, dep = located
            self._drop_owner_reference(key, dep, owner_uid)

    def _drop_owner_reference(self, key: StorageKey, dep: JsonObj, owner_uid: str) -> None:
        new = deep_copy(dep)
        refs = [r for r in _meta(new).get("ownerReferences") or () if r.get("uid") != owner_uid]
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        self._replace(self.type_for(key), dep, new, validate=False)

    def _delete_dependents(self, owner_uid: str, policy: str) -> None:
        for dep_uid in self._live_dependents(owner_uid):
            located = self._locate(dep_uid)
            if located is not None and not _meta(located[1]).get("deletionTimestamp"):
                self._delete(located[0], located[1], policy)
        self._release_foreground(owner_uid)

    def _collect_garbage(self, owner_uid: str) -> None:
        """The garbage collector's reaction to a removed owner: dependents that have no other live
        owner are deleted (in the background, so recursively), others just lose the reference."""
        for dep_uid in list(self._dependents.pop(owner_uid, ())):
            located = self._locate(dep_uid)
            if located is None:
                continue
            key, dep = located
            if any(uid in self._by_uid for uid in _owner_uids(dep) - {owner_uid}):
                self._drop_owner_reference(key, dep, owner_uid)
            elif not _meta(dep).get("deletionTimestamp"):
                self._delete(key, dep, "Background")

    def _release_foreground(self, owner_uid: str) -> None:
        located = self._locate(owner_uid)
        if located is None:
            return
        key, owner = located
        finalizers = _meta(owner).get("finalizers") or []
        if "foregroundDeletion" not in finalizers or self._live_dependents(owner_uid):
            return
        new = deep_copy(owner)
        new["metadata"]["finalizers"] = [f for f in finalizers if f != "foregroundDeletion"]
        self._replace(self.type_for(key), owner, new, validate=False)

    def _purge_namespace(self, ns: str) -> None:
        """The namespace controller: delete everything in a terminating namespace, then the
        namespace itself once it is empty (see `_finalize_namespace`)."""
        for key, objects in list(self._objects.items()):
            for (obj_ns, _name), obj in list(objects.items()):
                if obj_ns == ns and not _meta(obj).get("deletionTimestamp"):
                    self._delete(key, obj, "Background")
        self._finalize_namespace(ns)

    def _finalize_namespace(self, ns: str) -> None:
        ns_obj = self._objects[NAMESPACES].get(("", ns))
        if ns_obj is None or not _meta(ns_obj).get("deletionTimestamp") or self._ns_counts[ns]:
            return
        if "kubernetes" in (ns_obj.get("spec") or {}).get("finalizers", ()):
            new = deep_copy(ns_obj)
            new["spec"]["finalizers"] = [f for f in new["spec"]["finalizers"] if f != "kubernetes"]
            self._replace(self.type_for(NAMESPACES), ns_obj, new, validate=False)

    def _remove(self, key: StorageKey, obj: JsonObj) -> JsonObj:
        """Really delete: a DELETED event carrying the final state at a fresh resourceVersion, then
        the follow-up work of the cluster's controllers."""
        self.rv += 1
        final = {**obj, "metadata": {**_meta(obj), "resourceVersion": str(self.rv)}}
        meta = final["metadata"]
        ns, uid = meta.get("namespace", ""), meta["uid"]
        stored = self._objects[key].pop((ns, meta["name"]))
        self._by_uid.pop(uid, None)
        self._apply_owners.pop(uid, None)
        owners = _owner_uids(stored) | _owner_uids(obj)
        for owner in owners:
            self._forget_dependent(owner, uid)
        if ns:
            self._ns_counts[ns] -= 1
        self._record(key, WatchEvent(self.rv, "DELETED", ns, final, None))
        if self._dependents.get(uid):
            self.schedule(lambda: self._collect_garbage(uid))
        for owner in owners:
            self.schedule(functools.partial(self._release_foreground, owner))
        if ns:
            self.schedule(lambda: self._finalize_namespace(ns))
        if key == CRDS:
            self._drop_custom_resources(final)
        return final

    def _drop_custom_resources(self, crd: JsonObj) -> None:
        """A removed CRD takes its objects with it (the real server's cleanup finalizer, without
        waiting for the objects' own finalizers)."""
        self.registry.unregister_crd(crd["metadata"]["name"])
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for obj in list(self._objects[key].values()):
            self._remove(key, obj)

    # --- storage and watch -----------------------------------------------------------------------

    def _commit(self, key: StorageKey, obj: JsonObj, old: JsonObj | None) -> None:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        ns, uid = meta.get("namespace", ""), meta["uid"]
        self._objects[key][(ns, meta["name"])] = obj
        if old is None:
            self._by_uid[uid] = (key, (ns, meta["name"]))
            if ns:
                self._ns_counts[ns] += 1
        old_owners, new_owners = _owner_uids(old), _owner_uids(obj)
        for owner in old_owners - new_owners:
            self._forget_dependent(owner, uid)
        for owner in new_owners - old_owners:
            self._dependents[owner].add(uid)
        self._record(key, WatchEvent(self.rv, "MODIFIED" if old else "ADDED", ns, obj, old))

    def _forget_dependent(self, owner: str, uid: str) -> None:
        dependents = self._dependents.get(owner)
        if dependents is not None:
            dependents.discard(uid)
            if not dependents:
                del self._dependents[owner]

    def _record(self, key: StorageKey, event: WatchEvent) -> None:
        history = self._history[key]
        history.append(event)
        while len(history) > self.history_size:
            self._evicted_rv[key] = history.popleft().rv
        for watcher in list(self._watchers.get(key, ())):
            watcher.offer(event)

    def open_watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        predicate: Predicate,
        since: str | None,
        send_initial_events: bool,
        sink: Sink,
    ) -> Watcher:
        """Start a watch: first what the client missed (every matching object as ADDED when no
        resourceVersion is given, else the retained events after it), then live events, all through
        `sink`. A resourceVersion older than the retained history is 410 Gone."""
        key = rt.storage_key
        watcher = Watcher(key, namespace, predicate, sink)
        if since in (None, "", "0") or send_initial_events:
            for obj in self.select(rt, namespace, predicate)[0]:
                sink("ADDED", obj)
            if send_initial_events:
                sink(
                    "BOOKMARK",
                    {
                        "metadata": {
                            "resourceVersion": str(self.rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        }
                    },
                )
        else:
            try:
                start = int(str(since))
            except ValueError as exc:
                raise errors.bad_request(f'resourceVersion: Invalid value: "{since}"') from exc
            evicted = self._evicted_rv.get(key, 0)
            if start < evicted:
                raise errors.gone(f"too old resource version: {start} ({evicted + 1})")
            for event in self._history[key]:
                if event.rv > start:
                    watcher.offer(event)
        self._watchers[key].add(watcher)
        return watcher

    def close_watch(self, watcher: Watcher) -> None:
        self._watchers[watcher.key].discard(watcher)

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def trim_history(self) -> None:
        for key, history in self._history.items():
            while len(history) > self.history_size:
                self._evicted_rv[key] = history.popleft().rv


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _prune(obj: JsonObj, field: str) -> None:
    """Remove the field a validator names as `a.b[2].c`."""
    parts: list[str | int] = [key if key else int(index) for key, index in _PATH_PART.findall(field)]
    current: Any = obj
    for part in parts[:-1]:
        if isinstance(part, int):
            current = current[part] if isinstance(current, list) and part < len(current) else None
        else:
            current = current.get(part) if isinstance(current, dict) else None
        if current is None:
            return
    if parts and isinstance(current, dict) and isinstance(parts[-1], str):
        current.pop(parts[-1], None)


def _name_rule(rt: ResourceType) -> str:
    if rt.storage_key == NAMESPACES:
        return "dns1123-label"
    if rt.storage_key == ("", "services"):
        return "dns1035-label"
    return "dns1123-subdomain"


def _managed_entry(manager: str, rt: ResourceType, paths: Iterable[FieldPath]) -> JsonObj:
    return {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": rt.api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(paths),
    }


def _crd_status(crd: JsonObj, old_status: JsonObj | None) -> JsonObj:
    """What the CRD controllers report: names accepted, established, versions stored."""
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    stored = list((old_status or {}).get("storedVersions") or ())
    stored += [v["name"] for v in spec.get("versions") or () if v.get("storage") and v["name"] not in stored]
    if old_status and old_status.get("conditions"):
        # Keep the transition times: nothing transitions when an established CRD is updated.
        return {"acceptedNames": names, "storedVersions": stored, "conditions": old_status["conditions"]}
    timestamp = now()
    return {
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": timestamp,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": timestamp,
            },
        ],
    }
