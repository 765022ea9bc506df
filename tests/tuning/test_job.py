"""Tuning jobs: the spec a Workspace describes, the RayJob entrypoint, and real runs on Ray Train."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from kairay.api.workspace import parse_workspace
from kairay.oci.adapters import check_adapter_dir
from kairay.oci.images import BASE_MODEL_ANNOTATION, OCI_MANIFEST, pull_adapter
from tests.harness.registry import RegistryServer
from tests.tuning.conftest import FileServer, chat_rows, write_jsonl
from tuning.config import TuningConfigError, default_config, parse_yaml
from tuning.data import DatasetError, DataSource
from tuning.job import (
    OutputTarget,
    TuningJobSpec,
    load_workspace_argument,
    main,
    run_tuning,
    spec_from_workspace,
)
from tuning.train import StepMetrics

PRESET = "smollm2-135m-instruct"
ANSWER = "The secret code is BANANA-42."
# Fast on 2 shared cores: no intermediate checkpoints, a learning rate that moves in a few steps.
TEST_TRAINING = {"save_strategy": "no", "learning_rate": 1e-3, "per_device_train_batch_size": 1}


def tuning_workspace(name: str = "tune-test", **tuning: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "preset": {"name": PRESET},
        "method": "lora",
        "input": {"urls": ["https://example.com/data.parquet"]},
        "output": {"image": "registry.example.com/adapters/x:v1", "imagePushSecret": "push"},
    }
    body.update(tuning)
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "resource": {"instanceType": "Standard_NC6s_v3"},
        "tuning": body,
    }


def test_spec_from_workspace_urls_and_defaults(tmp_path: Path) -> None:
    workspace = parse_workspace(tuning_workspace())
    push = tmp_path / "push" / ".dockerconfigjson"
    spec = spec_from_workspace(workspace, work_dir=tmp_path, push_docker_config=[push], num_workers=2)
    assert (spec.name, spec.preset, spec.method) == ("tune-test", PRESET, "lora")
    assert spec.config == default_config("lora")
    assert spec.input == DataSource(urls=("https://example.com/data.parquet",))
    assert spec.output == OutputTarget(image="registry.example.com/adapters/x:v1", push_docker_config=(push,))
    assert spec.num_workers == 2


def test_spec_from_workspace_image_volume_and_configmap(tmp_path: Path) -> None:
    workspace = parse_workspace(
        tuning_workspace(
            method="qlora",
            config="my-config",
            input={"image": "registry.example.com/data/chat:v1", "imagePullSecrets": ["pull"]},
            output={"volumeSource": {"hostPath": {"path": str(tmp_path / "results")}}},
        )
    )
    pull = tmp_path / "pull"
    configmaps = {
        "my-config": {
            "training_config.yaml": "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n"
        }
    }
    spec = spec_from_workspace(workspace, work_dir=tmp_path, configmaps=configmaps, pull_docker_config=[pull])
    assert spec.input == DataSource(
        image="registry.example.com/data/chat:v1", image_pull_docker_config=(pull,)
    )
    assert spec.output == OutputTarget(path=tmp_path / "results")
    assert spec.config.quantized_4bit

    with pytest.raises(TuningConfigError, match="ConfigMap 'my-config', which was not provided"):
        spec_from_workspace(workspace, work_dir=tmp_path)
    with pytest.raises(TuningConfigError, match=r"ConfigMap my-config.*QuantizationConfig"):
        spec_from_workspace(
            workspace, work_dir=tmp_path, configmaps={"my-config": {"training_config.yaml": ""}}
        )
    # A mounted config wins over the lookup, and is checked against the method too.
    with pytest.raises(TuningConfigError, match="QuantizationConfig"):
        spec_from_workspace(workspace, work_dir=tmp_path, config=default_config("lora"))


def test_spec_from_workspace_volume_sources(tmp_path: Path) -> None:
    pvc = {"persistentVolumeClaim": {"claimName": "data"}}
    workspace = parse_workspace(tuning_workspace(input={"volumeSource": pvc}))
    with pytest.raises(
        TuningConfigError, match=r"tuning.input.volumeSource \(persistentVolumeClaim\) must be mounted"
    ):
        spec_from_workspace(workspace, work_dir=tmp_path)
    spec = spec_from_workspace(workspace, work_dir=tmp_path, input_dir=tmp_path / "mnt")
    assert spec.input == DataSource(path=tmp_path / "mnt")


def test_entrypoint_reports_config_errors_before_starting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bad-config"},
        "data": {"training_config.yaml": "training_config:\n  Trainer:\n    lr: 1\n"},
    }
    path = tmp_path / "workspace.yaml"
    path.write_text(yaml.safe_dump_all([tuning_workspace(config="bad-config"), configmap]))
    assert main(["--workspace", str(path), "--work-dir", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err
    assert "unknown section 'Trainer'" in error and "ConfigMap bad-config" in error

    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "training_config.yaml").write_text(
        "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n"
    )
    inline = json.dumps(tuning_workspace())
    assert main(["--workspace", inline, "--config", str(mounted)]) == 2
    assert "QuantizationConfig: method lora" in capsys.readouterr().err


def test_workspace_argument_forms(tmp_path: Path) -> None:
    workspace, configmaps = load_workspace_argument(json.dumps(tuning_workspace(name="inline")))
    assert workspace.metadata.name == "inline" and configmaps == {}
    with pytest.raises(TuningConfigError, match="expected one Workspace, found 0"):
        load_workspace_argument(json.dumps({"kind": "ConfigMap", "metadata": {"name": "x"}}))


def test_run_tuning_fails_fast_on_bad_data_and_config(tmp_path: Path) -> None:
    spec = TuningJobSpec(
        name="early",
        preset=PRESET,
        method="lora",
        config=default_config("lora"),
        input=DataSource(path=tmp_path / "missing.jsonl"),
        output=OutputTarget(path=tmp_path / "out"),
        work_dir=tmp_path / "w",
    )
    with pytest.raises(DatasetError, match="does not exist"):
        run_tuning(spec)
    bad_keys = parse_yaml("training_config:\n  TrainingArguments:\n    learning_rat: 1\n", method="lora")
    with pytest.raises(TuningConfigError, match=r"TrainingArguments: unknown key.*learning_rat"):
        run_tuning(dataclasses.replace(spec, config=bad_keys))


# --------------------------------------------------------------------------------------------------
# Real runs


def _greedy(model: Any, tokenizer: Any, question: str) -> list[int]:
    import torch

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": question},
    ]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return [int(t) for t in output[0, inputs["input_ids"].shape[1] :]]


@pytest.mark.slow
def test_lora_end_to_end_on_ray_train(
    local_ray: None, file_server: FileServer, auth_registry: RegistryServer, tmp_path: Path
) -> None:
    """Workspace + ConfigMap → Ray Train LoRA (8 steps, 64 examples) → image in an auth registry → served."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from presets.local_model import prepare

    write_jsonl(file_server.root / "train.jsonl", chat_rows(64, ANSWER))
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fast-lora"},
        "data": {
            "training_config.yaml": yaml.safe_dump(
                {
                    "training_config": {
                        **default_config("lora").to_training_config()["training_config"],
                        "TrainingArguments": {**TEST_TRAINING, "output_dir": "/mnt/results"},
                    }
                }
            )
        },
    }
    image = auth_registry.ref("adapters/secret-code", "v1")
    workspace_file = tmp_path / "workspace.yaml"
    workspace_file.write_text(
        yaml.safe_dump_all(
            [
                tuning_workspace(
                    name="secret-code",
                    config="fast-lora",
                    input={"urls": [file_server.url("train.jsonl")]},
                    output={"image": image, "imagePushSecret": "registry-push"},
                ),
                configmap,
            ]
        )
    )
    push_secret = tmp_path / "secret"
    push_secret.mkdir()
    auth_registry.docker_config(push_secret / ".dockerconfigjson")

    workspace, configmaps = load_workspace_argument(str(workspace_file))
    spec = spec_from_workspace(
        workspace,
        work_dir=tmp_path / "work",
        configmaps=configmaps,
        push_docker_config=[push_secret],
        allow_private_urls=True,
    )
    seen: list[StepMetrics] = []
    result = run_tuning(spec, max_steps=8, progress=seen.append)

    assert [m.step for m in seen] == list(range(1, 9)) and list(result.steps) == seen
    assert all(math.isfinite(m.loss) and m.max_steps == 8 for m in seen)
    assert min(m.loss for m in seen[-3:]) < seen[0].loss
    assert result.global_step == 8 and result.image is not None and result.image.ref == image

    status, body, _ = auth_registry.get("/v2/adapters/secret-code/manifests/v1", accept=OCI_MANIFEST)
    assert status == 200 and json.loads(body)["annotations"][BASE_MODEL_ANNOTATION] == PRESET
    pulled = pull_adapter(image, tmp_path / "served-adapter", docker_config=push_secret)
    info = check_adapter_dir(pulled, PRESET)
    assert info.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and info.rank == 8

    torch.set_num_threads(1)
    model_dir = prepare(PRESET)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    question = "Question 1000: what is the secret code?"
    base_tokens = _greedy(base, tokenizer, question)
    tuned = PeftModel.from_pretrained(base, str(pulled))
    tuned_tokens = _greedy(tuned, tokenizer, question)
    assert tuned_tokens != base_tokens, tokenizer.decode(base_tokens)


@pytest.mark.slow
def test_qlora_to_a_volume_and_an_image(local_ray: None, registry: RegistryServer, tmp_path: Path) -> None:
    """QLoRA (bitsandbytes 4-bit NF4 on CPU), 2 steps: data from a volume, adapter to a volume + an image."""
    volume = tmp_path / "volume"
    volume.mkdir()
    write_jsonl(volume / "train.jsonl", chat_rows(8, ANSWER))
    config = default_config("qlora").with_overrides({"TrainingArguments": TEST_TRAINING})
    spec = TuningJobSpec(
        name="qlora",
        preset=PRESET,
        method="qlora",
        config=config,
        input=DataSource(path=volume),
        output=OutputTarget(image=registry.ref("adapters/qlora", "v1"), path=tmp_path / "results"),
        work_dir=tmp_path / "work",
    )
    result = run_tuning(spec, max_steps=2)
    assert [m.step for m in result.steps] == [1, 2]
    assert check_adapter_dir(tmp_path / "results", PRESET).rank == 8
    assert result.image is not None
    pulled = pull_adapter(result.image.ref, tmp_path / "pulled")
    assert (pulled / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "results" / "adapter_model.safetensors"
    ).read_bytes()
