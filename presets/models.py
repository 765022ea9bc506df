"""The model preset catalog: what the sizing estimator and the engines need to know about a model.

Architecture numbers come from each model's `config.json`; `weight_gb` is parameters x bytes per
parameter in `dtype` (GB = 1e9 bytes), which is also what the safetensors files weigh.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kairay.api.errors import KairayError

TUNING_METHODS = frozenset({"lora", "qlora"})

DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"float32": 4, "bfloat16": 2, "float16": 2})

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelPreset:
    """One servable model. Size fields are None for custom models whose size is unknown."""

    name: str
    model_id: str
    params_billion: float | None
    weight_gb: float | None
    context_length: int | None
    dtype: str
    num_layers: int | None
    num_kv_heads: int | None
    head_dim: int | None
    engine_args: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    tuning: frozenset[str] = frozenset()
    local: bool = False
    disk_gb: float | None = None

    @property
    def default_max_model_len(self) -> int | None:
        value = self.engine_args.get("max_model_len", self.context_length)
        return int(value) if value is not None else None


class UnknownPresetError(KairayError, ValueError):
    """A preset name that is neither in the catalog, nor an `org/model` id, nor a model directory."""

    reason = "InvalidPreset"
    http_status = HTTPStatus.BAD_REQUEST

    def __init__(self, name: str, reason: str | None = None) -> None:
        self.name = name
        self.suggestion = suggest(name, PRESETS)
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else "."
        super().__init__(
            f"{reason or f'unknown preset {name!r}'}{hint} Known presets: {', '.join(sorted(PRESETS))}; "
            "an org/model id or a local model directory with a config.json also works"
        )


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a mistyped one, for error messages."""
    by_lower = {item.lower(): item for item in known}
    wanted = name.strip().lower()
    close = difflib.get_close_matches(wanted, list(by_lower), n=1, cutoff=0.5)
    if close:
        return by_lower[close[0]]
    # A bare prefix such as "phi-3" scores low against long names but is still an obvious intent.
    prefixed = sorted(item for item in by_lower if wanted and item.startswith(wanted))
    return by_lower[prefixed[0]] if prefixed else None


def _preset(
    name: str,
    model_id: str,
    *,
    params_billion: float,
    context_length: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    engine_args: dict[str, Any],
    tuning: Iterable[str] = (),
    local: bool = False,
    dtype: str = "bfloat16",
) -> ModelPreset:
    weight_gb = round(params_billion * DTYPE_BYTES[dtype], 2)
    return ModelPreset(
        name=name,
        model_id=model_id,
        params_billion=params_billion,
        weight_gb=weight_gb,
        context_length=context_length,
        dtype=dtype,
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        engine_args=engine_args,
        tuning=frozenset(tuning),
        local=local,
        disk_gb=weight_gb,
    )


_LORA = ("lora", "qlora")
# Kaito's Phi presets set trust_remote_code; vLLM and transformers now implement Phi-3/Phi-4
# natively, and the repositories' remote code lags behind current transformers.
_PHI = {"trust_remote_code": False}

_CATALOG = (
    _preset(
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        params_billion=0.135,
        context_length=8192,
        num_layers=30,
        num_kv_heads=3,
        head_dim=64,
        # Sized for the CPU engine: torch.compile costs 85-130 s per start on CPU for no gain on a
        # model this small, and a 2048-token window keeps the KV cache inside VLLM_CPU_KVCACHE_SPACE.
        engine_args={"max_model_len": 2048, "enforce_eager": True},
        tuning=_LORA,
        local=True,
    ),
    _preset(
        "phi-3-mini-4k-instruct",
        "microsoft/Phi-3-mini-4k-instruct",
        params_billion=3.82,
        context_length=4096,
        num_layers=32,
        num_kv_heads=32,
        head_dim=96,
        engine_args={**_PHI, "max_model_len": 4096},
        tuning=_LORA,
    ),
    _preset(
        "phi-3-mini-128k-instruct",
        "microsoft/Phi-3-mini-128k-instruct",
        params_billion=3.82,
        context_length=131072,
        num_layers=32,
        num_kv_heads=32,
        head_dim=96,
        engine_args={**_PHI, "max_model_len": 131072},
        tuning=_LORA,
    ),
    _preset(
        "phi-3.5-mini-instruct",
        "microsoft/Phi-3.5-mini-instruct",
        params_billion=3.82,
        context_length=131072,
        num_layers=32,
        num_kv_heads=32,
        head_dim=96,
        engine_args={**_PHI, "max_model_len": 131072},
        tuning=_LORA,
    ),
    _preset(
        "phi-4-mini-instruct",
        "microsoft/Phi-4-mini-instruct",
        params_billion=3.84,
        context_length=131072,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        engine_args={**_PHI, "max_model_len": 131072},
        tuning=_LORA,
    ),
    _preset(
        "llama-3.1-8b-instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        params_billion=8.03,
        context_length=131072,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        engine_args={"max_model_len": 131072},
        tuning=_LORA,
    ),
    _preset(
        "mistral-7b-instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
        params_billion=7.25,
        context_length=32768,
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        engine_args={"max_model_len": 32768},
        tuning=_LORA,
    ),
    _preset(
        "qwen2.5-coder-7b-instruct",
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        params_billion=7.62,
        # max_position_embeddings; the 128k window needs a YaRN rope_scaling override.
        context_length=32768,
        num_layers=28,
        num_kv_heads=4,
        head_dim=128,
        engine_args={"max_model_len": 32768},
        tuning=_LORA,
    ),
    _preset(
        "falcon-7b-instruct",
        "tiiuae/falcon-7b-instruct",
        params_billion=7.22,
        context_length=2048,
        num_layers=32,
        # Multi-query attention, and 71 query heads: tensor parallelism is impossible, so the
        # estimator spreads it over GPUs with pipeline stages instead.
        num_kv_heads=1,
        head_dim=64,
        engine_args={"max_model_len": 2048},
        tuning=_LORA,
    ),
    _preset(
        "falcon-40b-instruct",
        "tiiuae/falcon-40b-instruct",
        params_billion=41.8,
        context_length=2048,
        num_layers=60,
        num_kv_heads=8,
        head_dim=64,
        engine_args={"max_model_len": 2048},
    ),
    _preset(
        "llama-3.1-70b-instruct",
        "meta-llama/Llama-3.1-70B-Instruct",
        params_billion=70.55,
        context_length=131072,
        num_layers=80,
        num_kv_heads=8,
        head_dim=128,
        engine_args={"max_model_len": 131072},
    ),
)

