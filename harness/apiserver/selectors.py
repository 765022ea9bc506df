"""Label and field selectors in their query-string forms, with the real server's matching rules."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.apiserver.errors import bad_request

_SET_RE = re.compile(
    r"^\s*(!?)\s*([^\s!=<>(),]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|!=|=|<|>)\s*([^\s,]*))?\s*$"
)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", "<", ">"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        # "<" / ">" compare integers; a label that isn't one never matches (as upstream).
        try:
            number = int(value) if value is not None else None
        except ValueError:
            return False
        if number is None:
            return False
        limit = int(self.values[0])
        return number < limit if self.op == "<" else number > limit


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `in (...)` value lists."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    requirements = []
    for part in _split_top_level(text):
        match = _SET_RE.match(part)
        if match is None:
            raise bad_request(f"unable to parse requirement: {part!r}")
        negated, key, set_op, set_values, op, value = match.groups()
        if negated:
            if set_op or op:
                raise bad_request(f"unable to parse requirement: {part!r}")
            requirements.append(Requirement(key, "!exists"))
        elif set_op:
            values = tuple(v.strip() for v in set_values.split(",") if v.strip())
            requirements.append(Requirement(key, set_op, values))
        elif op:
            if op in ("<", ">") and not value.lstrip("-").isdigit():
                raise bad_request(
                    "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: "
                    f"{part!r}"
                )
            requirements.append(Requirement(key, "=" if op == "==" else op, (value,)))
        else:
            requirements.append(Requirement(key, "exists"))
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    if not requirements:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negated: bool


def parse_field_selector(text: str | None, allowed: frozenset[str]) -> list[FieldRequirement]:
    if not text:
        return []
    requirements = []
    for part in text.split(","):
        if not part.strip():
            continue
        for op in ("!=", "==", "="):
            if op in part:
                field, value = part.split(op, 1)
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in allowed:
            raise bad_request(f"field label not supported: {field}")
        requirements.append(FieldRequirement(tuple(field.split(".")), value.strip(), op == "!="))
    return requirements


def _field_value(obj: Mapping[str, Any], path: tuple[str, ...]) -> str:
    current: Any = obj
    for part in path:
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def fields_match(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all((_field_value(obj, r.path) == r.value) != r.negated for r in requirements)


def make_filter(
    label_selector: str | None, field_selector: str | None, allowed_fields: frozenset[str]
) -> Callable[[Mapping[str, Any]], bool]:
    """One predicate for both selectors; parse errors surface as 400 before anything is served."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, allowed_fields)
    if not labels and not fields:
        return lambda _obj: True
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)
