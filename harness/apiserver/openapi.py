"""OpenAPI documents as kube-apiserver publishes them, for what kubectl reads from them.

kubectl looks for three things: a PATCH operation per group-version-kind whose parameters list
`fieldValidation` (else it validates on the client, which needs the whole v2 document); the
request body types of that PATCH (no `application/strategic-merge-patch+json` for custom
resources, so `kubectl apply` sends a merge patch); and a component schema tagged with the kind's
`x-kubernetes-group-version-kind` (`kubectl explain`). Custom resources get their CRD version's
`openAPIV3Schema`; built-in kinds an open schema (this fake does not validate their fields).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from harness.apiserver.patches import JsonObj, deep_copy
from harness.apiserver.resources import ResourceRegistry, ResourceType

# The CRD version entry (with its `schema`) for a custom resource type, None for a built-in.
CrdVersionOf = Callable[[ResourceType], Mapping[str, Any] | None]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_PATCH_TYPES_BUILTIN = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
_PATCH_TYPES_CUSTOM = tuple(t for t in _PATCH_TYPES_BUILTIN if "strategic" not in t)
_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
_META_SCHEMAS: dict[str, JsonObj] = {
    OBJECT_META: {
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Name must be unique within a namespace."},
            "namespace": {"type": "string", "description": "Namespace defines the space of the name."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "managedFields": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "generateName": {"type": "string"},
        },
    },
    LIST_META: {
        "description": "ListMeta describes metadata that synthetic resources must have.",
        "type": "object",
        "properties": {
            "resourceVersion": {"type": "string"},
            "continue": {"type": "string"},
            "remainingItemCount": {"type": "integer", "format": "int64"},
        },
    },
}


def schema_name(rt: ResourceType, kind: str | None = None) -> str:
    """`sh.kaito.v1beta1.Workspace` for a custom kind, `io.k8s.api.core.v1.Pod` for a built-in."""
    kind = kind or rt.kind
    if rt.is_custom:
        return ".".join([*reversed(rt.group.split(".")), rt.version, kind])
    group = rt.group.removesuffix(".k8s.io").replace(".", "") if rt.group else "core"
    if rt.group == "apiextensions.k8s.io":
        return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{rt.version}.{kind}"
    return f"io.k8s.api.{group}.{rt.version}.{kind}"


def group_version_path(group: str, version: str) -> str:
    """`api/v1` or `apis/<group>/<version>`: the key of the v3 discovery document."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gvk(rt: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": kind or rt.kind}


def _kind_schema(rt: ResourceType, crd_version: Mapping[str, Any] | None, ref: str) -> JsonObj:
    if crd_version is not None:
        schema = deep_copy(dict((crd_version.get("schema") or {}).get("openAPIV3Schema") or {}))
    else:
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    }
    properties["kind"] = {
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object represents.",
    }
    properties["metadata"] = {"allOf": [{"$ref": f"{ref}{OBJECT_META}"}], "default": {}}
    schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
    return schema


def _list_schema(rt: ResourceType, ref: str) -> JsonObj:
    return {
        "type": "object",
        "description": f"{rt.list_kind} is a list of {rt.kind}",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"allOf": [{"$ref": f"{ref}{LIST_META}"}], "default": {}},
            "items": {"type": "array", "items": {"$ref": f"{ref}{schema_name(rt)}"}},
        },
        "x-kubernetes-group-version-kind": [_gvk(rt, rt.list_kind)],
    }


def _resource_paths(rt: ResourceType) -> dict[str, str]:
    """{collection path, item path} with their `{namespace}` / `{name}` placeholders."""
    prefix = f"/{group_version_path(rt.group, rt.version)}"
    collection = (
        f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
    )
    return {"collection": collection, "item": f"{collection}/{{name}}"}


