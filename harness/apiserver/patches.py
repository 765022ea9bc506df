"""Patch formats: JSON merge (RFC 7386), strategic merge (approximation), JSON patch (RFC 6902),
and the field bookkeeping behind a simplified server-side apply."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.apiserver.errors import ApiError, bad_request

JsonObj = dict[str, Any]
FieldPath = tuple[str, ...]


def deep_copy(value: Any) -> Any:
    """Copy of a JSON value; much faster than `copy.deepcopy` on the plain dicts/lists we store."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return deep_copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Strategic merge patch: lists of these fields merge by the named key, as the built-in Go types'
# `patchMergeKey` tags say. Keyed by the field name (and its parent where the key depends on it).
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",
}
# Primitive lists with `patchStrategy:"merge"`: a patch adds to them instead of replacing them.
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})
_CONTAINER_LISTS = frozenset({"containers", "initContainers", "ephemeralContainers"})


def _merge_key(path: FieldPath) -> str | None:
    name = path[-1]
    if name == "ports":
        if len(path) >= 2 and path[-2] in _CONTAINER_LISTS:
            return "containerPort"
        return "port" if path == ("spec", "ports") else None
    return _MERGE_KEYS.get(name)


def strategic_merge_patch(target: Any, patch: Any, path: FieldPath = ()) -> Any:
    """Strategic merge for built-in types: keyed lists merge by their merge key, `$patch`,
    `$retainKeys` and `$deleteFromPrimitiveList/...` directives are honoured, `$setElementOrder` is
    accepted and ignored (order of merged lists is the target's, new elements appended)."""
    if not isinstance(patch, dict):
        return deep_copy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: deep_copy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            remove = set(value or ())
            result[field] = [v for v in result.get(field) or () if v not in remove]
            continue
        if value is None:
            result.pop(key, None)
            continue
        child_path = (*path, key)
        current = result.get(key)
        if isinstance(value, list):
            result[key] = _merge_list(current, value, child_path)
        else:
            merged = strategic_merge_patch(current, value, child_path)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"] or ())
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(current: Any, patch: list[Any], path: FieldPath) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [deep_copy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    existing = list(current) if isinstance(current, list) else []
    if path[-1] in _MERGED_PRIMITIVE_LISTS:
        return existing + [deep_copy(v) for v in patch if v not in existing]
    key = _merge_key(path)
    if key is None or not all(isinstance(item, dict) for item in patch):
        return [deep_copy(i) for i in patch]
    for item in patch:
        if key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (i for i, old in enumerate(existing) if isinstance(old, dict) and old.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del existing[index]
        elif index is None:
            existing.append(strategic_merge_patch({}, item, path))
        else:
            existing[index] = strategic_merge_patch(existing[index], item, path)
    return existing


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ApiError(422, f"jsonpatch: doc is missing path: {path!r}")
    return current, parts[-1]


def _get(doc: Any, path: str) -> Any:
    current = doc
    for part in _pointer(path):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise ApiError(422, f"jsonpatch: doc is missing path: {path!r}")
    return current


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, f"jsonpatch: add operation does not apply: index out of range: {path!r}")
    else:
        raise ApiError(422, f"jsonpatch: doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent, last = _resolve_parent(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise ApiError(422, f"jsonpatch: remove operation does not apply: doc is missing path: {path!r}")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of `doc`; failures are 422 like the real server's."""
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = deep_copy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"jsonpatch: missing value for {kind} at {path!r}")
        if kind == "add":
            result = _add(result, path, deep_copy(op["value"]))
        elif kind == "remove":
            result = _remove(result, path)
        elif kind == "replace":
            _get(result, path)
            result = _add(_remove(result, path), path, deep_copy(op["value"])) if path else op["value"]
        elif kind in ("move", "copy"):
            value = deep_copy(_get(result, op["from"]))
            if kind == "move":
                result = _remove(result, op["from"])
            result = _add(result, path, value)
        elif kind == "test":
            if _get(result, path) != op["value"]:
                raise ApiError(422, f"jsonpatch: testing value {path!r} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return result


# --- server-side apply -------------------------------------------------------------------------

# Fields an applier never owns: identity and bookkeeping the server manages itself.
_UNOWNED_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    }
)


def leaf_paths(obj: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    """Paths of the fields an applied configuration sets. Lists are atomic (one leaf), as are
    scalars and empty maps; this is what a manager owns after it applies `obj`."""
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        if not prefix and key in ("apiVersion", "kind"):
            continue
        if prefix == ("metadata",) and key in _UNOWNED_METADATA:
            continue
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            paths |= leaf_paths(value, path)
        else:
            paths.add(path)
    return paths


def get_path(obj: Mapping[str, Any], path: FieldPath) -> Any:
    current: Any = obj
    for part in path:
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


_MISSING = object()


def remove_path(obj: JsonObj, path: FieldPath) -> None:
    """Delete a field, then any maps left empty by it (except the top-level ones)."""
    parents: list[tuple[JsonObj, str]] = []
    current: Any = obj
    for part in path[:-1]:
        if not isinstance(current, dict) or not isinstance(current.get(part), dict):
            return
        parents.append((current, part))
        current = current[part]
    if isinstance(current, dict):
        current.pop(path[-1], None)
    for parent, key in reversed(parents[1:]):
        if parent[key] == {}:
            del parent[key]


def apply_conflicts(
    live: Mapping[str, Any],
    applied: Mapping[str, Any],
    manager: str,
    owners: Mapping[str, frozenset[FieldPath]],
) -> list[tuple[str, FieldPath]]:
    """(other manager, path) pairs where `applied` would change a value another applier owns."""
    conflicts = []
    for path in sorted(leaf_paths(applied)):
        for other, paths in owners.items():
            if other != manager and path in paths and get_path(live, path) != get_path(applied, path):
                conflicts.append((other, path))
    return conflicts


def fields_v1(paths: Iterable[FieldPath]) -> JsonObj:
    """Render owned paths in the `FieldsV1` shape (`{"f:spec": {"f:replicas": {}}}`)."""
    tree: JsonObj = {}
    for path in paths:
        node = tree
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return tree
