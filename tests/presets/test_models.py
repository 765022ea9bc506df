import dataclasses
import json
from pathlib import Path

import pytest

from presets import PRESETS, ModelPreset, UnknownPresetError, get_preset, resolve_preset
from presets.models import TUNING_METHODS

REQUIRED = {
    "smollm2-135m-instruct",
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3.5-mini-instruct",
    "phi-4-mini-instruct",
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct",
    "qwen2.5-coder-7b-instruct",
    "llama-3.1-70b-instruct",
}


def test_catalog_has_the_required_presets():
    assert set(PRESETS) >= REQUIRED


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_catalog_entries_are_consistent(preset: ModelPreset):
    assert preset.params_billion and preset.weight_gb and preset.context_length
    assert preset.num_layers and preset.num_kv_heads and preset.head_dim
    assert preset.weight_gb == pytest.approx(preset.params_billion * 2, abs=0.01)
    assert preset.dtype == "bfloat16"
    assert preset.chat_template is None
    assert preset.tuning <= TUNING_METHODS
    assert preset.default_max_model_len is not None
    assert preset.default_max_model_len <= preset.context_length
    assert "/" in preset.model_id
    assert preset.disk_gb is not None and preset.disk_gb >= preset.weight_gb


def test_architecture_numbers_match_the_model_configs():
    phi3 = PRESETS["phi-3-mini-4k-instruct"]
    assert (phi3.num_layers, phi3.num_kv_heads, phi3.head_dim, phi3.context_length) == (32, 32, 96, 4096)
    llama70 = PRESETS["llama-3.1-70b-instruct"]
    assert (llama70.num_layers, llama70.num_kv_heads, llama70.head_dim) == (80, 8, 128)
    assert llama70.context_length == 131072
    assert llama70.weight_gb == pytest.approx(141.1, abs=0.1)
    qwen = PRESETS["qwen2.5-coder-7b-instruct"]
    assert (qwen.num_layers, qwen.num_kv_heads, qwen.head_dim) == (28, 4, 128)
    assert PRESETS["mistral-7b-instruct"].model_id == "mistralai/Mistral-7B-Instruct-v0.3"


def test_smollm2_is_the_local_cpu_preset():
    smol = PRESETS["smollm2-135m-instruct"]
    assert smol.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smol.local
    assert [name for name, preset in PRESETS.items() if preset.local] == ["smollm2-135m-instruct"]
    assert (smol.num_layers, smol.num_kv_heads, smol.head_dim, smol.context_length) == (30, 3, 64, 8192)
    assert smol.engine_args == {"max_model_len": 2048, "enforce_eager": True}
    assert smol.default_max_model_len == 2048
    assert smol.tuning == {"lora", "qlora"}


def test_long_context_presets_default_to_their_full_context():
    for name in ("phi-3-mini-128k-instruct", "phi-3.5-mini-instruct", "llama-3.1-8b-instruct"):
        assert PRESETS[name].default_max_model_len == 131072


def test_tuning_support():
    for name in (
        "phi-3-mini-4k-instruct",
        "phi-3-mini-128k-instruct",
        "llama-3.1-8b-instruct",
        "mistral-7b-instruct",
        "qwen2.5-coder-7b-instruct",
    ):
        assert PRESETS[name].tuning == {"lora", "qlora"}
    assert PRESETS["llama-3.1-70b-instruct"].tuning == frozenset()


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["phi-3-mini-4k-instruct"].name = "other"  # type: ignore[misc]


def test_get_preset_is_case_insensitive():
    assert get_preset("Phi-3-Mini-4K-Instruct") is PRESETS["phi-3-mini-4k-instruct"]


def test_unknown_preset_lists_known_names_and_suggests_one():
    with pytest.raises(UnknownPresetError) as caught:
        get_preset("phi-3-mini-4k")
    message = str(caught.value)
    assert "did you mean 'phi-3-mini-4k-instruct'" in message
    assert all(name in message for name in PRESETS)
    assert isinstance(caught.value, ValueError)


def test_resolve_short_name():
    assert resolve_preset("llama-3.1-8b-instruct") is PRESETS["llama-3.1-8b-instruct"]


def test_resolve_hub_id_of_a_catalog_model_keeps_its_sizes():
    assert resolve_preset("microsoft/phi-3-mini-4k-instruct") is PRESETS["phi-3-mini-4k-instruct"]


def test_resolve_unknown_hub_id_is_a_custom_preset_of_unknown_size():
    preset = resolve_preset("acme/tiny-chat-v2")
    assert preset.name == preset.model_id == "acme/tiny-chat-v2"
    assert preset.params_billion is None and preset.weight_gb is None
    assert preset.num_layers is None and preset.context_length is None
    assert preset.dtype == "auto"
    assert preset.tuning == {"lora", "qlora"}
    assert not preset.local


def _model_dir(tmp_path: Path, config: dict, weight_bytes: int = 0) -> Path:
    directory = tmp_path / "my-model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    if weight_bytes:
        (directory / "model.safetensors").write_bytes(b"\0" * weight_bytes)
    return directory


def test_resolve_local_directory_reads_config_and_weight_sizes(tmp_path: Path):
    config = {
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": 576,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
    directory = _model_dir(tmp_path, config, weight_bytes=3_000_000)
    preset = resolve_preset(str(directory))
    assert preset.name == "my-model"
    assert preset.model_id == str(directory.resolve())
    assert (preset.num_layers, preset.num_kv_heads, preset.head_dim) == (30, 3, 64)
    assert preset.context_length == 8192
    assert preset.dtype == "bfloat16"
    assert preset.weight_gb == pytest.approx(0.003)
    assert preset.params_billion == pytest.approx(0.0015)
    assert preset.disk_gb is not None and preset.disk_gb > 0.003
    assert not preset.local


def test_local_directory_with_nested_text_config_and_explicit_head_dim(tmp_path: Path):
    config = {
        "dtype": "float16",
        "text_config": {
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "hidden_size": 512,
            "head_dim": 128,
        },
    }
    preset = resolve_preset(str(_model_dir(tmp_path, config, weight_bytes=1000)))
    assert (preset.num_layers, preset.num_kv_heads, preset.head_dim) == (4, 2, 128)
    assert preset.dtype == "float16"
    assert preset.context_length is None


def test_local_directory_without_weights_has_unknown_size(tmp_path: Path):
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "multi_query": True}
    preset = resolve_preset(str(_model_dir(tmp_path, config)))
    assert preset.weight_gb is None and preset.params_billion is None
    assert preset.num_kv_heads == 1
    assert preset.head_dim == 16


def test_directory_without_config_json_is_rejected(tmp_path: Path):
    with pytest.raises(UnknownPresetError, match=r"has no config\.json"):
        resolve_preset(str(tmp_path))


def test_directory_with_broken_config_json_is_rejected(tmp_path: Path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnknownPresetError, match="cannot read"):
        resolve_preset(str(tmp_path))


def test_missing_directory_and_unknown_names_are_rejected(tmp_path: Path):
    with pytest.raises(UnknownPresetError, match="does not exist"):
        resolve_preset(str(tmp_path / "absent"))
    with pytest.raises(
        UnknownPresetError, match="unknown preset 'mistral'; did you mean 'mistral-7b-instruct'"
    ):
        resolve_preset("mistral")
