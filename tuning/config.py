"""Kaito's tuning configuration (`training_config:`), parsed and checked at the edge.

A tuning Workspace names a ConfigMap (`tuning.config`) whose `training_config.yaml` entry holds one
`training_config:` mapping with up to six sections. Each section configures one Hugging Face object,
exactly as Kaito's `fine_tuning.py` does:

- `ModelConfig`: `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` arguments
  plus `chat_template`;
- `QuantizationConfig`: `BitsAndBytesConfig` (QLoRA when `load_in_4bit`);
- `LoraConfig`: `peft.LoraConfig`;
- `TrainingArguments`: `transformers.TrainingArguments` (run here through TRL's `SFTConfig`);
- `DatasetConfig`: Kaito's own dataset options (file location, columns, shuffle, train/test split);
- `DataCollator`: `DataCollatorForLanguageModeling` options.

Defaults are Kaito's: a missing key takes the default of Kaito's dataclass (or the Hugging Face class
behind it), and a Workspace without `tuning.config` gets Kaito's `lora-params-template` or
`qlora-params-template` (`default_config`). `LoraConfig` and `TrainingArguments` front very large
Hugging Face classes, so they keep keys they do not type here and the trainer checks those names against
the library (`tuning.train`). This module never imports torch, so the controller can validate a
ConfigMap cheaply.

One module: Kaito's tuning sections are one document, typed and checked together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kairay.api.configmaps import TUNING_CONFIG_KEY, ConfigMapError, configmap_entry
from kairay.api.errors import KairayError

TuningMethod = Literal["lora", "qlora"]
TUNING_METHODS: tuple[TuningMethod, ...] = ("lora", "qlora")

# The ConfigMap key Kaito mounts at /mnt/config/training_config.yaml.
CONFIGMAP_KEY = TUNING_CONFIG_KEY
TOP_LEVEL_KEY = "training_config"

SECTIONS: tuple[str, ...] = (
    "ModelConfig",
    "QuantizationConfig",
    "LoraConfig",
    "TrainingArguments",
    "DatasetConfig",
    "DataCollator",
)


class TuningConfigError(KairayError):
    """The tuning configuration cannot be used; the message names the section (and key) at fault."""

    # What the controller reports for a tuning ConfigMap it cannot use.
    reason = ConfigMapError.reason
    http_status = HTTPStatus.BAD_REQUEST


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _OpenSection(BaseModel):
    """A section fronting a large Hugging Face class: untyped keys are kept and checked by the trainer."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def extra_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelConfig(_Section):
    """Kaito's `ModelConfig` (presets/workspace/tuning/text-generation/cli.py)."""

    # Kaito defaults to its image's weight directory (/workspace/tfs/weights); kairay's base weights come
    # from the preset, so None means "the preset's weights" and a value overrides them.
    pretrained_model_name_or_path: str | None = None
    state_dict: dict[str, Any] | None = None
    cache_dir: str | None = None
    from_tf: bool = False
    force_download: bool = False
    resume_download: bool = False
    proxies: str | None = None
    output_loading_info: bool = False
    local_files_only: bool = False
    revision: str = "main"
    trust_remote_code: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    # transformers 5 calls it `dtype`; Kaito's ConfigMaps say `torch_dtype`. Both are accepted.
    torch_dtype: str | None = None
    device_map: str | dict[str, Any] | None = "auto"
    chat_template: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _dtype_alias(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "dtype" in data:
            if "torch_dtype" in data:
                raise ValueError("give either dtype or torch_dtype, not both")
            data = {("torch_dtype" if key == "dtype" else key): value for key, value in data.items()}
        return data

    @field_validator("torch_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in _DTYPES:
            raise ValueError(f"unknown dtype {value!r}; use one of {', '.join(sorted(_DTYPES))}")
        return value


_DTYPES = frozenset({"float32", "float16", "bfloat16", "auto"})


class QuantizationConfig(_Section):
    """Kaito's `QuantizationConfig` (a `BitsAndBytesConfig`)."""

    quant_method: Literal["bitsandbytes"] = "bitsandbytes"
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    bnb_4bit_quant_type: Literal["fp4", "nf4"] = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: Literal["uint8", "float16", "bfloat16", "float32"] | None = None


class LoraConfig(_OpenSection):
    """Kaito's `ExtLoraConfig`: `peft.LoraConfig` with Kaito's defaults for the keys typed here."""

    r: int = Field(default=8, gt=0)
    lora_alpha: float = Field(default=8, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    # None lets peft pick the modules it knows for the architecture (q_proj/v_proj for Llama).
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    loftq_config: dict[str, Any] = Field(default_factory=dict)


class TrainingArguments(_OpenSection):
    """Kaito's `TrainingArguments` section.

    The typed keys carry `transformers.TrainingArguments` defaults, which is what Kaito parses. TRL's
    `SFTConfig` changes four of them (learning_rate 2e-5, bf16 on, gradient_checkpointing on,
    logging_steps 10); the trainer passes these four explicitly so a Kaito ConfigMap means the same here.
    """

    output_dir: str | None = None
    num_train_epochs: float = Field(default=3.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: float = Field(default=500, gt=0)
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    ddp_find_unused_parameters: bool | None = None
    seed: int = 42

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_steps must be positive, or -1 to train num_train_epochs")
        return value


class DatasetConfig(_Section):
    """Kaito's `DatasetConfig`: where the data is and which columns hold it."""

    # Relative to the data root (/data in an input image, the volume, or the downloaded URLs' folder).
    dataset_path: str | None = None
    dataset_extension: Literal["parquet", "json", "jsonl", "csv"] | None = None
    shuffle_dataset: bool = True
    shuffle_seed: int = 42
    # context_column + response_column map an instruction dataset onto prompt/completion;
    # messages_column names the conversational column.
    context_column: str | None = None
    response_column: str = "text"
    messages_column: str | None = None
    train_test_split: float = 0.8

    @field_validator("train_test_split")
    @classmethod
    def _split(cls, value: float) -> float:
        if not 0 < value <= 1 or math.isnan(value):
            raise ValueError("train_test_split must be in (0, 1]; 1 trains on all the data")
        return value


class DataCollator(_Section):
    """Kaito's `DataCollator` (`DataCollatorForLanguageModeling` options).

    Causal language models have no mask token, so `mlm: true` (Kaito's default) falls back to causal
    language modelling exactly as Kaito does. TRL's collator does the padding; it keeps the EOS label when
    pad == eos (SmolLM2), which the plain transformers collator would mask.
    """

    mlm: bool = True
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    mask_replace_prob: float = Field(default=0.8, ge=0, le=1)
    random_replace_prob: float = Field(default=0.1, ge=0, le=1)
    pad_to_multiple_of: int | None = Field(default=None, gt=0)
    tf_experimental_compile: bool = False
    return_tensors: Literal["pt"] = "pt"
    seed: int | None = None


class TuningConfig(BaseModel):
    """The whole `training_config:` mapping."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig, alias="ModelConfig")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig, alias="QuantizationConfig")
    lora: LoraConfig = Field(default_factory=LoraConfig, alias="LoraConfig")
    training: TrainingArguments = Field(default_factory=TrainingArguments, alias="TrainingArguments")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, alias="DatasetConfig")
    collator: DataCollator = Field(default_factory=DataCollator, alias="DataCollator")

    @property
    def quantized_4bit(self) -> bool:
        return self.quantization.load_in_4bit or self.model.load_in_4bit

    @property
    def quantized_8bit(self) -> bool:
        return self.quantization.load_in_8bit or self.model.load_in_8bit

    def check_method(self, method: str) -> None:
        """`lora` trains on full-precision weights, `qlora` on 4-bit ones; anything else is a mistake."""
        if method not in TUNING_METHODS:
            raise TuningConfigError(
                f"unknown tuning method {method!r}; use one of {', '.join(TUNING_METHODS)}"
            )
        if method == "lora" and (self.quantized_4bit or self.quantized_8bit):
            raise TuningConfigError(
                "QuantizationConfig: method lora trains unquantized weights, but load_in_4bit/load_in_8bit "
                "is true; use method qlora, or set load_in_4bit: false"
            )
        if method == "qlora" and not self.quantized_4bit:
            raise TuningConfigError(
                "QuantizationConfig: method qlora needs load_in_4bit: true (bitsandbytes 4-bit, e.g. "
                "bnb_4bit_quant_type: nf4); use method lora for unquantized training"
            )
        if method == "qlora" and self.quantized_8bit:
            raise TuningConfigError("QuantizationConfig: load_in_4bit and load_in_8bit are exclusive")

    def to_training_config(self) -> dict[str, Any]:
        """The `training_config:` mapping again, with every default spelled out (for logs and reruns)."""
        return {TOP_LEVEL_KEY: self.model_dump(by_alias=True, mode="json")}

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> TuningConfig:
        """A copy with some keys replaced, e.g. `{"TrainingArguments": {"bf16": False}}`."""
        data = self.model_dump(by_alias=True)
        for section, values in overrides.items():
            if section not in SECTIONS:
                raise TuningConfigError(_unknown_section_message(section))
            data[section] = {**data[section], **values}
        return _validate(data, source="overrides")


def cpu_overrides(config: TuningConfig) -> TuningConfig:
    """What a CPU run needs whatever the ConfigMap says.

    No mixed precision (bf16/fp16 autocast wants a GPU), no gradient checkpointing (it only saves memory,
    and costs ~30 % time on CPU), no pinned memory. Weights keep the configured dtype: bf16 weights
    train fine on CPU and halve memory.
    """
    return config.with_overrides(
        {
            "TrainingArguments": {
                "bf16": False,
                "fp16": False,
                "gradient_checkpointing": False,
                "dataloader_pin_memory": False,
                "use_cpu": True,
            },
        }
    )


def parse_training_config(document: Any, *, method: str, source: str = "training_config") -> TuningConfig:
    """Validate a loaded YAML document `{"training_config": {...}}` for `method` (`lora` | `qlora`)."""
    if not isinstance(document, Mapping):
        raise TuningConfigError(f"{source}: expected a mapping with a {TOP_LEVEL_KEY!r} key")
    extra_keys = sorted(set(document) - {TOP_LEVEL_KEY})
    if extra_keys:
        raise TuningConfigError(
            f"{source}: unexpected top-level key(s) {', '.join(map(str, extra_keys))}; "
            f"put the sections under {TOP_LEVEL_KEY}:"
        )
    sections = document.get(TOP_LEVEL_KEY) or {}
    if not isinstance(sections, Mapping):
        raise TuningConfigError(f"{source}: {TOP_LEVEL_KEY} must be a mapping of sections")
    for name, body in sections.items():
        if name not in SECTIONS:
            raise TuningConfigError(f"{source}: {_unknown_section_message(str(name))}")
        if body is not None and not isinstance(body, Mapping):
            raise TuningConfigError(f"{source}: {name} must be a mapping, got {type(body).__name__}")
    config = _validate({name: body or {} for name, body in sections.items()}, source=source)
    try:
        config.check_method(method)
    except TuningConfigError as exc:
        raise TuningConfigError(f"{source}: {exc}") from None
    return config


def parse_yaml(text: str, *, method: str, source: str = "training_config") -> TuningConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TuningConfigError(f"{source}: not valid YAML: {exc}") from None
    return parse_training_config(document or {}, method=method, source=source)


def load_configmap_data(data: Mapping[str, str], *, method: str, name: str = "ConfigMap") -> TuningConfig:
    """Parse a ConfigMap's `data`: the `training_config.yaml` entry (or its only entry)."""
    try:
        key, text = configmap_entry(data, CONFIGMAP_KEY, name)
    except ConfigMapError as exc:
        raise TuningConfigError(str(exc)) from None
    return parse_yaml(text, method=method, source=f"{name}[{key}]")


def load_config_file(path: str | Path, *, method: str) -> TuningConfig:
    """Read a tuning config from a file or a mounted ConfigMap directory.

    Accepts a `training_config:` YAML file (what a ConfigMap mount puts at
    /mnt/config/training_config.yaml), a directory holding that file, or a ConfigMap manifest
    (`kind: ConfigMap`, `data: {training_config.yaml: ...}`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIGMAP_KEY
    try:
        text = path.read_text()
    except OSError as exc:
        raise TuningConfigError(f"cannot read tuning config {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TuningConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(document, Mapping) and document.get("kind") == "ConfigMap":
        data = document.get("data") or {}
        if not isinstance(data, Mapping):
            raise TuningConfigError(f"{path}: ConfigMap data must be a mapping")
        name = (document.get("metadata") or {}).get("name") or str(path)
        return load_configmap_data({str(k): str(v) for k, v in data.items()}, method=method, name=name)
    return parse_training_config(document or {}, method=method, source=str(path))


def default_config(method: str) -> TuningConfig:
    """Kaito's `lora-params-template` / `qlora-params-template` ConfigMaps."""
    if method not in TUNING_METHODS:
        raise TuningConfigError(f"unknown tuning method {method!r}; use one of {', '.join(TUNING_METHODS)}")
    sections: dict[str, Any] = {
        "ModelConfig": {"torch_dtype": "bfloat16", "local_files_only": True, "device_map": "auto"},
        "QuantizationConfig": {"load_in_4bit": False},
        "LoraConfig": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0},
        "TrainingArguments": {
            "output_dir": "/mnt/results",
            "ddp_find_unused_parameters": False,
            "save_strategy": "epoch",
            "per_device_train_batch_size": 1,
        },
        "DataCollator": {"mlm": True},
        "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 1},
    }
    if method == "qlora":
        sections["QuantizationConfig"] = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_use_double_quant": True,
        }
    return parse_training_config({TOP_LEVEL_KEY: sections}, method=method, source=f"default {method} config")


def _unknown_section_message(name: str) -> str:
    return f"unknown section {name!r} in {TOP_LEVEL_KEY}; known sections: {', '.join(SECTIONS)}"


def _validate(sections: Mapping[str, Any], *, source: str) -> TuningConfig:
    try:
        return TuningConfig.model_validate(dict(sections))
    except ValidationError as exc:
        raise TuningConfigError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """`TrainingArguments.learning_rate: Input should be greater than 0` — section first, one line each."""
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)
