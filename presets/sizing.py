"""How many GPUs and nodes a preset needs on an instance type, and how to split the model over them.

Pure arithmetic on catalog numbers; every plan carries the lines of arithmetic that produced it so
that `kairay plan`, the controller's conditions and a reviewer see the same reasoning.

Inference memory model (vLLM):
- weights: parameters x bytes of the serving dtype;
- KV cache for ONE sequence of max_model_len tokens: vLLM refuses to start unless a full-length
  sequence fits, and whatever the budget has left becomes KV blocks for concurrent sequences, so
  this is the minimum, not the expected working set;
- overhead: 1 GB per GPU (CUDA context, CUDA graphs, NCCL buffers) plus 10 % of weights and KV cache
  (activations of the largest batch, allocator fragmentation);
- all of it must fit in gpu_memory_utilization (vLLM's default 0.9) of the GPUs' memory.

Nodes are added to hold the weights, never for context length alone: when the preset's default
context does not fit on the nodes the weights need, max_model_len shrinks to what fits (down to
2048 tokens). An explicit max_model_len is a requirement and adds GPUs or nodes instead.

One module: the inference, local and tuning planners share one memory model (weights, KV cache,
overhead) and the arithmetic they print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from kairay.api.errors import KairayError
from presets.cpu import CpuDtype, cpu_serving_dtype
from presets.models import DTYPE_BYTES, TUNING_METHODS, ModelPreset
from presets.skus import GpuSku

GPU_MEMORY_UTILIZATION = 0.9
OVERHEAD_PER_GPU_GB = 1.0
OVERHEAD_FRACTION = 0.10
MIN_AUTO_MAX_MODEL_LEN = 2048

# LoRA with rank 8-16 on every linear layer trains 0.3-1 % of the parameters; 1 % stays on the safe side.
ADAPTER_FRACTION = 0.01
# fp32 adapter weights, their gradients and Adam's two moments.
ADAPTER_STATE_BYTES = 16
QLORA_BYTES_PER_PARAM = 0.5
# Quantization constants plus the embeddings, lm_head and norms that bitsandbytes keeps in 16 bit.
QLORA_EXTRA_FRACTION = 0.2
# Per token, layer and hidden unit in 16 bit with fused (flash / SDPA) attention, after Korthikanti et
# al., "Reducing Activation Recomputation in Large Transformer Models" (2022).
ACTIVATION_BYTES = 34
# Gradient checkpointing keeps only each layer's 16-bit input and recomputes one layer at a time.
CHECKPOINT_BYTES = 2
TRAIN_MEMORY_FRACTION = 0.9
DEFAULT_TUNING_SEQ_LEN = 2048


class SizingError(KairayError, ValueError):
    """The model does not fit; the message gives the memory needed and the memory available."""

    reason = "InsufficientGPUMemory"
    http_status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, *, need_gb: float, available_gb: float) -> None:
        super().__init__(message)
        self.need_gb = need_gb
        self.available_gb = available_gb


@dataclass(frozen=True)
class InferencePlan:
    """Where and how the engine runs. `sku` is None for the local CPU plan (`gpus_per_node` 0).

    Memory numbers are None when the model's size is unknown (a custom `org/model` preset).
    """

    preset: ModelPreset
    sku: GpuSku | None
    gpus_per_node: int
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    dtype: str
    max_model_len: int | None
    weights_gb: float | None
    kv_cache_gb: float | None
    overhead_gb: float | None
    need_gb: float | None
    available_gb: float | None
    steps: tuple[str, ...]
    notes: tuple[str, ...] = ()
    # Why this dtype, where the planner chose it against the weights' own (the CPU policy).
    dtype_reason: str | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.sku is None else "cuda"

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def engine_args(self) -> dict[str, Any]:
        """The preset's default vLLM arguments with the planned parallelism, dtype and length on top."""
        args = dict(self.preset.engine_args)
        args.update(
            tensor_parallel_size=self.tensor_parallel,
            pipeline_parallel_size=self.pipeline_parallel,
            dtype=self.dtype,
        )
        if self.max_model_len is None:
            args.pop("max_model_len", None)
        else:
            args["max_model_len"] = self.max_model_len
        if self.sku is None:
            # torch.compile costs minutes per engine start on CPU and buys nothing there.
            args["enforce_eager"] = True
        else:
            # The sizing above assumed this budget; pinning it keeps a changed vLLM default from
            # invalidating the plan.
            args["gpu_memory_utilization"] = GPU_MEMORY_UTILIZATION
        return args


