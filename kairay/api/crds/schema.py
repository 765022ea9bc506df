"""Validate custom resources against a CRD the way the Kubernetes API server does.

No API server runs in this project's tests, yet `kubectl apply` semantics are the contract: a
Workspace is rejected by its CRD's structural schema and its CEL rules
(``x-kubernetes-validations``). This module applies both, in the API server's order, so the fake
API server in harness/, ``kairay up`` and the controller judge an object alike.

Rules use only standard CEL and the Kubernetes CEL libraries, so the same CRD works on a real API
server; the few Kubernetes library functions the rules call are implemented here for cel-python.

One module: the structural schema, defaulting, pruning and CEL rules walk the same schema tree in
one pass, as the API server's validator does.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import celpy
import re2
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from kairay.api.errors import FieldError

CRD_FILE = "workspace.yaml"

NOT_DECLARED = "field not declared in schema"
RULES_SKIPPED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_OLD_SELF = re.compile(r"\boldSelf\b")


def load_crd() -> dict[str, Any]:
    """The Workspace CRD, as `kubectl apply -f kairay/api/crds/workspace.yaml` would send it."""
    return copy.deepcopy(_parsed_crd())


@functools.cache
def _parsed_crd() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(CRD_FILE).read_text(encoding="utf-8")
    # The JSON round trip unshares the versions' schemas, which the YAML anchor makes one object.
    crd: dict[str, Any] = json.loads(json.dumps(yaml.safe_load(text)))
    return crd


def validate_object(
    crd: Mapping[str, Any], obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> list[FieldError]:
    """Every error the API server would report for creating ``obj``, or updating ``old`` to it.

    Like the API server, this expects defaults already applied (see ``apply_defaults``), treats
    nulls as absent unless the schema says ``nullable``, and skips the CEL rules when the object has
    errors they depend on (wrong types, missing required fields, enum, maxLength, maxItems).
    Transition rules (those that use ``oldSelf``) run only on update, where the old value exists.
    """
    schema, errors = _version_schema(crd, obj)
    if schema is None:
        return errors
    checker = _SchemaChecker()
    pruned = checker.check(schema, obj, "")
    errors.extend(checker.errors)
    if checker.blocking:
        errors.append(FieldError("", RULES_SKIPPED))
        return errors
    old_pruned = _SchemaChecker().check(schema, old, "") if old is not None else None
    _run_rules(schema, pruned, old_pruned, old is not None, "", errors)
    return errors


def apply_defaults(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with the schema's defaults filled in, as the API server stores it."""
    result = copy.deepcopy(dict(obj))
    schema, errors = _version_schema(crd, obj)
    if schema is not None and not errors:
        _default(schema, result)
    return result


def _version_schema(
    crd: Mapping[str, Any], obj: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[FieldError]]:
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    served = [v for v in spec["versions"] if v.get("served")]
    served_names = ", ".join(f"{group}/{v['name']}" for v in served)
    api_version = obj.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        return None, [FieldError("apiVersion", f"Required value: one of {served_names}")]
    errors: list[FieldError] = []
    if obj.get("kind") != kind:
        errors.append(FieldError("kind", f"Unsupported value: {json.dumps(obj.get('kind'))}: must be {kind}"))
    obj_group, _, version = api_version.rpartition("/")
    for v in served:
        if obj_group == group and v["name"] == version:
            return v["schema"]["openAPIV3Schema"], errors
    reason = f"Unsupported value: {json.dumps(api_version)}: served versions are {served_names}"
    errors.append(FieldError("apiVersion", reason))
    return None, errors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _wrong_type(value: Any, expected: str) -> str:
    return f'Invalid value: "{_json_type(value)}": must be of type {expected}'


def _type_ok(expected: str, value: Any) -> bool:
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


