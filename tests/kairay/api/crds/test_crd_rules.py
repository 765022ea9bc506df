"""The Workspace CRD and the API-server-faithful validator that enforces it."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel

from kairay.api.crds import apply_defaults, load_crd, validate_object
from kairay.api.crds import schema as schema_module
from kairay.api.errors import FieldError
from tests.controller.samples import Sample, load_samples

VALID = load_samples("valid")
INVALID = load_samples("invalid")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")


def _schema(crd: dict[str, Any], version: str = "v1beta1") -> dict[str, Any]:
    (match,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = match["schema"]["openAPIV3Schema"]
    return schema


# --- the CRD itself ---------------------------------------------------------------------------


def test_names_scope_and_versions(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "workspaces.kaito.sh"
    assert spec["group"] == "kaito.sh"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Workspace"
    assert spec["names"]["plural"] == "workspaces"
    assert spec["names"]["shortNames"] == ["wk", "wks"]
    versions = {v["name"]: v for v in spec["versions"]}
    assert set(versions) == {"v1alpha1", "v1beta1"}
    assert all(v["served"] for v in versions.values())
    assert [name for name, v in versions.items() if v["storage"]] == ["v1beta1"]
    assert all(v["subresources"] == {"status": {}} for v in versions.values())


def test_both_versions_share_one_schema_and_columns(crd: dict[str, Any]) -> None:
    alpha, beta = crd["spec"]["versions"]
    assert alpha["schema"] == beta["schema"]
    assert alpha["additionalPrinterColumns"] == beta["additionalPrinterColumns"]
    # load_crd unshares the YAML anchor: editing one version must not edit the other.
    alpha["schema"]["openAPIV3Schema"]["description"] = "changed"
    assert beta["schema"]["openAPIV3Schema"]["description"] != "changed"


def test_load_crd_returns_a_fresh_copy() -> None:
    first = load_crd()
    first["spec"]["group"] = "changed"
    assert load_crd()["spec"]["group"] == "kaito.sh"


def test_printer_columns(crd: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][1]["additionalPrinterColumns"]
    assert [c["name"].upper() for c in columns] == [
        "INSTANCE",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACESUCCEEDED",
        "STATE",
        "AGE",
    ]
    paths = {c["name"]: c["jsonPath"] for c in columns}
    assert paths["Instance"] == ".resource.instanceType"
    assert paths["JobStarted"] == '.status.conditions[?(@.type=="JobStarted")].status'
    assert paths["State"] == ".status.state"
    assert paths["Age"] == ".metadata.creationTimestamp"


def test_top_level_fields_have_no_spec(crd: dict[str, Any]) -> None:
    assert set(_schema(crd)["properties"]) == {
        "apiVersion",
        "kind",
        "metadata",
        "resource",
        "inference",
        "tuning",
        "status",
    }


def test_every_field_is_described_and_typed(crd: dict[str, Any]) -> None:
    for path, node in _nodes(_schema(crd)):
        assert node.get("type"), f"{path} has no type: the schema would not be structural"
        # kubectl explain describes fields; the items of a list of strings are not fields.
        if path == "metadata" or (path.endswith(("[]", "[*]")) and node["type"] != "object"):
            continue
        assert node.get("description"), f"{path or '<root>'} has no description for kubectl explain"


def test_unknown_fields_are_preserved_only_in_free_form_kubernetes_types(crd: dict[str, Any]) -> None:
    preserved = {
        path for path, node in _nodes(_schema(crd)) if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert preserved == {
        "inference.template",
        "inference.adapters[].source.volumeSource",
        "tuning.input.volumeSource",
        "tuning.output.volumeSource",
    }


def test_every_rule_has_a_message_and_compiles(crd: dict[str, Any]) -> None:
    rules = [
        (path, rule)
        for path, node in _nodes(_schema(crd))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 20
    for path, rule in rules:
        assert rule.get("message"), f"rule {rule['rule']!r} at {path} has no message"
        assert schema_module._program(rule["rule"]) is not None


def test_transition_rules_sit_outside_lists(crd: dict[str, Any]) -> None:
    # The API server runs transition rules only where it can pair the old value with the new one.
    for path, node in _nodes(_schema(crd)):
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:
                assert "[]" not in path, path


def test_lists_with_rules_are_bounded(crd: dict[str, Any]) -> None:
    # A real API server refuses rules whose worst-case cost it cannot bound.
    schema = _schema(crd)
    assert schema["properties"]["inference"]["properties"]["adapters"]["maxItems"] == 10
    assert schema["properties"]["tuning"]["properties"]["input"]["properties"]["urls"]["maxItems"] == 1000


# --- the samples shared with the fake API server ----------------------------------------------


@pytest.mark.parametrize("sample", VALID, ids=[s.name for s in VALID])
def test_valid_samples_are_accepted(crd: dict[str, Any], sample: Sample) -> None:
    assert validate_object(crd, sample.obj, sample.old) == []


@pytest.mark.parametrize("sample", INVALID, ids=[s.name for s in INVALID])
def test_invalid_samples_report_exactly_the_expected_errors(crd: dict[str, Any], sample: Sample) -> None:
    assert sample.expect, f"{sample.name} has no '# expect:' line"
    assert {str(e) for e in validate_object(crd, sample.obj, sample.old)} == sample.expect


def test_every_rule_is_exercised_by_an_invalid_sample(crd: dict[str, Any]) -> None:
    messages = {
        rule["message"]
        for _, node in _nodes(_schema(crd))
        for rule in node.get("x-kubernetes-validations", [])
    }
    expected = [e for s in INVALID for e in s.expect]
    missing = {m for m in messages if not any(e == m or e.endswith(f": {m}") for e in expected)}
    assert not missing


@pytest.mark.parametrize("version", ["v1alpha1", "v1beta1"])
def test_rules_hold_in_both_versions(crd: dict[str, Any], version: str) -> None:
    (sample,) = [s for s in INVALID if s.name == "duplicate-adapter-names"]
    obj = {**sample.obj, "apiVersion": f"kaito.sh/{version}"}
    assert {str(e) for e in validate_object(crd, obj)} == sample.expect


def test_transition_rules_do_not_run_on_create(crd: dict[str, Any]) -> None:
    for sample in INVALID:
        if sample.old is not None and all("immutable" in e for e in sample.expect):
            assert validate_object(crd, sample.obj) == [], sample.name


def test_update_to_an_identical_object_is_valid(crd: dict[str, Any]) -> None:
    for sample in VALID:
        assert validate_object(crd, sample.obj, copy.deepcopy(sample.obj)) == [], sample.name


def test_a_blank_instance_type_may_be_set_later(crd: dict[str, Any]) -> None:
    (sample,) = [s for s in VALID if s.name == "kaito-phi-3-mini-4k"]
    old = copy.deepcopy(sample.obj)
    old["resource"]["instanceType"] = ""
    assert validate_object(crd, sample.obj, old) == []


# --- API versions and kinds -------------------------------------------------------------------


def _workspace() -> dict[str, Any]:
    (sample,) = [s for s in VALID if s.name == "kaito-phi-3-mini-4k"]
    return copy.deepcopy(sample.obj)


def test_unserved_version_and_wrong_kind(crd: dict[str, Any]) -> None:
    obj = {**_workspace(), "apiVersion": "kaito.sh/v2", "kind": "Workload"}
    assert [str(e) for e in validate_object(crd, obj)] == [
        'kind: Unsupported value: "Workload": must be Workspace',
        'apiVersion: Unsupported value: "kaito.sh/v2": '
        "served versions are kaito.sh/v1alpha1, kaito.sh/v1beta1",
    ]
    obj = {**_workspace(), "apiVersion": "other.io/v1beta1"}
    assert [e.field for e in validate_object(crd, obj)] == ["apiVersion"]
    obj = _workspace()
    del obj["apiVersion"]
    assert validate_object(crd, obj) == [
        FieldError("apiVersion", "Required value: one of kaito.sh/v1alpha1, kaito.sh/v1beta1")
    ]


def test_metadata_is_left_to_the_api_server(crd: dict[str, Any]) -> None:
    obj = _workspace()
    obj["metadata"] = {"name": "ws", "labels": {"a": "b"}, "managedFields": [{"manager": "kubectl"}]}
    assert validate_object(crd, obj) == []
    obj["metadata"] = "ws"
    assert FieldError("metadata", 'Invalid value: "string": must be of type object') in validate_object(
        crd, obj
    )


def test_structural_errors_in_the_workspace(crd: dict[str, Any]) -> None:
    obj = _workspace()
    obj["resource"]["count"] = 0
    obj["resource"]["labelSelector"] = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}
    obj["inference"]["preset"]["accessMode"] = "secret"
    obj["inference"]["preset"]["name"] = ""
    obj["inference"]["preset"]["extra"] = 1
    assert {str(e) for e in validate_object(crd, obj)} == {
        "resource.count: Invalid value: 0: should be greater than or equal to 1",
        "resource.labelSelector.matchExpressions[0].operator: "
        'Unsupported value: "NotIn": supported values: "In"',
        "resource.labelSelector.matchExpressions[0].values: Invalid value: 0: should have at least 1 items",
        'inference.preset.accessMode: Unsupported value: "secret": supported values: "public", "private"',
        'inference.preset.name: Invalid value: "": should be at least 1 chars long',
        "inference.preset.extra: field not declared in schema",
        schema_module.RULES_SKIPPED,
    }


def test_required_fields_block_the_rules(crd: dict[str, Any]) -> None:
    obj = _workspace()
    del obj["resource"]["labelSelector"]
    obj["inference"]["adapters"] = [{"strength": "2"}]
    assert {str(e) for e in validate_object(crd, obj)} == {
        "resource.labelSelector: Required value",
        "inference.adapters[0].source: Required value",
        schema_module.RULES_SKIPPED,
    }


def test_status_conditions(crd: dict[str, Any]) -> None:
    (sample,) = [s for s in VALID if s.name == "with-status"]
    obj = copy.deepcopy(sample.obj)
    conditions = obj["status"]["conditions"]
    conditions[0]["lastTransitionTime"] = "yesterday"
    conditions[1]["reason"] = "not a reason"
    conditions[2]["type"] = "ResourceReady"
    obj["status"]["targetNodeCount"] = 2**31
    assert {str(e) for e in validate_object(crd, obj)} == {
        'status.conditions[0].lastTransitionTime: Invalid value: "yesterday": must be a date-time (RFC 3339)',
        'status.conditions[1].reason: Invalid value: "not a reason": should match '
        "'^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$'",
        'status.conditions[2]: Duplicate value: {"type": "ResourceReady"}',
        "status.targetNodeCount: Invalid value: 2147483648: out of range for int32",
    }
    obj["status"]["conditions"] = [{"type": "ResourceReady", "status": "Maybe"}]
    assert {str(e) for e in validate_object(crd, obj)} >= {
        "status.conditions[0].status: "
        'Unsupported value: "Maybe": supported values: "True", "False", "Unknown"',
        "status.conditions[0].reason: Required value",
        "status.conditions[0].lastTransitionTime: Required value",
    }


def test_apply_defaults(crd: dict[str, Any]) -> None:
    obj = _workspace()
    defaulted = apply_defaults(crd, obj)
    assert "count" not in obj["resource"]
    assert defaulted["resource"]["count"] == 1
    assert defaulted["inference"]["preset"]["accessMode"] == "public"
    assert validate_object(crd, defaulted) == []
    assert apply_defaults(crd, {"apiVersion": "kaito.sh/v9", "kind": "Workspace"}) == {
        "apiVersion": "kaito.sh/v9",
        "kind": "Workspace",
    }


# --- the validator on a synthetic CRD ---------------------------------------------------------


def _crd_with(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}},
                {"name": "v0", "served": False, "storage": False, "schema": {"openAPIV3Schema": schema}},
            ],
        }
    }


def _thing(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Thing", **fields}


SYNTHETIC = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "port": {"x-kubernetes-int-or-string": True},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "enabled": {"type": "boolean"},
        "note": {"type": "string", "nullable": True, "maxLength": 4},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[a-z]+$"}},
        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "items": {"type": "array", "items": {"type": "integer", "format": "int64"}, "maxItems": 2},
        "broken": {
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.missing == 1"}, {"rule": "size(self)"}],
        },
    },
}


def test_synthetic_schema_types_and_bounds() -> None:
    crd = _crd_with(SYNTHETIC)
    good = _thing(
        port="http", ratio=1, enabled=False, note=None, labels={"a": "b"}, extra={"x": [1]}, items=[1, 2]
    )
    assert validate_object(crd, good) == []
    assert validate_object(crd, _thing(port=8080)) == []
    assert {str(e) for e in validate_object(crd, _thing(ratio=1.5, labels={"a": "B"}, extra={"x": 1}))} == {
        "ratio: Invalid value: 1.5: should be less than or equal to 1",
        "labels[a]: Invalid value: \"B\": should match '^[a-z]+$'",
    }
    assert {
        str(e)
        for e in validate_object(crd, _thing(port=1.5, enabled="yes", note="too long", items=[1, 2, 3]))
    } == {
        'port: Invalid value: "number": must be of type integer or string',
        'enabled: Invalid value: "string": must be of type boolean',
        "note: Too long: may not be more than 4 characters",
        "items: Too many: 3: must have at most 2 items",
        schema_module.RULES_SKIPPED,
    }
    assert validate_object(crd, _thing(items=[True])) == [
        FieldError("items[0]", 'Invalid value: "boolean": must be of type integer'),
        FieldError("", schema_module.RULES_SKIPPED),
    ]


def test_unserved_versions_are_refused() -> None:
    crd = _crd_with(SYNTHETIC)
    assert [e.field for e in validate_object(crd, {**_thing(), "apiVersion": "example.com/v0"})] == [
        "apiVersion"
    ]


def test_a_rule_that_cannot_be_evaluated_rejects_the_object() -> None:
    errors = validate_object(_crd_with(SYNTHETIC), _thing(broken={}))
    assert [e.field for e in errors] == ["broken", "broken"]
    assert errors[0].reason.startswith("failed rule: self.missing == 1 (rule could not be evaluated:")
    assert errors[1].reason == "failed rule: size(self) (rule returned IntType, not a bool)"


def test_transition_rules_need_the_old_value() -> None:
    schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "spec": {
                "type": "object",
                "properties": {"size": {"type": "integer"}},
                "x-kubernetes-validations": [
                    {
                        "rule": "self.size >= oldSelf.size",
                        "message": "spec.size may only grow",
                        "fieldPath": ".size",
                    }
                ],
            },
        },
    }
    crd = _crd_with(schema)
    assert validate_object(crd, _thing(spec={"size": 1})) == []
    assert validate_object(crd, _thing(spec={"size": 1}), _thing()) == []
    assert validate_object(crd, _thing(spec={"size": 1}), _thing(spec={"size": 2})) == [
        FieldError("spec.size", "spec.size may only grow")
    ]


def test_rules_are_compiled_once(crd: dict[str, Any]) -> None:
    obj = _workspace()
    validate_object(crd, obj)
    misses = schema_module._program.cache_info().misses
    for _ in range(3):
        validate_object(crd, obj, obj)
    assert schema_module._program.cache_info().misses == misses


# --- Kubernetes CEL library functions ---------------------------------------------------------


def _eval(expression: str, value: Any) -> Any:
    env = celpy.Environment()
    program = env.program(env.compile(expression), functions=schema_module.K8S_FUNCTIONS)
    return program.evaluate({"self": json_to_cel(value)})


def test_lower_ascii() -> None:
    assert _eval("self.lowerAscii()", "QLoRA-É") == "qlora-É"


@pytest.mark.parametrize(
    ("text", "is_url", "scheme", "host"),
    [
        ("https://example.com/a.parquet?download=true", True, "https", "example.com"),
        ("HTTP://user:pw@127.0.0.1:8080/x", True, "http", "127.0.0.1:8080"),
        ("/absolute/path", True, "", ""),
        ("ftp://example.com/file", True, "ftp", "example.com"),
        ("data.parquet", False, None, None),
        ("mailto:someone@example.com", False, None, None),
        ("http://exa mple.com/", False, None, None),
        ("http://example.com:port/", False, None, None),
        ("http://example.com/\x7f", False, None, None),
    ],
)
def test_url_functions(text: str, is_url: bool, scheme: str | None, host: str | None) -> None:
    assert bool(_eval("isURL(self)", text)) is is_url
    if is_url:
        assert _eval("url(self).getScheme()", text) == scheme
        assert _eval("url(self).getHost()", text) == host
    else:
        with pytest.raises(celpy.CELEvalError):
            _eval("url(self).getScheme()", text)


def test_strength_rule_matches_kaito_parse_float() -> None:
    (rule,) = _schema(load_crd())["properties"]["inference"]["properties"]["adapters"]["items"]["properties"][
        "strength"
    ]["x-kubernetes-validations"]
    accepted = ["0", "1", "1.0", "0.5", ".5", "1.", "+0.25", "1e-1", "5E-1", "0e0", "000.1"]
    rejected = ["", "-0.1", "1.01", "2", "half", "nan", "inf", "0x1", " 0.5", "0.5 ", "1e1", "."]
    for text in accepted:
        assert bool(_eval(rule["rule"], text)), text
    for text in rejected:
        assert not bool(_eval(rule["rule"], text)), text


def test_dns_label_rule() -> None:
    (rule,) = _schema(load_crd())["properties"]["inference"]["properties"]["adapters"]["items"]["properties"][
        "source"
    ]["properties"]["name"]["x-kubernetes-validations"]
    for name in ["a", "phi-3-adapter", "0x", "a" * 63]:
        assert bool(_eval(rule["rule"], name)), name
    for name in ["", "-a", "a-", "A", "a_b", "a.b"]:
        assert not bool(_eval(rule["rule"], name)), name


def test_messages_name_their_field(crd: dict[str, Any]) -> None:
    field = re.compile(r"\b(inference|tuning|resource|metadata)\b")
    for _, node in _nodes(_schema(crd)):
        for rule in node.get("x-kubernetes-validations", []):
            assert field.search(rule["message"]), rule["message"]
