"""Kaito's tuning ConfigMap (`training_config:`): defaults, parsing, rejections."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuning.config import (
    SECTIONS,
    TuningConfigError,
    cpu_overrides,
    default_config,
    load_config_file,
    load_configmap_data,
    parse_yaml,
)

# Kaito's qlora-params-template, as its Helm chart ships it (comments included).
KAITO_QLORA_CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: qlora-params-template
data:
  training_config.yaml: |
    training_config:
      ModelConfig: # Configurable Parameters: from_pretrained
        torch_dtype: "bfloat16"
        local_files_only: true
        device_map: "auto"
        # chat_template: "/workspace/chat_templates/phi-3.yaml"

      QuantizationConfig:
        load_in_4bit: true
        bnb_4bit_quant_type: "nf4"
        bnb_4bit_compute_dtype: "bfloat16"
        bnb_4bit_use_double_quant: true

      LoraConfig:
        r: 8
        lora_alpha: 8
        lora_dropout: 0.0

      TrainingArguments:
        output_dir: "/mnt/results"
        ddp_find_unused_parameters: false
        save_strategy: "epoch"
        per_device_train_batch_size: 1

      DataCollator:
        mlm: true

      DatasetConfig:
        shuffle_dataset: true
        train_test_split: 1
"""


def test_default_configs_are_kaitos_templates() -> None:
    lora = default_config("lora")
    assert (
        lora.model.torch_dtype == "bfloat16"
        and lora.model.local_files_only
        and lora.model.device_map == "auto"
    )
    assert not lora.quantized_4bit
    assert (lora.lora.r, lora.lora.lora_alpha, lora.lora.lora_dropout) == (8, 8, 0.0)
    assert lora.training.output_dir == "/mnt/results"
    assert lora.training.save_strategy == "epoch" and lora.training.per_device_train_batch_size == 1
    assert lora.training.ddp_find_unused_parameters is False
    assert lora.collator.mlm is True
    assert lora.dataset.shuffle_dataset and lora.dataset.train_test_split == 1

    qlora = default_config("qlora")
    assert qlora.quantized_4bit
    assert qlora.quantization.bnb_4bit_quant_type == "nf4"
    assert qlora.quantization.bnb_4bit_compute_dtype == "bfloat16"
    assert qlora.quantization.bnb_4bit_use_double_quant is True


def test_missing_keys_take_transformers_training_defaults_not_trls() -> None:
    # Kaito parses TrainingArguments with transformers; TRL's SFTConfig would change these four.
    config = parse_yaml("training_config:\n  TrainingArguments:\n    max_steps: 3\n", method="lora")
    assert config.training.learning_rate == 5e-5
    assert config.training.gradient_checkpointing is False
    assert config.training.bf16 is False
    assert config.training.logging_steps == 500
    # Kaito's dataclass defaults where a section is absent.
    assert config.dataset.train_test_split == 0.8
    assert config.dataset.response_column == "text"
    assert config.quantization.bnb_4bit_quant_type == "fp4"


def test_configmap_manifest_file_and_mounted_directory(tmp_path: Path) -> None:
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text(KAITO_QLORA_CONFIGMAP)
    from_manifest = load_config_file(manifest, method="qlora")
    assert from_manifest == default_config("qlora")

    mount = tmp_path / "mount"
    mount.mkdir()
    data = yaml.safe_load(KAITO_QLORA_CONFIGMAP)["data"]
    (mount / "training_config.yaml").write_text(data["training_config.yaml"])
    assert load_config_file(mount, method="qlora") == from_manifest
    assert load_configmap_data(data, method="qlora", name="qlora-params-template") == from_manifest


def test_extra_keys_in_open_sections_are_kept() -> None:
    config = parse_yaml(
        "training_config:\n"
        "  LoraConfig:\n    r: 4\n    use_rslora: true\n    target_modules: [q_proj, k_proj]\n"
        "  TrainingArguments:\n    warmup_steps: 2\n    max_length: 256\n",
        method="lora",
    )
    assert config.lora.extra_keys() == {"use_rslora": True}
    assert config.lora.target_modules == ["q_proj", "k_proj"]
    assert config.training.extra_keys() == {"warmup_steps": 2, "max_length": 256}


def test_dtype_alias() -> None:
    config = parse_yaml("training_config:\n  ModelConfig:\n    dtype: float32\n", method="lora")
    assert config.model.torch_dtype == "float32"


