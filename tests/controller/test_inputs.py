"""Kaito's inference ConfigMap: the runtime's section as engine args, and what is wrong with a broken one."""

from __future__ import annotations

import pytest

from controller.inputs import engine_overrides_from_configmap


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
    with pytest.raises(ValueError, match=message):
        engine_overrides_from_configmap(data, "vllm", "cfg")