class _SchemaChecker:
    """One pass over an object: structural errors, plus the object as CEL sees it.

    The returned copy drops undeclared fields and nulls, as the API server's pruning does, so CEL
    rules never see a field the schema does not declare.
    """

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.blocking = False

    def _invalid(self, path: str, reason: str) -> None:
        self.errors.append(FieldError(path, reason))

    def _blocking(self, path: str, reason: str) -> None:
        """An error that leaves rules unable to run: a wrong type, a missing field, a broken bound."""
        self._invalid(path, reason)
        self.blocking = True

    def check(self, schema: dict[str, Any], value: Any, path: str) -> Any:
        if value is None and schema.get("nullable"):
            return None
        if schema.get("x-kubernetes-int-or-string"):
            if not (_type_ok("integer", value) or isinstance(value, str)):
                self._blocking(path, _wrong_type(value, "integer or string"))
                return value
            return self._scalar(schema, value, path)
        expected = schema.get("type")
        if expected is not None and not _type_ok(expected, value):
            self._blocking(path, _wrong_type(value, expected))
            return value
        if isinstance(value, Mapping):
            return self._object(schema, value, path)
        if isinstance(value, list):
            return self._array(schema, value, path)
        return self._scalar(schema, value, path)

    def _object(self, schema: dict[str, Any], value: Mapping[str, Any], path: str) -> dict[str, Any]:
        properties: dict[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        result: dict[str, Any] = {}
        for key, child in value.items():
            child_schema = properties.get(key)
            if child_schema is None and isinstance(additional, dict):
                child_path = f"{path}[{key}]"
                child_schema = additional
            else:
                child_path = _join(path, key)
            if path == "" and key == "metadata":
                # ObjectMeta has its own validation in the API server; CRD schemas cannot describe it.
                if not isinstance(child, Mapping):
                    self._blocking("metadata", _wrong_type(child, "object"))
                result[key] = child
            elif child_schema is None:
                if keep_unknown or additional is True:
                    result[key] = child
                else:
                    self._invalid(child_path, NOT_DECLARED)
            elif child is None and not child_schema.get("nullable"):
                continue
            else:
                result[key] = self.check(child_schema, child, child_path)
        for key in schema.get("required", []):
            if key not in result:
                self._blocking(_join(path, key), "Required value")
        return result

    def _array(self, schema: dict[str, Any], value: list[Any], path: str) -> list[Any]:
        max_items, min_items = schema.get("maxItems"), schema.get("minItems")
        if max_items is not None and len(value) > max_items:
            self._blocking(path, f"Too many: {len(value)}: must have at most {max_items} items")
        if min_items is not None and len(value) < min_items:
            self._invalid(path, f"Invalid value: {len(value)}: should have at least {min_items} items")
        items = schema.get("items")
        result = [self.check(items, item, f"{path}[{i}]") if items else item for i, item in enumerate(value)]
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen: set[str] = set()
            for i, item in enumerate(result):
                if isinstance(item, dict):
                    ident = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
                    if ident in seen:
                        self._invalid(f"{path}[{i}]", f"Duplicate value: {ident}")
                    seen.add(ident)
        return result

    def _scalar(self, schema: dict[str, Any], value: Any, path: str) -> Any:
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            supported = ", ".join(json.dumps(e) for e in enum)
            self._blocking(path, f"Unsupported value: {json.dumps(value)}: supported values: {supported}")
        if isinstance(value, str):
            self._string(schema, value, path)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(schema, value, path)
        return value

    def _string(self, schema: dict[str, Any], value: str, path: str) -> None:
        max_length, min_length = schema.get("maxLength"), schema.get("minLength")
        if max_length is not None and len(value) > max_length:
            self._blocking(path, f"Too long: may not be more than {max_length} characters")
        if min_length is not None and len(value) < min_length:
            self._invalid(
                path, f"Invalid value: {json.dumps(value)}: should be at least {min_length} chars long"
            )
        pattern = schema.get("pattern")
        if pattern is not None and _regex(pattern).search(value) is None:
            self._invalid(path, f"Invalid value: {json.dumps(value)}: should match '{pattern}'")
        if schema.get("format") == "date-time" and not _is_date_time(value):
            self._invalid(path, f"Invalid value: {json.dumps(value)}: must be a date-time (RFC 3339)")

    def _number(self, schema: dict[str, Any], value: float, path: str) -> None:
        minimum, maximum = schema.get("minimum"), schema.get("maximum")
        if minimum is not None and value < minimum:
            self._invalid(path, f"Invalid value: {value}: should be greater than or equal to {minimum}")
        if maximum is not None and value > maximum:
            self._invalid(path, f"Invalid value: {value}: should be less than or equal to {maximum}")
        bounds = {"int32": _INT32, "int64": _INT64}.get(schema.get("format", ""))
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            self._invalid(path, f"Invalid value: {value}: out of range for {schema['format']}")


@functools.cache
def _regex(pattern: str) -> Any:
    # The API server and CEL's matches() both use RE2 syntax; Python's re differs at the edges.
    return re2.compile(pattern)


def _is_date_time(value: str) -> bool:
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for key, child_schema in schema.get("properties", {}).items():
            if key not in value and "default" in child_schema:
                value[key] = copy.deepcopy(child_schema["default"])
            if key in value:
                _default(child_schema, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


# --- CEL ---------------------------------------------------------------------------------------


def _run_rules(
    schema: dict[str, Any], value: Any, old: Any, has_old: bool, path: str, errors: list[FieldError]
) -> None:
    rules: list[dict[str, Any]] = schema.get("x-kubernetes-validations", [])
    for rule in rules:
        error = _evaluate_rule(rule, value, old, has_old, path)
        if error is not None:
            errors.append(error)
    if isinstance(value, dict):
        properties: dict[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            child_schema = properties.get(key)
            child_path = _join(path, key)
            if child_schema is None and isinstance(additional, dict):
                child_schema, child_path = additional, f"{path}[{key}]"
            if child_schema is None:
                continue
            child_has_old = has_old and isinstance(old, dict) and key in old
            child_old = old[key] if child_has_old else None
            _run_rules(child_schema, child, child_old, child_has_old, child_path, errors)
    elif isinstance(value, list) and "items" in schema:
        # List items are not correlated with old items, so transition rules below a list never run;
        # the API server correlates only x-kubernetes-list-type=map lists, and this CRD has no
        # transition rule below one.
        for i, item in enumerate(value):
            _run_rules(schema["items"], item, None, False, f"{path}[{i}]", errors)


def _evaluate_rule(rule: dict[str, Any], value: Any, old: Any, has_old: bool, path: str) -> FieldError | None:
    text: str = rule["rule"]
    reads = _reads(text)
    if reads.old_self and not has_old:
        return None
    field_path = rule.get("fieldPath", "")
    if field_path.startswith("["):
        path += field_path
    elif field_path:
        path = _join(path, field_path.lstrip("."))
    message: str = rule.get("message") or f"failed rule: {text}"
    result = _verdict(text, reads, value, old if reads.old_self else None)
    if isinstance(result, CELEvalError):
        cause = result.args[0] if result.args else result
        return FieldError(path, f"{message} (rule could not be evaluated: {cause})")
    if not isinstance(result, celtypes.BoolType):
        return FieldError(path, f"{message} (rule returned {type(result).__name__}, not a bool)")
    return None if result else FieldError(path, message)


# `self.name` / `oldSelf.name` read as a field (not a method call such as `self.all(...)`).
_FIELD_READ = re.compile(r"\b(?:self|oldSelf)\.([A-Za-z_]\w*)\b(?!\s*\()")
_ANY_READ = re.compile(r"\b(?:self|oldSelf)\b")
# Verdicts are memoised: objects are validated again on every write (a status patch re-validates the
# whole object), and interpreting a rule with cel-python costs about a millisecond.
_VERDICTS: dict[tuple[str, str, str | None], object] = {}
_MAX_VERDICTS = 20_000


@dataclass(frozen=True)
class _Reads:
    """What a rule can see of its object: `fields` of self/oldSelf when it only reads fields by name
    (then nothing else of the object can change its verdict), None when it uses them whole."""

    old_self: bool
    fields: frozenset[str] | None


@functools.cache
def _reads(rule: str) -> _Reads:
    fields = frozenset(_FIELD_READ.findall(rule))
    whole = len(_ANY_READ.findall(rule)) != len(_FIELD_READ.findall(rule))
    return _Reads(bool(_OLD_SELF.search(rule)), None if whole else fields)


def _visible(value: Any, reads: _Reads) -> Any:
    if reads.fields is None or not isinstance(value, Mapping):
        return value
    return {key: value[key] for key in reads.fields if key in value}


def _verdict(rule: str, reads: _Reads, value: Any, old: Any) -> object:
    """The rule's result (a CEL bool, another CEL value or the CELEvalError) for `value` (and `old`
    when the rule reads oldSelf)."""
    seen, seen_old = _visible(value, reads), _visible(old, reads)
    try:
        key: tuple[str, str, str | None] | None = (
            rule,
            json.dumps(seen, sort_keys=True, default=repr),
            json.dumps(seen_old, sort_keys=True, default=repr) if reads.old_self else None,
        )
    except (TypeError, ValueError):  # keys that are not strings: not worth memoising
        key = None
    if key is not None and key in _VERDICTS:
        return _VERDICTS[key]
    activation: dict[str, Any] = {"self": json_to_cel(seen)}
    if reads.old_self:
        activation["oldSelf"] = json_to_cel(seen_old)
    result: object
    try:
        result = _program(rule).evaluate(activation)
    except CELEvalError as exc:
        result = exc
    if key is not None:
        if len(_VERDICTS) >= _MAX_VERDICTS:
            _VERDICTS.clear()
        _VERDICTS[key] = result
    return result


_COMPILE_LOCK = threading.Lock()
_ENVIRONMENT = celpy.Environment()


@functools.cache
def _program(rule: str) -> celpy.Runner:
    # Parsing a rule costs far more than evaluating it, and the same few rules judge every object.
    with _COMPILE_LOCK:
        return _ENVIRONMENT.program(_ENVIRONMENT.compile(rule), functions=K8S_FUNCTIONS)


# --- Kubernetes CEL library functions used by the CRD ---------------------------------------------


def _lower_ascii(value: celtypes.StringType) -> celtypes.StringType:
    """``string.lowerAscii()`` from the Kubernetes strings library: only A-Z change."""
    return celtypes.StringType(value.translate(_ASCII_LOWER))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class URL:
    """The value of the Kubernetes ``url(string)`` function (Go's url.ParseRequestURI)."""

    def __init__(self, text: str) -> None:
        if not _is_url(text):
            raise ValueError(f"URL parse error: {text!r} is not an absolute URI or an absolute path")
        self.parts = urllib.parse.urlsplit(text)


def _is_url(text: str) -> bool:
    # ParseRequestURI accepts an absolute URI ("scheme:/...") or an absolute path, without control
    # characters or spaces in the host.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return False
    if not (text.startswith("/") or _URL_SCHEME.match(text)):
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return " " not in parts.netloc


def _cel_is_url(value: celtypes.StringType) -> celtypes.BoolType:
    return celtypes.BoolType(_is_url(str(value)))


def _cel_url(value: celtypes.StringType) -> URL:
    return URL(str(value))


def _get_scheme(url: URL) -> celtypes.StringType:
    return celtypes.StringType(url.parts.scheme)


def _get_host(url: URL) -> celtypes.StringType:
    # Go's URL.Host is host[:port], without user info.
    return celtypes.StringType(url.parts.netloc.rpartition("@")[2])


K8S_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": _lower_ascii,
    "isURL": _cel_is_url,
    "url": _cel_url,
    "getScheme": _get_scheme,
    "getHost": _get_host,
}