@pytest.mark.parametrize(
    ("text", "method", "fragments"),
    [
        (
            "training_config:\n  TokenizerParams:\n    padding: true\n",
            "lora",
            ["unknown section", "TokenizerParams"],
        ),
        (
            "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n",
            "lora",
            ["QuantizationConfig", "lora"],
        ),
        ("training_config:\n  QuantizationConfig:\n    load_in_8bit: true\n", "lora", ["QuantizationConfig"]),
        ("training_config: {}\n", "qlora", ["QuantizationConfig", "load_in_4bit"]),
        ("training_config:\n  ModelConfig:\n    flash: true\n", "lora", ["ModelConfig.flash", "unknown key"]),
        (
            "training_config:\n  TrainingArguments:\n    learning_rate: -1\n",
            "lora",
            ["TrainingArguments.learning_rate"],
        ),
        (
            "training_config:\n  DatasetConfig:\n    train_test_split: 1.5\n",
            "lora",
            ["DatasetConfig.train_test_split"],
        ),
        (
            "training_config:\n  DataCollator:\n    return_tensors: np\n",
            "lora",
            ["DataCollator.return_tensors"],
        ),
        ("training_config:\n  LoraConfig: [1, 2]\n", "lora", ["LoraConfig must be a mapping"]),
        ("TrainingArguments: {}\n", "lora", ["top-level", "TrainingArguments"]),
        (
            "training_config:\n  ModelConfig: {torch_dtype: int3}\n",
            "lora",
            ["ModelConfig.torch_dtype", "int3"],
        ),
        ("training_config: [\n", "lora", ["not valid YAML"]),
        ("training_config: {}\n", "full", ["unknown tuning method"]),
    ],
)
def test_rejections_name_the_section(text: str, method: str, fragments: list[str]) -> None:
    with pytest.raises(TuningConfigError) as caught:
        parse_yaml(text, method=method, source="my-config")
    message = str(caught.value)
    assert message.startswith("my-config") or "unknown tuning method" in message
    for fragment in fragments:
        assert fragment in message


def test_configmap_without_training_config_key() -> None:
    with pytest.raises(TuningConfigError, match=r"no 'training_config.yaml' key.*a.yaml, b.yaml"):
        load_configmap_data({"a.yaml": "", "b.yaml": ""}, method="lora", name="cm")
    # A single entry under another name is used as is.
    assert load_configmap_data({"custom.yaml": "training_config: {}"}, method="lora").lora.r == 8


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(TuningConfigError, match="cannot read tuning config"):
        load_config_file(tmp_path / "missing.yaml", method="lora")


def test_cpu_overrides_and_with_overrides() -> None:
    config = parse_yaml(
        "training_config:\n  TrainingArguments:\n    bf16: true\n    gradient_checkpointing: true\n",
        method="lora",
    )
    cpu = cpu_overrides(config)
    assert not cpu.training.bf16 and not cpu.training.fp16 and not cpu.training.gradient_checkpointing
    assert cpu.training.extra_keys()["use_cpu"] is True
    assert config.training.bf16  # the original is untouched
    with pytest.raises(TuningConfigError, match="unknown section 'Bogus'"):
        config.with_overrides({"Bogus": {}})
    with pytest.raises(TuningConfigError, match=r"TrainingArguments.per_device_train_batch_size"):
        config.with_overrides({"TrainingArguments": {"per_device_train_batch_size": 0}})


def test_round_trip_through_training_config() -> None:
    config = default_config("qlora")
    text = yaml.safe_dump(config.to_training_config())
    assert parse_yaml(text, method="qlora") == config
    assert set(config.to_training_config()["training_config"]) == set(SECTIONS)


def test_library_keys_are_checked_against_trl_and_peft() -> None:
    from tuning.train import check_library_keys

    check_library_keys(
        parse_yaml("training_config:\n  TrainingArguments:\n    max_length: 128\n", method="lora")
    )
    with pytest.raises(TuningConfigError, match=r"TrainingArguments: unknown key.*evaluation_strategyy"):
        check_library_keys(
            parse_yaml(
                "training_config:\n  TrainingArguments:\n    evaluation_strategyy: steps\n", method="lora"
            )
        )
    with pytest.raises(TuningConfigError, match=r"LoraConfig: unknown key.*rank"):
        check_library_keys(parse_yaml("training_config:\n  LoraConfig:\n    rank: 4\n", method="lora"))


def test_chat_template_rule(tmp_path: Path) -> None:
    from tuning.train import resolve_chat_template

    assert resolve_chat_template(None, "preset") == "preset"
    assert resolve_chat_template("{{ messages }}\\n", None) == "{{ messages }}\n"
    template = tmp_path / "t.jinja"
    template.write_text("{{ x }}")
    assert resolve_chat_template(str(template), "preset") == "{{ x }}"
    with pytest.raises(TuningConfigError, match=r"ModelConfig.chat_template"):
        resolve_chat_template(str(tmp_path / "missing.jinja"), None)
