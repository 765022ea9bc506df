"""validate_workspace: CRD, then pydantic, then the preset and SKU catalogs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kairay.api.errors import FieldError
from presets.models import PRESETS, TUNING_METHODS
from presets.validation import validate_workspace
from tests.controller.samples import Sample, load_samples

VALID = load_samples("valid")
INVALID = load_samples("invalid")


def _sample(name: str) -> dict[str, Any]:
    (sample,) = [s for s in VALID if s.name == name]
    return copy.deepcopy(sample.obj)


def _inference(preset: str, instance_type: str = "", **annotations: str) -> dict[str, Any]:
    obj = _sample("kaito-phi-3-mini-4k")
    obj["inference"]["preset"]["name"] = preset
    if instance_type:
        obj["resource"]["instanceType"] = instance_type
    else:
        del obj["resource"]["instanceType"]
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


def _tuning(preset: str, method: str, instance_type: str) -> dict[str, Any]:
    obj = _sample("kaito-tuning-phi-3-qlora")
    obj["tuning"]["preset"]["name"] = preset
    obj["tuning"]["method"] = method
    obj["resource"]["instanceType"] = instance_type
    return obj


@pytest.mark.parametrize("sample", VALID, ids=[s.name for s in VALID])
def test_valid_samples_pass_every_check(sample: Sample) -> None:
    assert validate_workspace(sample.obj, sample.old) == []


@pytest.mark.parametrize("sample", INVALID, ids=[s.name for s in INVALID])
def test_crd_errors_come_first_and_alone(sample: Sample) -> None:
    assert {str(e) for e in validate_workspace(sample.obj, sample.old)} == sample.expect


def test_pydantic_errors_follow_a_clean_crd_check() -> None:
    obj = _inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", **{"kaito.sh/runtime": "tgi"})
    assert validate_workspace(obj) == [
        FieldError("metadata.annotations[kaito.sh/runtime]", "must be one of vllm, transformers, not 'tgi'")
    ]


def test_unknown_preset() -> None:
    (error,) = validate_workspace(_inference("phi-3-mini", "Standard_NC24ads_A100_v4"))
    assert error.field == "inference.preset.name"
    assert "unknown preset 'phi-3-mini'" in error.reason
    (error,) = validate_workspace(_tuning("no-such-model", "lora", "Standard_NC24ads_A100_v4"))
    assert error.field == "tuning.preset.name"


def test_unknown_instance_type() -> None:
    (error,) = validate_workspace(_inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100"))
    assert error.field == "resource.instanceType"
    assert "unknown GPU instance type 'Standard_NC24ads_A100'" in error.reason


def test_unknown_preset_and_instance_type_together() -> None:
    errors = validate_workspace(_inference("nope", "Standard_D4s_v3"))
    assert [e.field for e in errors] == ["resource.instanceType", "inference.preset.name"]


def test_instance_types_are_case_insensitive() -> None:
    assert validate_workspace(_inference("phi-3-mini-4k-instruct", "standard_nc24ads_a100_v4")) == []


def test_tuning_method_the_preset_does_not_support() -> None:
    (error,) = validate_workspace(_tuning("falcon-40b-instruct", "lora", "Standard_ND96asr_v4"))
    assert error == FieldError("tuning.method", "preset falcon-40b-instruct does not support tuning")


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("method", sorted(TUNING_METHODS))
def test_tuning_method_is_checked_against_the_presets_methods(preset: str, method: str) -> None:
    """Through the real preset lookup, every catalog preset and method (the instance type left out,
    so that only the method is judged)."""
    obj = _tuning(preset, method, "Standard_NC24ads_A100_v4")
    del obj["resource"]["instanceType"]
    errors = validate_workspace(obj)
    if method in PRESETS[preset].tuning:
        assert errors == []
    else:
        (error,) = errors
        assert error.field == "tuning.method"
        assert error.reason.startswith(f"preset {preset} does not support ")


def test_tuning_that_does_not_fit() -> None:
    (error,) = validate_workspace(_tuning("llama-3.1-8b-instruct", "lora", "Standard_NC4as_T4_v3"))
    assert error.field == "resource.instanceType"
    assert "does not fit on one Standard_NC4as_T4_v3" in error.reason
    assert validate_workspace(_tuning("llama-3.1-8b-instruct", "qlora", "Standard_NC24ads_A100_v4")) == []


def test_inference_sizing_depends_on_the_runtime() -> None:
    # vLLM spreads a 70B model over many small-GPU nodes; the transformers engine needs one node.
    assert validate_workspace(_inference("llama-3.1-70b-instruct", "Standard_NC4as_T4_v3")) == []
    (error,) = validate_workspace(
        _inference("llama-3.1-70b-instruct", "Standard_NC4as_T4_v3", **{"kaito.sh/runtime": "transformers"})
    )
    assert error.field == "resource.instanceType"
    assert "GB" in error.reason


def test_no_instance_type_means_no_sizing() -> None:
    # Bring-your-own nodes (or the local CPU): nothing to size against.
    no_sku = _inference("llama-3.1-70b-instruct", **{"kaito.sh/runtime": "transformers"})
    assert validate_workspace(no_sku) == []
    tuning = _tuning("llama-3.1-8b-instruct", "lora", "Standard_NC4as_T4_v3")
    del tuning["resource"]["instanceType"]
    assert validate_workspace(tuning) == []


def test_local_preset_on_a_laptop_with_or_without_a_gpu_instance_type() -> None:
    # `kairay up` serves the same file on the local CPU that a cluster serves on the named SKU.
    assert validate_workspace(_inference("smollm2-135m-instruct")) == []
    assert validate_workspace(_inference("smollm2-135m-instruct", "Standard_NC6s_v3")) == []
    assert validate_workspace(_tuning("smollm2-135m-instruct", "lora", "Standard_NC4as_T4_v3")) == []


def test_hub_ids_are_custom_presets() -> None:
    assert validate_workspace(_inference("Qwen/Qwen2.5-0.5B-Instruct", "Standard_NC24ads_A100_v4")) == []


def test_custom_template_skips_the_preset_checks_but_not_the_sku() -> None:
    obj = _sample("kaito-custom-template")
    assert validate_workspace(obj) == []
    obj["resource"]["instanceType"] = "Standard_Z1"
    assert [e.field for e in validate_workspace(obj)] == ["resource.instanceType"]


def test_updates_are_checked_against_the_old_object() -> None:
    old = _inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    new = _inference("phi-3-mini-128k-instruct", "Standard_NC24ads_A100_v4")
    assert validate_workspace(new) == []
    assert validate_workspace(new, old) == [
        FieldError("inference.preset.name", "inference.preset.name is immutable")
    ]


@pytest.mark.parametrize(
    ("obj", "condition"),
    [
        (_inference("phi-3-mini", "Standard_NC24ads_A100_v4"), "InvalidPreset"),
        (_inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100"), "InvalidInstanceType"),
        (_tuning("falcon-40b-instruct", "lora", "Standard_ND96asr_v4"), "UnsupportedTuningMethod"),
        (_tuning("llama-3.1-8b-instruct", "lora", "Standard_NC4as_T4_v3"), "InsufficientGPUMemory"),
        (
            _inference("phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4", **{"kaito.sh/runtime": "tgi"}),
            "InvalidWorkspace",
        ),
    ],
)
def test_each_problem_carries_the_condition_reason_of_its_error(obj: dict[str, Any], condition: str) -> None:
    (error,) = validate_workspace(obj)
    assert error.condition == condition