PRESETS: Mapping[str, ModelPreset] = MappingProxyType({preset.name: preset for preset in _CATALOG})


def get_preset(name: str) -> ModelPreset:
    """A catalog preset by its short name (case-insensitive)."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise UnknownPresetError(name)
    return preset


def resolve_preset(name_or_id_or_path: str) -> ModelPreset:
    """A catalog preset, a local Hugging Face directory, or a custom preset for an `org/model` id.

    A directory wins over the other readings because `org/model` is also a valid relative path.
    A hub id that belongs to a catalog preset resolves to that preset, with its sizes.
    """
    text = name_or_id_or_path.strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return preset_from_directory(path)
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    if _HUB_ID.match(text):
        for preset in PRESETS.values():
            if preset.model_id.lower() == text.lower():
                return preset
        return custom_preset(text)
    if text.startswith((".", "/", "~")):
        raise UnknownPresetError(text, reason=f"directory {text!r} does not exist")
    raise UnknownPresetError(text)


def custom_preset(model_id: str) -> ModelPreset:
    """A hub model outside the catalog: its size is unknown until the engine downloads it."""
    return ModelPreset(
        name=model_id,
        model_id=model_id,
        params_billion=None,
        weight_gb=None,
        context_length=None,
        dtype="auto",
        num_layers=None,
        num_kv_heads=None,
        head_dim=None,
        tuning=TUNING_METHODS,
    )


def preset_from_directory(directory: Path) -> ModelPreset:
    """A custom preset for a Hugging Face model directory, sized from config.json and the weights."""
    directory = directory.expanduser().resolve()
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UnknownPresetError(str(directory), reason=f"directory {str(directory)!r} has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UnknownPresetError(str(directory), reason=f"cannot read {config_path}: {exc}") from None
    if not isinstance(config, dict):
        raise UnknownPresetError(str(directory), reason=f"{config_path} is not a JSON object")
    # Multimodal configs keep the language model's numbers in a nested text_config.
    text_config = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(text_config, dict):
        config = {**config, **text_config}

    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    weight_bytes = sum(file.stat().st_size for file in directory.glob("*.safetensors"))
    dtype_bytes = DTYPE_BYTES.get(dtype)
    disk_bytes = sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())
    return ModelPreset(
        name=directory.name,
        model_id=str(directory),
        params_billion=weight_bytes / dtype_bytes / 1e9 if weight_bytes and dtype_bytes else None,
        weight_gb=weight_bytes / 1e9 if weight_bytes else None,
        context_length=_int(config, "max_position_embeddings"),
        dtype=dtype,
        num_layers=_int(config, "num_hidden_layers"),
        num_kv_heads=_kv_heads(config),
        head_dim=_head_dim(config),
        tuning=TUNING_METHODS,
        disk_gb=disk_bytes / 1e9,
    )


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _kv_heads(config: Mapping[str, Any]) -> int | None:
    for key in ("num_key_value_heads", "num_kv_heads"):
        heads = _int(config, key)
        if heads is not None:
            return heads
    if config.get("multi_query") is True:
        return 1
    return _int(config, "num_attention_heads")


def _head_dim(config: Mapping[str, Any]) -> int | None:
    explicit = _int(config, "head_dim")
    if explicit is not None:
        return explicit
    hidden, heads = _int(config, "hidden_size"), _int(config, "num_attention_heads")
    return hidden // heads if hidden and heads else None