@dataclass(frozen=True)
class TuningPlan:
    """A LoRA/QLoRA job on ONE node: one Ray Train worker per GPU.

    Each worker holds a full replica unless `sharded`, in which case the workers shard the model
    state (FSDP). Memory numbers are node totals; None when the model's size is unknown.
    """

    preset: ModelPreset
    sku: GpuSku
    method: str
    dtype: str
    workers: int
    sharded: bool
    gradient_checkpointing: bool
    seq_len: int
    micro_batch_size: int
    weights_gb: float | None
    adapter_gb: float | None
    activations_gb: float | None
    overhead_gb: float | None
    need_gb: float | None
    available_gb: float
    steps: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Layout:
    nodes: int
    tensor_parallel: int
    stages_per_node: int

    @property
    def gpus_per_node(self) -> int:
        return self.tensor_parallel * self.stages_per_node

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def pipeline_parallel(self) -> int:
        return self.nodes * self.stages_per_node


@dataclass(frozen=True)
class _Model:
    """The numbers sizing needs, present only when the preset's size is known."""

    weights_gb: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_bytes_per_token: int
    params_billion: float | None


@dataclass(frozen=True)
class _Budget:
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    available_gb: float

    @property
    def need_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.overhead_gb

    @property
    def fits(self) -> bool:
        return self.need_gb <= self.available_gb


def plan_inference(
    preset: ModelPreset, sku: GpuSku, *, node_count: int | None = None, max_model_len: int | None = None
) -> InferencePlan:
    """Plan serving `preset` on `sku` using at most `node_count` nodes (None: as many as needed)."""
    if node_count is not None and node_count < 1:
        raise ValueError(f"node_count must be at least 1, got {node_count}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be at least 1, got {max_model_len}")
    dtype, dtype_note = _serving_dtype(preset.dtype, sku)
    model = _model(preset, dtype)
    if model is None:
        return _unknown_size_plan(preset, sku, dtype, dtype_note, max_model_len)

    context = preset.context_length
    if max_model_len is not None and context is not None and max_model_len > context:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the context length of {preset.name} ({context} tokens)"
        )
    if max_model_len is not None:
        target = floor = max_model_len
    else:
        target = preset.default_max_model_len or MIN_AUTO_MAX_MODEL_LEN
        floor = min(target, MIN_AUTO_MAX_MODEL_LEN)

    layouts = _layouts(sku, model, node_count)
    smallest = next((lay for lay in layouts if _budget(model, sku, lay.total_gpus, floor).fits), None)
    if smallest is None:
        raise _does_not_fit(preset, sku, model, layouts[-1], floor, node_count)

    same_nodes = [lay for lay in layouts if lay.nodes == smallest.nodes]
    full = next((lay for lay in same_nodes if _budget(model, sku, lay.total_gpus, target).fits), None)
    steps: list[str] = []
    notes: list[str] = [dtype_note] if dtype_note else []
    if full is not None:
        layout, length = full, target
    else:
        # More GPUs on the same nodes are free; more nodes only for context are not.
        layout = same_nodes[-1]
        length = _fitting_length(model, sku, layout.total_gpus, target)
        short = _budget(model, sku, layout.total_gpus, target)
        reason = (
            f"max_model_len {target} needs {short.need_gb:.2f} GB > {short.available_gb:.2f} GB on "
            f"{_nodes_text(layout.nodes, sku)}; reduced to {length}, the longest multiple of "
            f"{_length_step(length)} tokens that fits"
        )
        steps.append(reason)
        notes.append(
            f"max_model_len reduced from {target} to {length} to fit {_nodes_text(layout.nodes, sku)}; "
            "set max_model_len explicitly to get more GPUs or nodes instead"
        )

    budget = _budget(model, sku, layout.total_gpus, length)
    steps[:0] = _memory_steps(model, sku, dtype, layout.total_gpus, length, budget)
    steps.append(_layout_step(sku, layout))
    if layout.stages_per_node > 1:
        notes.append(
            f"tensor parallelism stops at {layout.tensor_parallel} ({model.num_kv_heads} KV heads); "
            f"{layout.stages_per_node} pipeline stages per node use the other GPUs"
        )
    if layout.nodes > 1:
        notes.append(f"{layout.nodes} nodes run as pipeline stages over the network")
    return InferencePlan(
        preset=preset,
        sku=sku,
        gpus_per_node=layout.gpus_per_node,
        nodes=layout.nodes,
        tensor_parallel=layout.tensor_parallel,
        pipeline_parallel=layout.pipeline_parallel,
        dtype=dtype,
        max_model_len=length,
        weights_gb=budget.weights_gb,
        kv_cache_gb=budget.kv_cache_gb,
        overhead_gb=budget.overhead_gb,
        need_gb=budget.need_gb,
        available_gb=budget.available_gb,
        steps=tuple(steps),
        notes=tuple(notes),
    )


