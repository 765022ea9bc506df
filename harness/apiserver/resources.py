"""Resource types the fake API server serves: built-ins, CRD-backed types, and discovery documents.

One module: built-in and CRD-backed types share one registry and one discovery format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.apiserver.errors import ApiError, invalid

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")
SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-kairay-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# Field selectors the real server accepts beyond metadata.name / metadata.namespace; anything else is
# a 400 there, and code that relies on an unsupported one should fail here too.
_POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)
_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)
_NEW_EVENT_FIELDS = frozenset(
    {"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "reason", "type"}
)


@dataclass(frozen=True)
class ResourceType:
    """One served (group, version, plural). Versions of one CRD share storage under `storage_key`."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # CRD-backed types: strict about resourceVersion on PUT and validated against the CRD schema.
    crd_name: str | None = None
    # Deletes answer the deleted object for most types; a handful answer a Success Status instead.
    returns_deleted_object: bool = True
    extra_field_selectors: frozenset[str] = field(default_factory=frozenset)
    # Only PUT for these creates the object when absent (the real server's AllowCreateOnUpdate).
    create_on_update: bool = False
    # The version objects are stored in ("" = this one); all served versions of a CRD share storage.
    storage_version: str = ""
    # A CRD's /scale subresource: (specReplicasPath, statusReplicasPath, labelSelectorPath).
    scale: tuple[str, str, str | None] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_api_version(self) -> str:
        version = self.storage_version or self.version
        return f"{self.group}/{version}" if self.group else version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def discovery_entries(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entries = [entry]
        if self.status_subresource:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": list(STATUS_VERBS),
                }
            )
        if self.scale:
            entries.append(
                {
                    "name": f"{self.plural}/scale",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": list(STATUS_VERBS),
                }
            )
        return entries


def _builtin(
    group: str,
    version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    status: bool = False,
    returns_deleted_object: bool = True,
    fields: frozenset[str] = frozenset(),
    categories: tuple[str, ...] = (),
    create_on_update: bool = False,
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        singular=kind.lower(),
        namespaced=namespaced,
        short_names=short,
        categories=categories,
        status_subresource=status,
        returns_deleted_object=returns_deleted_object,
        extra_field_selectors=fields,
        create_on_update=create_on_update,
    )


