"""Kaito's ConfigMaps: the entry that holds the configuration, and the inference engine arguments."""

from __future__ import annotations

import pytest

from kairay.api.configmaps import ConfigMapError, configmap_entry, engine_overrides_from_configmap


def test_the_named_entry_or_the_only_one_holds_the_configuration() -> None:
    assert configmap_entry({"a.yaml": "x", "training_config.yaml": "y"}, "training_config.yaml", "cm") == (
        "training_config.yaml",
        "y",
    )
    assert configmap_entry({"other.yaml": "z"}, "training_config.yaml", "cm") == ("other.yaml", "z")
    missing = r"ConfigMap cm: no 'training_config.yaml' key in data \(keys: none\)"
    with pytest.raises(ConfigMapError, match=missing):
        configmap_entry({}, "training_config.yaml", "ConfigMap cm")


def test_inference_configmap_gives_the_runtime_section_as_engine_args() -> None:
    text = "max_probe_steps: 6\nvllm:\n  max-model-len: 4096\n  gpu-memory-utilization: 0.9\n"
    data = {"inference_config.yaml": text}
    assert engine_overrides_from_configmap(data, "vllm", "cfg") == {
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
    }
    assert engine_overrides_from_configmap(data, "transformers", "cfg") == {}
    assert engine_overrides_from_configmap({"other.yaml": "vllm:\n  seed: 1\n"}, "vllm", "cfg") == {"seed": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": "x", "b": "y"}, "no 'inference_config.yaml' key"),
        ({"inference_config.yaml": "vllm: [unclosed"}, "invalid YAML"),
        ({"inference_config.yaml": "- a list"}, "expected a mapping"),
        ({"inference_config.yaml": "vllm: 3"}, "vllm: expected a mapping"),
    ],
)
def test_broken_inference_configmaps_say_what_is_wrong(data: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigMapError, match=message):
        engine_overrides_from_configmap(data, "vllm", "cfg")