def plan_local(preset: ModelPreset, cpu: CpuDtype | None = None) -> InferencePlan:
    """Plan the CPU engine on this machine: one process, no parallelism, float32 where it fits."""
    cpu = cpu or cpu_serving_dtype(preset.params_billion)
    lengths = [length for length in (preset.context_length, preset.default_max_model_len) if length]
    length = min(lengths) if lengths else None
    model = _model(preset, cpu.dtype)
    steps: list[str] = []
    weights_gb = kv_gb = need_gb = None
    if model is None:
        steps.append(f"model size unknown ({preset.model_id} is not in the catalog): no memory estimate")
    else:
        weights_gb = model.weights_gb
        steps.append(_weights_step(model, cpu.dtype))
        if length is not None:
            kv_gb = model.kv_bytes_per_token * length / 1e9
            steps.append(_kv_step(model, length, kv_gb))
        need_gb = weights_gb + (kv_gb or 0.0)
        steps.append(
            f"need (RAM): {need_gb:.2f} GB; vLLM's CPU engine keeps the KV cache in "
            "VLLM_CPU_KVCACHE_SPACE GiB of RAM, which must hold one full sequence"
        )
    steps.append("layout: this machine's CPU, tensor_parallel 1 x pipeline_parallel 1")
    notes = (f"{preset.dtype} weights served in {cpu.dtype}",) if cpu.dtype != preset.dtype else ()
    return InferencePlan(
        preset=preset,
        sku=None,
        gpus_per_node=0,
        nodes=1,
        tensor_parallel=1,
        pipeline_parallel=1,
        dtype=cpu.dtype,
        max_model_len=length,
        weights_gb=weights_gb,
        kv_cache_gb=kv_gb,
        overhead_gb=None,
        need_gb=need_gb,
        available_gb=None,
        steps=tuple(steps),
        notes=notes,
        dtype_reason=cpu.reason,
    )