class _Operations:
    """Builds operations in v3 (`requestBody`, `schema` in parameters) or v2 (`consumes`) style."""

    def __init__(self, v3: bool) -> None:
        self.v3 = v3
        self.ref = "#/components/schemas/" if v3 else "#/definitions/"

    def param(self, name: str, where: str = "query") -> JsonObj:
        param: JsonObj = {"name": name, "in": where, "uniqueItems": True}
        if self.v3:
            param["schema"] = {"type": "string", "uniqueItems": True}
        else:
            param["type"] = "string"
        if where == "path":
            param["required"] = True
        return param

    def operation(
        self, rt: ResourceType, action: str, verb_id: str, params: Iterable[str], body_types: Iterable[str]
    ) -> JsonObj:
        kind = rt.list_kind if action == "list" else rt.kind
        op: JsonObj = {
            "operationId": f"{verb_id}{rt.kind}",
            "parameters": [self.param(p) for p in params],
            "responses": {"200": self.response(schema_name(rt, kind))},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(rt),
        }
        types = list(body_types)
        if types:
            if self.v3:
                schema = {"$ref": f"{self.ref}{schema_name(rt)}"}
                op["requestBody"] = {"content": {t: {"schema": schema} for t in types}, "required": True}
            else:
                op["consumes"] = types
                op["parameters"].append(
                    {"name": "body", "in": "body", "required": True, "schema": {"type": "object"}}
                )
        return op

    def response(self, name: str) -> JsonObj:
        schema = {"$ref": f"{self.ref}{name}"}
        if self.v3:
            return {"description": "OK", "content": {"application/json": {"schema": schema}}}
        return {"description": "OK", "schema": schema}

    def paths(self, rt: ResourceType) -> dict[str, JsonObj]:
        urls = _resource_paths(rt)
        patch_types = _PATCH_TYPES_CUSTOM if rt.is_custom else _PATCH_TYPES_BUILTIN
        scope = [self.param("namespace", "path")] if rt.namespaced else []
        named = [*scope, self.param("name", "path")]
        return {
            urls["collection"]: {
                "parameters": scope,
                "get": self.operation(rt, "list", "list", ("labelSelector", "fieldSelector", "limit"), ()),
                "post": self.operation(rt, "post", "create", _WRITE_PARAMS, ("application/json",)),
                "delete": self.operation(rt, "deletecollection", "deleteCollection", ("dryRun",), ()),
            },
            urls["item"]: {
                "parameters": named,
                "get": self.operation(rt, "get", "read", (), ()),
                "put": self.operation(rt, "put", "replace", _WRITE_PARAMS, ("application/json",)),
                "patch": self.operation(rt, "patch", "patch", (*_WRITE_PARAMS, "force"), patch_types),
                "delete": self.operation(rt, "delete", "delete", ("dryRun", "propagationPolicy"), ()),
            },
        }

    def schemas(self, types: Iterable[ResourceType], crd_version_of: CrdVersionOf) -> dict[str, JsonObj]:
        schemas: dict[str, JsonObj] = {name: deep_copy(s) for name, s in _META_SCHEMAS.items()}
        for rt in types:
            schemas[schema_name(rt)] = _kind_schema(rt, crd_version_of(rt), self.ref)
            schemas[schema_name(rt, rt.list_kind)] = _list_schema(rt, self.ref)
        return schemas


def _served(registry: ResourceRegistry) -> dict[tuple[str, str], list[ResourceType]]:
    served: dict[tuple[str, str], list[ResourceType]] = {}
    for rt in registry.all_types():
        served.setdefault((rt.group, rt.version), []).append(rt)
    return served


def v3_document(
    registry: ResourceRegistry, crd_version_of: CrdVersionOf, group: str, version: str
) -> JsonObj | None:
    """`/openapi/v3/apis/<group>/<version>` (or `/openapi/v3/api/v1`); None when not served."""
    types = _served(registry).get((group, version))
    if types is None:
        return None
    ops = _Operations(v3=True)
    paths: dict[str, JsonObj] = {}
    for rt in types:
        paths.update(ops.paths(rt))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.31.0-kairay-fake"},
        "paths": paths,
        "components": {"schemas": ops.schemas(types, crd_version_of)},
    }


def v3_discovery(registry: ResourceRegistry, crd_version_of: CrdVersionOf) -> JsonObj:
    """`/openapi/v3`: each group-version's document URL, with a hash of its content (clients cache
    by it, so a changed CRD must change the hash)."""
    paths = {}
    for group, version in sorted(_served(registry)):
        doc = v3_document(registry, crd_version_of, group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()
        key = group_version_path(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def v2_document(registry: ResourceRegistry, crd_version_of: CrdVersionOf) -> JsonObj:
    """`/openapi/v2` as JSON: every served kind's paths and definitions in one Swagger 2.0 document."""
    ops = _Operations(v3=False)
    paths: dict[str, JsonObj] = {}
    types = registry.all_types()
    for rt in types:
        paths.update(ops.paths(rt))
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.31.0-kairay-fake"},
        "paths": paths,
        "definitions": ops.schemas(types, crd_version_of),
    }
