"""`meta.k8s.io` Table responses, what `kubectl get` asks for with
`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`: a CRD version's `additionalPrinterColumns`
(their JSONPaths evaluated per object) after a Name column, or Name and Age for kinds without."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from harness.apiserver.errors import ApiError
from harness.apiserver.patches import JsonObj

TABLE_VERSIONS = ("v1", "v1beta1")
_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "priority": 0,
}
# What the real server adds for a CRD version that declares no columns.
_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp is a timestamp representing the server time when this object was "
    "created.",
}
# One step of a JSONPath: `.field`, `[3]`, `[*]`, `[?(@.key=="value")]` (the forms CRDs use).
_STEP = re.compile(
    r'\.([A-Za-z0-9_-]+)|\[(\d+)\]|\[(\*)\]|\[\?\(@\.([A-Za-z0-9_.-]+)==["\']([^"\']*)["\']\)\]'
)


def table_version(accept: str) -> str | None:
    """The meta.k8s.io Table version the Accept header asks for first, None if it wants no Table."""
    for media in accept.split(","):
        params = dict(part.strip().split("=", 1) for part in media.split(";")[1:] if "=" in part)
        if (
            params.get("as") == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") in TABLE_VERSIONS
        ):
            return params["v"]
    return None


def json_path(obj: Any, path: str) -> list[Any]:
    """Every value `path` selects in `obj`; a path this evaluator cannot read is a 500 (as a CRD
    with such a column is refused by the real server, it is a bug in the fake's caller)."""
    values = [obj]
    position = 0
    path = path.strip()
    while position < len(path):
        step = _STEP.match(path, position)
        if step is None:
            raise ApiError(500, f"unsupported JSONPath {path!r} at {position}")
        position = step.end()
        field, index, star, key, wanted = step.groups()
        found: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, dict) and field in value:
                found.append(value[field])
            elif index is not None and isinstance(value, list) and int(index) < len(value):
                found.append(value[int(index)])
            elif star is not None and isinstance(value, list):
                found.extend(value)
            elif key is not None and isinstance(value, list):
                found.extend(item for item in value if _lookup(item, key) == wanted)
        values = found
    return values


def _lookup(item: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return None if item is None else str(item)


def human_duration(seconds: float) -> str:
    """apimachinery's `duration.HumanDuration`, what date columns show (`45s`, `3m12s`, `5h`...)."""
    s = int(seconds)
    if s < 0:
        return "0s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _cell(column: Mapping[str, Any], obj: JsonObj) -> Any:
    values = json_path(obj, str(column.get("jsonPath", "")))
    if not values or values[0] is None:
        return None
    kind = column.get("type")
    if kind == "date":
        try:
            created = datetime.strptime(str(values[0]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return human_duration((datetime.now(UTC) - created).total_seconds())
    if len(values) > 1:
        return ",".join(str(v) for v in values)
    value = values[0]
    if kind in ("integer", "number", "boolean"):
        return value
    return value if isinstance(value, str) else str(value)


def table(
    objects: Iterable[JsonObj],
    columns: Sequence[Mapping[str, Any]] | None,
    *,
    version: str,
    resource_version: str,
    include_object: str | None,
    continue_token: str | None = None,
) -> JsonObj:
    """A Table of `objects` (already shown in the requested version). `columns` are the CRD
    version's printer columns (None: Name and Age); `include_object` is the request's
    `includeObject` (Metadata by default, None or Object)."""
    if include_object not in (None, "", "None", "Metadata", "Object"):
        raise ApiError(400, f'includeObject: Unsupported value: "{include_object}"')
    shown = list(columns) if columns else [_AGE_COLUMN]
    definitions = [
        _NAME_COLUMN,
        *(
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in shown
        ),
    ]
    rows = []
    for obj in objects:
        row: JsonObj = {"cells": [obj["metadata"]["name"], *(_cell(c, obj) for c in shown)]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    metadata: JsonObj = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