def plan_tuning(
    preset: ModelPreset,
    sku: GpuSku,
    method: str,
    *,
    seq_len: int | None = None,
    micro_batch_size: int = 1,
) -> TuningPlan:
    """Plan a LoRA or QLoRA job on one node of `sku` (one Ray Train worker per GPU).

    Tries, in order: full replicas per GPU, replicas with gradient checkpointing, and the model
    state sharded over the node's GPUs (FSDP) with checkpointing.
    """
    if method not in TUNING_METHODS:
        raise ValueError(f"tuning method must be one of {sorted(TUNING_METHODS)}, got {method!r}")
    if method not in preset.tuning:
        supported = ", ".join(sorted(preset.tuning)) or "none"
        raise ValueError(f"preset {preset.name} does not support {method} tuning (supported: {supported})")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
    length = seq_len or min(preset.context_length or DEFAULT_TUNING_SEQ_LEN, DEFAULT_TUNING_SEQ_LEN)
    dtype = "bfloat16" if sku.bf16 else "float16"
    notes: list[str] = []
    if not sku.bf16:
        notes.append(
            f"{sku.gpu_model} (compute capability {sku.compute_capability}) has no bfloat16; "
            "training in float16 mixed precision"
        )
    if method == "qlora":
        notes.append(
            f"QLoRA loads the base weights as 4-bit NF4 (bitsandbytes) and trains the adapter in {dtype}"
        )
    workers = sku.gpu_count
    per_gpu_gb = sku.gpu_memory_gb * TRAIN_MEMORY_FRACTION
    available_gb = workers * per_gpu_gb
    available_step = (
        f"available: {workers} GPU(s) x {sku.gpu_memory_gb:g} GB x {TRAIN_MEMORY_FRACTION} "
        f"= {available_gb:.2f} GB"
    )

    model = _model(preset, "bfloat16")
    params = model.params_billion if model else None
    if model is None or params is None:
        return TuningPlan(
            preset=preset,
            sku=sku,
            method=method,
            dtype=dtype,
            workers=workers,
            sharded=False,
            gradient_checkpointing=True,
            seq_len=length,
            micro_batch_size=micro_batch_size,
            weights_gb=None,
            adapter_gb=None,
            activations_gb=None,
            overhead_gb=None,
            need_gb=None,
            available_gb=available_gb,
            steps=(
                f"model size unknown ({preset.model_id} is not in the catalog): using all {workers} "
                f"GPU(s) of one {sku.name} node, one replica per GPU, gradient checkpointing on",
                available_step,
            ),
            notes=tuple(notes),
        )

    if method == "qlora":
        weights_gb = params * QLORA_BYTES_PER_PARAM * (1 + QLORA_EXTRA_FRACTION)
        weights_step = (
            f"weights: {params:g} B params x {QLORA_BYTES_PER_PARAM} bytes (4-bit) + "
            f"{QLORA_EXTRA_FRACTION:.0%} (quantization constants, 16-bit embeddings and norms) "
            f"= {weights_gb:.2f} GB"
        )
    else:
        weights_gb = params * 2
        weights_step = f"weights: {params:g} B params x 2 bytes ({dtype}) = {weights_gb:.2f} GB"
    adapter_billion = params * ADAPTER_FRACTION
    adapter_gb = adapter_billion * ADAPTER_STATE_BYTES
    hidden = _estimated_hidden_size(params, model.num_layers)
    tokens = length * micro_batch_size
    full_activations = tokens * model.num_layers * hidden * ACTIVATION_BYTES / 1e9
    checkpointed = tokens * hidden * (CHECKPOINT_BYTES * model.num_layers + ACTIVATION_BYTES) / 1e9

    def worker_need(activations: float, shards: int) -> tuple[float, float]:
        state = (weights_gb + adapter_gb) / shards
        overhead = OVERHEAD_PER_GPU_GB + OVERHEAD_FRACTION * (state + activations)
        return state + activations + overhead, overhead

    replica_full, _ = worker_need(full_activations, 1)
    replica_checkpointed, _ = worker_need(checkpointed, 1)
    shard_need, _ = worker_need(checkpointed, workers)
    if replica_full <= per_gpu_gb:
        sharded, checkpointing, activations = False, False, full_activations
    elif replica_checkpointed <= per_gpu_gb:
        sharded, checkpointing, activations = False, True, checkpointed
        notes.append(
            f"gradient checkpointing on: without it a worker needs {replica_full:.2f} GB > "
            f"{per_gpu_gb:.2f} GB per GPU"
        )
    elif workers > 1 and shard_need <= per_gpu_gb:
        sharded, checkpointing, activations = True, True, checkpointed
        notes.append(
            f"model state sharded over {workers} GPUs (FSDP) with gradient checkpointing: one replica "
            f"needs {replica_checkpointed:.2f} GB > {per_gpu_gb:.2f} GB per GPU"
        )
    else:
        need_gb = shard_need * workers
        layout = f"sharded over {workers} GPUs, " if workers > 1 else ""
        raise SizingError(
            f"{method} tuning of {preset.name} does not fit on one {sku.describe()} node: need "
            f"{need_gb:.1f} GB ({layout}gradient checkpointing, {tokens} tokens per step), have "
            f"{available_gb:.1f} GB ({workers} x {sku.gpu_memory_gb:g} GB x {TRAIN_MEMORY_FRACTION}); "
            + ("try qlora or " if method == "lora" and "qlora" in preset.tuning else "")
            + "use an instance type with more GPU memory",
            need_gb=need_gb,
            available_gb=available_gb,
        )

    shards = workers if sharded else 1
    per_worker, per_overhead = worker_need(activations, shards)
    need_gb = per_worker * workers
    if checkpointing:
        activation_step = (
            f"activations per worker (gradient checkpointing): {tokens} tokens x {hidden} hidden x "
            f"({CHECKPOINT_BYTES} bytes x {model.num_layers} layers + {ACTIVATION_BYTES} bytes for the "
            f"layer being recomputed) = {activations:.2f} GB"
        )
    else:
        activation_step = (
            f"activations per worker: {tokens} tokens x {model.num_layers} layers x {hidden} hidden x "
            f"{ACTIVATION_BYTES} bytes = {activations:.2f} GB"
        )
    steps = (
        weights_step,
        f"adapter: {ADAPTER_FRACTION:.0%} of params = {adapter_billion:.3g} B params x "
        f"{ADAPTER_STATE_BYTES} bytes (fp32 weights, gradients, Adam moments) = {adapter_gb:.2f} GB",
        f"hidden size estimated from params / (12 x layers): {hidden}",
        activation_step,
        f"overhead per worker: {OVERHEAD_PER_GPU_GB:g} GB (CUDA context) + {OVERHEAD_FRACTION:.0%} of "
        f"the rest = {per_overhead:.2f} GB",
        (
            f"need: {workers} worker(s) x {per_worker:.2f} GB "
            + (f"(model state / {workers} shards) " if sharded else "(one replica each) ")
            + f"= {need_gb:.2f} GB"
        ),
        available_step,
    )
    return TuningPlan(
        preset=preset,
        sku=sku,
        method=method,
        dtype=dtype,
        workers=workers,
        sharded=sharded,
        gradient_checkpointing=checkpointing,
        seq_len=length,
        micro_batch_size=micro_batch_size,
        weights_gb=weights_gb,
        adapter_gb=adapter_gb,
        activations_gb=activations,
        overhead_gb=per_overhead * workers,
        need_gb=need_gb,
        available_gb=available_gb,
        steps=steps,
        notes=tuple(notes),
    )


def format_plan(plan: InferencePlan | TuningPlan) -> str:
    """A table of the plan followed by its arithmetic and notes, for `kairay plan`."""
    preset = plan.preset
    rows: list[tuple[str, str]] = [("preset", _preset_text(preset))]
    if isinstance(plan, TuningPlan):
        rows += [
            ("instance type", plan.sku.describe()),
            ("method", plan.method),
            ("nodes", "1"),
            ("workers (GPUs)", str(plan.workers)),
            ("model state", "sharded (FSDP)" if plan.sharded else "one replica per worker"),
            ("gradient checkpointing", "on" if plan.gradient_checkpointing else "off"),
            ("dtype", plan.dtype),
            ("tokens per step", f"{plan.seq_len} x {plan.micro_batch_size}"),
            ("weights", _gb(plan.weights_gb)),
            ("adapter + optimizer", _gb(plan.adapter_gb)),
            ("activations / worker", _gb(plan.activations_gb)),
            ("overhead", _gb(plan.overhead_gb)),
        ]
    else:
        rows += [
            ("instance type", plan.sku.describe() if plan.sku else "this machine (CPU)"),
            ("nodes", str(plan.nodes)),
            ("GPUs per node", str(plan.gpus_per_node)),
            ("tensor parallel", str(plan.tensor_parallel)),
            ("pipeline parallel", str(plan.pipeline_parallel)),
            ("dtype", plan.dtype + (f" ({plan.dtype_reason})" if plan.dtype_reason else "")),
            ("max_model_len", str(plan.max_model_len) if plan.max_model_len else "model default"),
            ("weights", _gb(plan.weights_gb)),
            ("KV cache", _gb(plan.kv_cache_gb)),
            ("overhead", _gb(plan.overhead_gb)),
        ]
    rows += [("need", _gb(plan.need_gb)), ("available", _gb(plan.available_gb))]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines += ["", "arithmetic:", *(f"  {step}" for step in plan.steps)]
    if plan.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in plan.notes)]
    return "\n".join(lines)


def _serving_dtype(preset_dtype: str, sku: GpuSku) -> tuple[str, str | None]:
    """vLLM's dtype choice made explicit, so the plan and the engine agree on the weights' size."""
    half = "bfloat16" if sku.bf16 else "float16"
    no_bf16 = f"{sku.gpu_model} (compute capability {sku.compute_capability}) has no bfloat16"
    if preset_dtype == "bfloat16":
        return half, None if sku.bf16 else f"{no_bf16}; serving the bfloat16 weights in float16"
    if preset_dtype == "float32":
        return half, f"float32 weights served in {half}, as vLLM's dtype=auto does"
    if preset_dtype == "float16":
        return "float16", None
    if sku.bf16:
        return "auto", None
    return "float16", f"{no_bf16}; serving in float16"


def _model(preset: ModelPreset, dtype: str) -> _Model | None:
    if (
        preset.weight_gb is None
        or preset.num_layers is None
        or preset.num_kv_heads is None
        or preset.head_dim is None
    ):
        return None
    stored = DTYPE_BYTES.get(preset.dtype)
    served = DTYPE_BYTES.get(dtype, stored or 2)
    scale = served / stored if stored else 1.0
    params = preset.params_billion
    if params is None and stored:
        params = preset.weight_gb / stored
    return _Model(
        weights_gb=preset.weight_gb * scale,
        num_layers=preset.num_layers,
        num_kv_heads=preset.num_kv_heads,
        head_dim=preset.head_dim,
        kv_bytes_per_token=2 * preset.num_layers * preset.num_kv_heads * preset.head_dim * served,
        params_billion=params,
    )


def _budget(model: _Model, sku: GpuSku, gpus: int, length: int) -> _Budget:
    kv_gb = model.kv_bytes_per_token * length / 1e9
    overhead = gpus * OVERHEAD_PER_GPU_GB + OVERHEAD_FRACTION * (model.weights_gb + kv_gb)
    return _Budget(
        weights_gb=model.weights_gb,
        kv_cache_gb=kv_gb,
        overhead_gb=overhead,
        available_gb=gpus * sku.gpu_memory_gb * GPU_MEMORY_UTILIZATION,
    )


def _fitting_length(model: _Model, sku: GpuSku, gpus: int, cap: int) -> int:
    """The longest max_model_len at most `cap`, in steps of 1024 (256 below that), that fits."""
    available = gpus * sku.gpu_memory_gb * GPU_MEMORY_UTILIZATION
    kv_room_gb = (available - gpus * OVERHEAD_PER_GPU_GB) / (1 + OVERHEAD_FRACTION) - model.weights_gb
    tokens = math.floor(kv_room_gb * 1e9 / model.kv_bytes_per_token)
    if tokens >= cap:
        return cap
    step = _length_step(tokens)
    return tokens // step * step


def _length_step(tokens: int) -> int:
    return 1024 if tokens >= 1024 else 256


def _layouts(sku: GpuSku, model: _Model, node_count: int | None) -> list[_Layout]:
    """Candidate layouts, cheapest first: fewer nodes, then fewer GPUs, then wider tensor parallelism.

    Tensor parallelism is a power of two dividing both the node's GPUs and the KV heads, so every
    rank owns whole KV heads (vLLM would otherwise replicate them, which costs memory and needs a
    head count the catalog does not record). GPUs beyond that become pipeline stages in the node.
    """
    widths = [
        width
        for width in (2**power for power in range(sku.gpu_count.bit_length()))
        if sku.gpu_count % width == 0 and model.num_kv_heads % width == 0
    ]
    widest = widths[-1]
    full_stages = sku.gpu_count // widest
    single = [_Layout(1, width, 1) for width in widths]
    single += [_Layout(1, widest, stages) for stages in range(2, full_stages + 1)]
    # A stage needs at least one layer, which bounds the nodes when the Workspace does not.
    max_nodes = node_count if node_count is not None else max(1, model.num_layers // full_stages)
    multi = [_Layout(nodes, widest, full_stages) for nodes in range(2, max_nodes + 1)]
    return [layout for layout in single + multi if layout.pipeline_parallel <= model.num_layers]


def _does_not_fit(
    preset: ModelPreset, sku: GpuSku, model: _Model, largest: _Layout, length: int, node_count: int | None
) -> SizingError:
    budget = _budget(model, sku, largest.total_gpus, length)
    hint = "use an instance type with more GPU memory"
    if node_count is not None:
        unbounded = _layouts(sku, model, None)
        enough = next((lay for lay in unbounded if _budget(model, sku, lay.total_gpus, length).fits), None)
        if enough is not None:
            hint = f"raise resource.count to {enough.nodes} or {hint}"
    return SizingError(
        f"{preset.name} does not fit: need {budget.need_gb:.1f} GB "
        f"(weights {budget.weights_gb:.1f} GB + KV cache {budget.kv_cache_gb:.1f} GB for {length} tokens "
        f"+ overhead {budget.overhead_gb:.1f} GB), have {budget.available_gb:.1f} GB on "
        f"{largest.nodes} x {sku.name} ({largest.total_gpus} x {sku.gpu_model} {sku.gpu_memory_gb:g} GB x "
        f"{GPU_MEMORY_UTILIZATION} gpu_memory_utilization); {hint}",
        need_gb=budget.need_gb,
        available_gb=budget.available_gb,
    )


def _unknown_size_plan(
    preset: ModelPreset, sku: GpuSku, dtype: str, dtype_note: str | None, max_model_len: int | None
) -> InferencePlan:
    width = 1 << (sku.gpu_count.bit_length() - 1)
    while sku.gpu_count % width:
        width //= 2
    stages = sku.gpu_count // width
    available = sku.gpu_count * sku.gpu_memory_gb * GPU_MEMORY_UTILIZATION
    unknown = (
        f"model size unknown ({preset.model_id} is not in the catalog): using all {sku.gpu_count} "
        f"GPU(s) of one {sku.name} node"
    )
    length_text = str(max_model_len) if max_model_len else "the model's own context length (from its config)"
    steps = (
        unknown,
        f"available: {sku.gpu_count} GPU(s) x {sku.gpu_memory_gb:g} GB x {GPU_MEMORY_UTILIZATION} "
        f"gpu_memory_utilization = {available:.2f} GB",
        f"max_model_len: {length_text}",
        f"layout: 1 node x {sku.gpu_count} GPU(s): tensor_parallel {width} x pipeline_parallel {stages}",
    )
    notes = [note for note in (dtype_note,) if note]
    notes.append(f"{unknown}; vLLM reports at start-up if it does not fit")
    return InferencePlan(
        preset=preset,
        sku=sku,
        gpus_per_node=sku.gpu_count,
        nodes=1,
        tensor_parallel=width,
        pipeline_parallel=stages,
        dtype=dtype,
        max_model_len=max_model_len,
        weights_gb=None,
        kv_cache_gb=None,
        overhead_gb=None,
        need_gb=None,
        available_gb=available,
        steps=steps,
        notes=tuple(notes),
    )


def _memory_steps(
    model: _Model, sku: GpuSku, dtype: str, gpus: int, length: int, budget: _Budget
) -> Sequence[str]:
    return (
        _weights_step(model, dtype),
        _kv_step(model, length, budget.kv_cache_gb),
        f"overhead: {OVERHEAD_PER_GPU_GB:g} GB per GPU x {gpus} GPU(s) (CUDA context, CUDA graphs, NCCL) "
        f"+ {OVERHEAD_FRACTION:.0%} of weights and KV cache (activations, fragmentation) = "
        f"{budget.overhead_gb:.2f} GB",
        f"need: {budget.weights_gb:.2f} + {budget.kv_cache_gb:.2f} + {budget.overhead_gb:.2f} = "
        f"{budget.need_gb:.2f} GB",
        f"available: {gpus} GPU(s) x {sku.gpu_memory_gb:g} GB x {GPU_MEMORY_UTILIZATION} "
        f"gpu_memory_utilization = {budget.available_gb:.2f} GB",
    )


def _weights_step(model: _Model, dtype: str) -> str:
    served = DTYPE_BYTES.get(dtype)
    if model.params_billion is not None and served is not None:
        return (
            f"weights: {model.params_billion:g} B params x {served} bytes ({dtype}) "
            f"= {model.weights_gb:.2f} GB"
        )
    return f"weights: {model.weights_gb:.2f} GB (size of the safetensors files)"


def _kv_step(model: _Model, length: int, kv_gb: float) -> str:
    per_value = model.kv_bytes_per_token // (2 * model.num_layers * model.num_kv_heads * model.head_dim)
    return (
        f"KV cache: 2 (K and V) x {model.num_layers} layers x {model.num_kv_heads} KV heads x "
        f"{model.head_dim} head_dim x {per_value} bytes x {length} tokens = {kv_gb:.2f} GB "
        "(one full-length sequence; vLLM gives the rest of the budget to concurrent sequences)"
    )


def _layout_step(sku: GpuSku, layout: _Layout) -> str:
    text = (
        f"layout: {_nodes_text(layout.nodes, sku)}, {layout.gpus_per_node} GPU(s) each: "
        f"tensor_parallel {layout.tensor_parallel} x pipeline_parallel {layout.pipeline_parallel}"
    )
    if layout.nodes > 1:
        one_node = sku.gpu_count * sku.gpu_memory_gb * GPU_MEMORY_UTILIZATION
        text += f" (one node's {one_node:.2f} GB is too little for the weights)"
    return text


def _nodes_text(nodes: int, sku: GpuSku) -> str:
    return f"{nodes} x {sku.name}"


def _preset_text(preset: ModelPreset) -> str:
    return preset.name if preset.name == preset.model_id else f"{preset.name} ({preset.model_id})"


def _gb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f} GB"


def _estimated_hidden_size(params_billion: float, num_layers: int) -> int:
    # A decoder layer holds about 12 h^2 parameters (attention 4 h^2, MLP 8 h^2).
    return round(math.sqrt(params_billion * 1e9 / (12 * num_layers)))
