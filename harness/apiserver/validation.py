"""ObjectMeta checks every real API server applies, whatever the type: names, labels, annotations,
finalizers and owner references. Cheap, and they catch controller bugs a permissive fake would hide."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_ANNOTATIONS_LIMIT = 256 * 1024

Cause = tuple[str, str]


def _is_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS1123_SUBDOMAIN.match(value) is not None


def name_causes(name: str, rule: str) -> list[Cause]:
    """`rule` is the real server's name validation for the type: dns1123-label (namespaces),
    dns1035-label (services) or dns1123-subdomain (everything else here)."""
    if rule == "dns1123-label":
        ok = len(name) <= 63 and _DNS1123_LABEL.match(name) is not None
        what = (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character"
        )
    elif rule == "dns1035-label":
        ok = len(name) <= 63 and _DNS1035_LABEL.match(name) is not None
        what = (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
            "an alphabetic character, and end with an alphanumeric character"
        )
    else:
        ok = _is_subdomain(name)
        what = (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
            "or '.', and must start and end with an alphanumeric character"
        )
    return [] if ok else [("metadata.name", f'Invalid value: "{name}": {what}')]


def _qualified_name_causes(key: str, field: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if "/" in prefix or (prefix and not _is_subdomain(prefix)) or (not prefix and "/" in key):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or _LABEL_NAME.match(name) is None:
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (at most 63 characters)"
        )
    return [(field, f'Invalid value: "{key}": {p}') for p in problems]


def meta_causes(meta: Mapping[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        return [("metadata.labels", "Invalid value: must be a map of strings")]
    for key, value in labels.items():
        causes += _qualified_name_causes(key, "metadata.labels")
        if not isinstance(value, str) or len(value) > 63 or _LABEL_VALUE.match(value) is None:
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character (at most 63 characters)",
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return [*causes, ("metadata.annotations", "Invalid value: must be a map of strings")]
    for key, value in annotations.items():
        causes += _qualified_name_causes(key, "metadata.annotations")
        if not isinstance(value, str):
            causes.append(("metadata.annotations", f'Invalid value: annotation "{key}" must be a string'))
    if len(json.dumps(annotations)) > _ANNOTATIONS_LIMIT:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    for i, finalizer in enumerate(meta.get("finalizers") or ()):
        if not isinstance(finalizer, str):
            causes.append((f"metadata.finalizers[{i}]", "Invalid value: must be a string"))
        elif "/" not in finalizer and finalizer not in _STANDARD_FINALIZERS:
            causes.append(
                (
                    f"metadata.finalizers[{i}]",
                    f'Invalid value: "{finalizer}": name is neither a standard finalizer name nor is it '
                    "fully qualified",
                )
            )
        else:
            causes += _qualified_name_causes(finalizer, f"metadata.finalizers[{i}]")
    for i, ref in enumerate(meta.get("ownerReferences") or ()):
        for required in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref, Mapping) or not ref.get(required):
                causes.append((f"metadata.ownerReferences[{i}].{required}", "Required value"))
    return causes