BUILTINS: tuple[ResourceType, ...] = (
    _builtin(
        "",
        "v1",
        "Namespace",
        "namespaces",
        namespaced=False,
        short=("ns",),
        status=True,
        fields=frozenset({"status.phase"}),
    ),
    _builtin(
        "",
        "v1",
        "Node",
        "nodes",
        namespaced=False,
        short=("no",),
        status=True,
        fields=frozenset({"spec.unschedulable"}),
    ),
    _builtin("", "v1", "Pod", "pods", short=("po",), status=True, fields=_POD_FIELDS, categories=("all",)),
    _builtin("", "v1", "Service", "services", short=("svc",), status=True, categories=("all",)),
    _builtin("", "v1", "Endpoints", "endpoints", short=("ep",), returns_deleted_object=False),
    _builtin(
        "",
        "v1",
        "Secret",
        "secrets",
        returns_deleted_object=False,
        fields=frozenset({"type"}),
    ),
    _builtin("", "v1", "ConfigMap", "configmaps", short=("cm",), returns_deleted_object=False),
    _builtin("", "v1", "ServiceAccount", "serviceaccounts", short=("sa",), returns_deleted_object=False),
    _builtin(
        "",
        "v1",
        "Event",
        "events",
        short=("ev",),
        returns_deleted_object=False,
        fields=_EVENT_FIELDS,
        create_on_update=True,
    ),
    _builtin(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        short=("ev",),
        returns_deleted_object=False,
        fields=_NEW_EVENT_FIELDS,
        create_on_update=True,
    ),
    _builtin("coordination.k8s.io", "v1", "Lease", "leases", returns_deleted_object=False),
    # What `kairay manifests` installs besides the CRD. Nothing runs a Deployment's pods here.
    _builtin("apps", "v1", "Deployment", "deployments", short=("deploy",), status=True, categories=("all",)),
    _builtin("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    _builtin("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings"),
    _builtin("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False),
    _builtin(
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False
    ),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        short=("crd", "crds"),
        status=True,
    ),
)

_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key giving Kubernetes' version preference: GA > beta > alpha, higher numbers first."""
    match = _VERSION_RE.match(version)
    if match is None:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


def _scale_paths(scale: Mapping[str, Any] | None) -> tuple[str, str, str | None] | None:
    if scale is None:
        return None
    return (scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath"))


def crd_resource_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CRD as resource types; raises 422 for a CRD the real server refuses."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    name = (crd.get("metadata") or {}).get("name", "")
    causes: list[tuple[str, str]] = []
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not group:
        causes.append(("spec.group", "Required value"))
    if not plural:
        causes.append(("spec.names.plural", "Required value"))
    if not kind:
        causes.append(("spec.names.kind", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(("spec.scope", 'Unsupported value: must be "Cluster" or "Namespaced"'))
    if group and plural and name != f"{plural}.{group}":
        causes.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    versions = spec.get("versions") or []
    if not versions or sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(
            ("spec.versions", "Invalid value: must have exactly one version marked as storage version")
        )
    if causes:
        raise invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, causes)
    storage = next(v["name"] for v in versions if v.get("storage"))
    types = []
    for version in versions:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or spec.get("subresources") or {}
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                singular=names.get("singular") or kind.lower(),
                namespaced=spec["scope"] == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in subresources,
                scale=_scale_paths(subresources.get("scale")),
                crd_name=name,
                storage_version=storage,
                extra_field_selectors=frozenset(
                    sel["jsonPath"].lstrip(".") for sel in version.get("selectableFields") or ()
                ),
            )
        )
    return types


class ResourceRegistry:
    """What is served, by (group, version, plural), plus the discovery documents describing it."""

    def __init__(self, builtins: Iterable[ResourceType] = BUILTINS) -> None:
        self._types: dict[tuple[str, str], dict[str, ResourceType]] = {}
        self._crds: dict[str, list[ResourceType]] = {}
        for rt in builtins:
            self._add(rt)

    def _add(self, rt: ResourceType) -> None:
        self._types.setdefault((rt.group, rt.version), {})[rt.plural] = rt

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version), {}).get(plural)

    def register_crd(self, crd: Mapping[str, Any]) -> list[ResourceType]:
        types = crd_resource_types(crd)
        name = crd["metadata"]["name"]
        self.unregister_crd(name)
        for rt in types:
            self._add(rt)
        self._crds[name] = types
        return types

    def unregister_crd(self, name: str) -> None:
        for rt in self._crds.pop(name, []):
            served = self._types.get((rt.group, rt.version), {})
            served.pop(rt.plural, None)
            if not served:
                self._types.pop((rt.group, rt.version), None)

    def preferred_version(self, group: str) -> str | None:
        versions = self.group_versions(group)
        return versions[0] if versions else None

    def group_versions(self, group: str) -> list[str]:
        return sorted({v for g, v in self._types if g == group}, key=version_priority)

    def groups(self) -> list[str]:
        return sorted({g for g, _ in self._types if g})

    def all_types(self) -> list[ResourceType]:
        return [rt for served in self._types.values() for rt in served.values()]

    def find(self, name: str) -> ResourceType:
        """Resolve what a test names a resource by: plural, `plural.group`, kind, or short name.

        The preferred version wins when several versions serve the same resource.
        """
        wanted = name.lower()
        matches = [
            rt
            for rt in self.all_types()
            if wanted in (rt.plural, f"{rt.plural}.{rt.group}", rt.kind.lower(), rt.singular, *rt.short_names)
        ]
        if not matches:
            raise KeyError(f"no resource type called {name!r}")
        # Core before other groups (so "events" means v1 Events), then the preferred version.
        matches.sort(key=lambda rt: (rt.group != "", rt.group, version_priority(rt.version)))
        return matches[0]

    def resource_list(self, group: str, version: str) -> dict[str, Any]:
        served = self._types.get((group, version))
        if served is None:
            raise ApiError(404, "the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for rt in served.values() for entry in rt.discovery_entries()],
        }

    def api_group(self, group: str) -> dict[str, Any]:
        versions = self.group_versions(group)
        if not versions:
            raise ApiError(404, "the server could not find the requested resource")
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": listed,
            "preferredVersion": listed[0],
        }

    def api_group_list(self) -> dict[str, Any]:
        groups = []
        for group in self.groups():
            doc = self.api_group(group)
            del doc["kind"], doc["apiVersion"]
            groups.append(doc)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    @staticmethod
    def api_versions(server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }
