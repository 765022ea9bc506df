"""One LoRA / QLoRA training run with peft and TRL's `SFTTrainer` (what a Ray Train worker executes).

Kaito's `fine_tuning.py`, re-done for kairay: the base weights and the chat template come from the
preset, the Kaito config sections map onto `from_pretrained`, `BitsAndBytesConfig`, `peft.LoraConfig`
and `SFTConfig`, and the result is an adapter directory (`adapter_config.json` +
`adapter_model.safetensors`) whose `base_model_name_or_path` names the base model (not the local
weight directory) so the serving side can check that an adapter fits the model it serves.

TRL's `SFTConfig` defaults differ from `transformers.TrainingArguments` (what Kaito's ConfigMaps are
written against) in learning_rate, bf16, gradient_checkpointing and logging_steps, so those are always
passed explicitly. `logging_steps` is forced to 1: the per-step loss is the job's progress signal.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from kairay.oci.adapters import ADAPTER_CONFIG, ADAPTER_FILES
from tuning.config import TuningConfig, TuningConfigError
from tuning.data import DataFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepMetrics:
    step: int
    max_steps: int
    loss: float
    learning_rate: float | None = None
    epoch: float | None = None
    grad_norm: float | None = None


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training run needs, as plain data (it travels to Ray Train workers)."""

    base_model: str  # what adapter_config.json records as base_model_name_or_path (preset's model id)
    model_path: str  # where the weights are read from (local directory or hub id in the cache)
    method: str
    config: dict[
        str, Any
    ]  # TuningConfig as its `training_config` sections (pydantic models stay at the edge)
    data_format: DataFormat
    train: pa.Table
    eval: pa.Table | None
    chat_template: str | None = None  # the preset's template; None keeps the tokenizer's own
    max_steps: int | None = None
    use_gpu: bool = False


@dataclass(frozen=True)
class TrainOutcome:
    adapter_dir: Path | None  # None on ranks other than 0
    global_step: int
    train_loss: float | None
    runtime_s: float


StepCallback = Callable[[StepMetrics], None]


def resolve_chat_template(configured: str | None, preset_template: str | None) -> str | None:
    """Kaito's `ModelConfig.chat_template` rule (inline Jinja, escaped, or a file path); else the preset's."""
    if configured is None:
        return preset_template
    if any(c in configured for c in "{}\n"):
        return codecs.decode(configured, "unicode_escape")
    path = Path(configured)
    try:
        return path.read_text()
    except OSError as exc:
        raise TuningConfigError(
            f"ModelConfig.chat_template: cannot read {path}: {exc.strerror or exc}"
        ) from None


def check_library_keys(config: TuningConfig) -> None:
    """Check the keys of the open sections against TRL's `SFTConfig` and peft's `LoraConfig`."""
    import peft
    from trl import SFTConfig

    for section, keys, cls in (
        ("TrainingArguments", set(config.training.extra_keys()), SFTConfig),
        ("LoraConfig", set(config.lora.model_dump()), peft.LoraConfig),
    ):
        unknown = sorted(keys - {f.name for f in dataclasses.fields(cls) if f.init})
        if unknown:
            raise TuningConfigError(f"{section}: unknown key(s) {', '.join(unknown)}")


def _sft_config(config: TuningConfig, request: TrainRequest, output_dir: Path) -> Any:
    from trl import SFTConfig

    training = config.training
    arguments = training.model_dump()
    arguments.update(
        output_dir=str(output_dir),
        # Explicit, so TRL's different defaults never apply (see the module docstring).
        learning_rate=training.learning_rate,
        bf16=training.bf16,
        gradient_checkpointing=training.gradient_checkpointing,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        max_steps=request.max_steps if request.max_steps is not None else training.max_steps,
    )
    if training.ddp_find_unused_parameters is None:
        # Every LoRA parameter takes part in every forward pass; "auto" would make DDP walk the graph
        # for unused ones after each step.
        arguments["ddp_find_unused_parameters"] = False
    if config.collator.pad_to_multiple_of is not None:
        arguments["pad_to_multiple_of"] = config.collator.pad_to_multiple_of
    if request.data_format == "text":
        arguments["dataset_text_field"] = "text"
    try:
        return SFTConfig(**arguments)
    except (TypeError, ValueError) as exc:
        raise TuningConfigError(f"TrainingArguments: {exc}") from None


def _lora_config(config: TuningConfig) -> Any:
    import peft

    values = config.lora.model_dump()
    values["task_type"] = "CAUSAL_LM"
    try:
        return peft.LoraConfig(**values)
    except (TypeError, ValueError) as exc:
        raise TuningConfigError(f"LoraConfig: {exc}") from None


def _quantization_config(config: TuningConfig) -> Any:
    from transformers import BitsAndBytesConfig

    values = config.quantization.model_dump(exclude={"quant_method"})
    values["load_in_4bit"] = config.quantized_4bit
    values["load_in_8bit"] = config.quantized_8bit
    return BitsAndBytesConfig(**values)


