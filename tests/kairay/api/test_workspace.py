"""The Workspace pydantic models, parse_workspace and load_workspace_file."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kairay.api import workspace as api
from kairay.api.crds import load_crd, validate_object
from kairay.api.errors import FieldError, KairayError, WorkspaceError
from kairay.api.options import RUNTIME_ANNOTATION, Autoscaling
from kairay.api.workspace import (
    Workspace,
    load_workspace_file,
    parse_workspace,
)
from tests.controller.samples import SAMPLES, load_samples

VALID = load_samples("valid")


def _sample(name: str) -> dict[str, Any]:
    (sample,) = [s for s in VALID if s.name == name]
    return copy.deepcopy(sample.obj)


def _errors(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(obj)
    return [str(e) for e in info.value.errors]


def test_field_error_and_workspace_error() -> None:
    error = FieldError("inference.adapters[1].strength", "must be a number")
    assert str(error) == "inference.adapters[1].strength: must be a number"
    assert str(FieldError("", "either inference or tuning must be specified")) == (
        "either inference or tuning must be specified"
    )
    with pytest.raises(AttributeError):
        error.field = "other"  # type: ignore[misc]
    failure = WorkspaceError([error, FieldError("tuning", "x")])
    assert isinstance(failure, KairayError)
    assert (failure.reason, failure.http_status) == ("InvalidWorkspace", 400)
    assert failure.errors == [error, FieldError("tuning", "x")]
    assert str(failure) == "inference.adapters[1].strength: must be a number; tuning: x"


@pytest.mark.parametrize("sample", VALID, ids=[s.name for s in VALID])
def test_every_valid_sample_parses(sample: Any) -> None:
    workspace = parse_workspace(sample.obj)
    assert workspace.kind == "Workspace"
    if sample.old is not None:
        parse_workspace(sample.old)


def test_snake_case_attributes_for_camel_case_fields() -> None:
    ws = parse_workspace(_sample("kaito-phi-3-with-adapters"))
    assert ws.api_version == "kaito.sh/v1beta1"
    assert ws.metadata.name == "workspace-phi-3-mini-adapter"
    assert ws.resource.instance_type == "Standard_NC24ads_A100_v4"
    assert ws.resource.count == 1
    assert ws.resource.label_selector.match_labels == {"apps": "phi-3-adapter"}
    assert ws.tuning is None
    assert ws.inference is not None and ws.inference.preset is not None
    assert ws.inference.preset.name == "phi-3-mini-128k-instruct"
    assert ws.inference.preset.access_mode == "public"
    (adapter,) = ws.inference.adapters
    assert adapter.source.name == "phi-3-adapter"
    assert adapter.source.image == "ACR_REPO_HERE.azurecr.io/ADAPTER_HERE:0.0.1"
    assert adapter.strength == "1.0"
    assert adapter.strength_value == 1.0


def test_tuning_fields() -> None:
    ws = parse_workspace(_sample("kaito-tuning-phi-3-qlora"))
    assert ws.inference is None and ws.tuning is not None
    assert ws.tuning.method == "qlora"
    assert ws.tuning.preset.name == "phi-3-mini-128k-instruct"
    assert ws.tuning.input.urls[0].startswith("https://huggingface.co/datasets/")
    assert ws.tuning.output.image == "ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1"
    assert ws.tuning.output.image_push_secret == "ACR_REGISTRY_SECRET_HERE"
    pvc = parse_workspace(_sample("kaito-tuning-phi-3-pvc"))
    assert pvc.tuning is not None
    assert pvc.tuning.input.volume_source == {"persistentVolumeClaim": {"claimName": "pvc-azurefile-input"}}


def test_tuning_method_is_case_insensitive_like_kaito() -> None:
    obj = _sample("kaito-tuning-phi-3-qlora")
    obj["tuning"]["method"] = "QLoRA"
    ws = parse_workspace(obj)
    assert ws.tuning is not None and ws.tuning.method == "qlora"


def test_template_and_v1alpha1() -> None:
    ws = parse_workspace(_sample("kaito-custom-template"))
    assert ws.inference is not None and ws.inference.preset is None
    assert ws.inference.template is not None
    assert ws.inference.template["spec"]["containers"][0]["name"] == "custom-llm-container"
    alpha = parse_workspace(_sample("v1alpha1-phi-3"))
    assert alpha.api_version == "kaito.sh/v1alpha1"
    assert alpha.resource.label_selector.as_labels() == {"apps": "phi-3"}
    assert alpha.resource.preferred_nodes == ["aks-gpu-12345678-vmss000000"]
    assert alpha.inference is not None and alpha.inference.preset is not None
    assert alpha.inference.preset.preset_options.model_access_secret == "hf-token"
    assert alpha.inference.config == "phi-3-inference-params"


def test_populate_by_python_name() -> None:
    ws = Workspace(
        metadata=api.ObjectMeta(name="ws", annotations={RUNTIME_ANNOTATION: "transformers"}),
        resource=api.ResourceSpec(instance_type="Standard_NC6s_v3"),
        inference=api.InferenceSpec(
            preset=api.PresetSpec(name="smollm2-135m-instruct"),
            adapters=[api.AdapterSpec(source=api.AdapterSource(name="a", image="r/a:1"), strength="0.25")],
        ),
    )
    assert ws.runtime == "transformers"
    assert ws.inference is not None and ws.inference.adapters[0].strength_value == 0.25
    obj = ws.to_object()
    assert obj["apiVersion"] == "kaito.sh/v1beta1"
    assert obj["resource"]["instanceType"] == "Standard_NC6s_v3"
    assert obj["inference"]["adapters"][0]["source"] == {
        "name": "a",
        "image": "r/a:1",
        "imagePullSecrets": [],
    }
    assert "tuning" not in obj
    assert validate_object(load_crd(), obj) == []


def test_to_object_round_trips_through_the_crd() -> None:
    crd = load_crd()
    for sample in VALID:
        obj = parse_workspace(sample.obj).to_object()
        assert validate_object(crd, obj) == [], sample.name
        assert parse_workspace(obj) == parse_workspace(sample.obj), sample.name


def test_default_strength_is_one() -> None:
    ws = parse_workspace(_sample("local-smollm2-adapters"))
    assert ws.inference is not None
    assert [a.strength_value for a in ws.inference.adapters] == [0.5, 1.0, 0.25, 0.0, 1.0]
    assert ws.inference.adapters[-1].strength is None
    assert ws.inference.adapters[1].source.volume_source == {"hostPath": {"path": "/tmp/adapters/poet"}}


def test_runtime_annotation() -> None:
    obj = _sample("kaito-phi-3-mini-4k")
    assert parse_workspace(obj).runtime == "vllm"
    obj["metadata"]["annotations"] = {"kaito.sh/runtime": "vllm"}
    assert parse_workspace(obj).runtime == "vllm"
    obj["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    assert parse_workspace(obj).runtime == "transformers"
    obj["metadata"]["annotations"] = {"kaito.sh/runtime": "tgi"}
    assert _errors(obj) == [
        "metadata.annotations[kaito.sh/runtime]: must be one of vllm, transformers, not 'tgi'"
    ]


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, None),
        ({"kairay.io/min-replicas": "1", "kairay.io/max-replicas": "3"}, Autoscaling(1, 3)),
        ({"kairay.io/min-replicas": "0", "kairay.io/max-replicas": "2"}, Autoscaling(0, 2)),
        ({"kairay.io/min-replicas": "2"}, Autoscaling(2, 2)),
        ({"kairay.io/min-replicas": "0"}, Autoscaling(0, 1)),
        ({"kairay.io/max-replicas": "4"}, Autoscaling(1, 4)),
    ],
)
def test_autoscaling(annotations: dict[str, str], expected: Autoscaling | None) -> None:
    obj = _sample("kaito-phi-3-mini-4k")
    obj["metadata"]["annotations"] = annotations
    assert parse_workspace(obj).autoscaling == expected


@pytest.mark.parametrize(
    ("annotations", "error"),
    [
        (
            {"kairay.io/min-replicas": "-1"},
            "metadata.annotations[kairay.io/min-replicas]: must be a whole number",
        ),
        (
            {"kairay.io/max-replicas": "0"},
            "metadata.annotations[kairay.io/max-replicas]: must be a whole number",
        ),
        (
            {"kairay.io/max-replicas": "two"},
            "metadata.annotations[kairay.io/max-replicas]: must be a whole number",
        ),
        (
            {"kairay.io/min-replicas": "3", "kairay.io/max-replicas": "2"},
            "metadata.annotations[kairay.io/min-replicas]: must not exceed kairay.io/max-replicas (3 > 2)",
        ),
    ],
)
def test_bad_autoscaling_annotations(annotations: dict[str, str], error: str) -> None:
    obj = _sample("kaito-phi-3-mini-4k")
    obj["metadata"]["annotations"] = annotations
    (message,) = _errors(obj)
    assert message.startswith(error)


def test_error_paths_are_dotted_with_indices() -> None:
    obj = _sample("local-smollm2-adapters")
    obj["inference"]["adapters"][1]["strength"] = "1.5"
    obj["inference"]["adapters"][2]["source"]["colour"] = "red"
    obj["resource"]["labelSelector"]["matchLabels"]["apps"] = 3
    assert _errors(obj) == [
        "resource.labelSelector.matchLabels.apps: Input should be a valid string",
        "inference.adapters[1].strength: must be a number between 0 and 1 written as a string, "
        "e.g. \"0.5\", not '1.5'",
        "inference.adapters[2].source.colour: field not declared in schema",
    ]


def test_unknown_and_missing_fields() -> None:
    obj = _sample("kaito-tuning-phi-3-qlora")
    obj["spec"] = {}
    del obj["tuning"]["output"]
    obj["tuning"]["method"] = "sft"
    assert _errors(obj) == [
        "tuning.method: Input should be 'lora' or 'qlora'",
        "tuning.output: Required value",
        "spec: field not declared in schema",
    ]


def test_exactly_one_of_inference_and_tuning() -> None:
    obj = _sample("kaito-phi-3-mini-4k")
    del obj["inference"]
    assert _errors(obj) == ["exactly one of inference or tuning must be specified"]


def test_kind_and_api_version_are_checked() -> None:
    obj = _sample("kaito-phi-3-mini-4k")
    obj["kind"] = "Deployment"
    obj["apiVersion"] = "kaito.sh/v1"
    errors = _errors(obj)
    assert [e.split(":")[0] for e in errors] == ["apiVersion", "kind"]


def test_status() -> None:
    ws = parse_workspace(_sample("with-status"))
    assert ws.status.state == api.STATE_READY
    assert ws.status.worker_nodes == ["aks-ws-12345678-vmss000000"]
    assert ws.status.target_node_count == 1
    ready = ws.status.condition(api.CONDITION_INFERENCE_READY)
    assert ready is not None
    assert ready.status == "True"
    assert ready.reason == "ServeApplicationRunning"
    assert ready.last_transition_time == "2025-01-01T00:09:30.123456Z"
    assert ready.observed_generation == 1
    assert ws.status.condition(api.CONDITION_JOB_STARTED) is None
    assert ws.metadata.finalizers == ["workspace.finalizer.kaito.sh"]
    assert ws.metadata.resource_version == "12345"


def test_condition_type_constants() -> None:
    assert (
        api.CONDITION_RESOURCE_READY,
        api.CONDITION_INFERENCE_READY,
        api.CONDITION_JOB_STARTED,
        api.CONDITION_WORKSPACE_SUCCEEDED,
        api.CONDITION_WORKSPACE_READY,
    ) == ("ResourceReady", "InferenceReady", "JobStarted", "WorkspaceSucceeded", "WorkspaceReady")


def test_load_workspace_file_reads_every_document(tmp_path: Path) -> None:
    path = tmp_path / "ws.yaml"
    path.write_text(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: params\n---\n---\n"
        + (SAMPLES / "valid" / "kaito-phi-3-mini-4k.yaml").read_text()
    )
    documents = load_workspace_file(path)
    assert [d["kind"] for d in documents] == ["ConfigMap", "Workspace"]
    assert parse_workspace(documents[1]).metadata.name == "workspace-phi-3-mini"
    assert load_workspace_file(str(path)) == documents


def test_load_workspace_file_reports_yaml_errors_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: kaito.sh/v1beta1\nkind: Workspace\ninference:\n  preset: {name: x\n")
    with pytest.raises(WorkspaceError) as info:
        load_workspace_file(path)
    (error,) = info.value.errors
    assert error.field == f"{path}:5:1"
    assert error.reason.startswith("invalid YAML: expected ',' or '}', but got '<stream end>'")

    path.write_text("kind: Workspace\n  metadata: x\n")
    with pytest.raises(WorkspaceError) as info:
        load_workspace_file(path)
    assert str(info.value.errors[0]).startswith(
        f"{path}:2:11: invalid YAML: mapping values are not allowed here"
    )


def test_load_workspace_file_rejects_other_documents(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("kind: Workspace\n---\n- a\n- b\n")
    with pytest.raises(WorkspaceError, match="document 2 is a list, not a mapping"):
        load_workspace_file(path)
    with pytest.raises(WorkspaceError, match="cannot read file"):
        load_workspace_file(tmp_path / "missing.yaml")