def _dataset(table: pa.Table, data_format: DataFormat, conversational: bool) -> Any:
    import datasets

    dataset = datasets.Dataset(table)
    if data_format == "prompt_completion" and conversational:
        # An instruction pair becomes one user turn and one assistant turn, so the adapter learns in
        # the chat format the model is served with (TRL then trains on the completion only).
        rows = table.to_pylist()
        dataset = datasets.Dataset.from_dict(
            {
                "prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
                "completion": [[{"role": "assistant", "content": r["completion"]}] for r in rows],
            }
        )
    return dataset


def _step_callback(on_step: StepCallback) -> Any:
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if logs and "loss" in logs:
                on_step(
                    StepMetrics(
                        step=int(state.global_step),
                        max_steps=int(state.max_steps),
                        loss=float(logs["loss"]),
                        learning_rate=_float(logs.get("learning_rate")),
                        epoch=_float(logs.get("epoch")),
                        grad_norm=_float(logs.get("grad_norm")),
                    )
                )

    return _Report()


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def train_adapter(
    request: TrainRequest, work_dir: Path, *, on_step: StepCallback | None = None
) -> TrainOutcome:
    """Train one adapter; call `on_step` with every step's loss (on every rank).

    Rank 0 saves the adapter to `work_dir/adapter`; the trainer's own checkpoints (if the config's
    save_strategy asks for them) go to `work_dir/trainer`, not to TrainingArguments.output_dir, which
    in a Kaito ConfigMap names a path inside Kaito's pod.
    """
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTTrainer

    started = time.monotonic()
    config = TuningConfig.model_validate(request.config)
    config.check_method(request.method)
    check_library_keys(config)
    set_seed(config.training.seed)
    # Ray Train sets up the process group (even for one worker); outside Ray, torchrun's variables.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if distributed else int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    model_config = config.model
    loading = {
        "cache_dir": model_config.cache_dir,
        "local_files_only": model_config.local_files_only,
        "revision": model_config.revision,
        "trust_remote_code": model_config.trust_remote_code,
    }
    tokenizer = AutoTokenizer.from_pretrained(request.model_path, **loading)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = resolve_chat_template(model_config.chat_template, request.chat_template)
    if template is not None:
        tokenizer.chat_template = template

    quantized = config.quantized_4bit
    if not request.use_gpu:
        device_map: Any = None  # everything on the CPU; "auto" would consult accelerate for nothing
    elif world_size > 1:
        device_map = {"": local_rank}  # one whole replica per GPU under DDP, as Kaito does
    else:
        device_map = model_config.device_map
    dtype = model_config.torch_dtype or "auto"
    model = AutoModelForCausalLM.from_pretrained(
        request.model_path,
        dtype=dtype,
        device_map=device_map,
        quantization_config=_quantization_config(config) if quantized else None,
        **loading,
    )
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training.gradient_checkpointing
        )
    model = get_peft_model(model, _lora_config(config))
    # get_peft_model records the weight directory it loaded from; the adapter should name the model.
    model.peft_config["default"].base_model_name_or_path = request.base_model
    model.config.use_cache = False  # the KV cache only serves generation

    conversational = bool(tokenizer.chat_template)
    if request.data_format == "messages" and not conversational:
        raise TuningConfigError(
            "the dataset is conversational (messages) but the model has no chat template; set "
            "ModelConfig.chat_template"
        )
    train_dataset = _dataset(request.train, request.data_format, conversational)
    eval_dataset = (
        _dataset(request.eval, request.data_format, conversational) if request.eval is not None else None
    )
    arguments = _sft_config(config, request, work_dir / "trainer")
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[_step_callback(on_step)] if on_step is not None else None,
    )
    # The job reports every step itself; the printer would repeat each log dict on stdout.
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    adapter_dir = None
    if trainer.is_world_process_zero():
        adapter_dir = save_adapter(trainer.model, work_dir / "adapter")
    if distributed:
        torch.distributed.barrier()
    return TrainOutcome(
        adapter_dir=adapter_dir,
        global_step=int(result.global_step),
        train_loss=_float(result.training_loss),
        runtime_s=time.monotonic() - started,
    )


def save_adapter(model: Any, adapter_dir: Path) -> Path:
    """Save only the adapter (config + safetensors), readable by every user (peft writes 0600)."""
    adapter_dir.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: the vocabulary is never resized here, and "auto" would look the base
    # model up on the hub to find out.
    model.save_pretrained(str(adapter_dir), safe_serialization=True, save_embedding_layers=False)
    for name in ADAPTER_FILES:
        path = adapter_dir / name
        if not path.is_file():
            raise RuntimeError(f"peft did not write {path}")
        path.chmod(0o644)
    logger.info("saved adapter to %s (%s)", adapter_dir, (adapter_dir / ADAPTER_CONFIG).stat().st_size)
    return adapter_dir
