"""A vLLM plugin (`vllm.general_plugins`): multi-LoRA on CPU by adapter groups, not per token.

vLLM-CPU applies LoRA with PyTorch ops that first gather a copy of the adapter matrices for every
token (`weights[indices]`, then a batched matrix-vector product). A prefill of 16 prompts of 128
tokens copies 2,048 rank x hidden matrices per LoRA'd projection and layer: measured here, 26 ms
per op against 0.3 ms for the same product as one matrix multiply, which made a 4-adapter mix run
at 0.3x the base model's throughput (BENCHMARKS.md, section 2). These replacements compute the same
product once per adapter present in the batch (at most `max_loras` + base) as a plain matrix
multiply over that adapter's tokens. Decode steps gain too: the LoRA'd logits processor gathered a
vocabulary x rank matrix per sequence at every step, adapters or not.

vLLM wraps every projection it can (q, k, v, o, gate, up, down, the logits), whatever the adapters
target, and runs the ops for each at every step, even when no request uses an adapter. Slots whose
weights are all zero (an adapter that does not target that projection, an empty slot) contribute
nothing, so they are skipped: which slots are live is cached per weight buffer until vLLM writes it
again (torch counts in-place writes in the tensor's version).

Tokens without an adapter (index -1) get no LoRA delta, as in vLLM's GPU kernels; the gathering ops
would index the last adapter slot for them. The other semantics (slicing, padding, `add_inputs`)
are the originals'. vLLM loads general plugins in every process it starts (engine core, workers);
on other platforms, or with `VLLM_PLUGINS` excluding `kairay_cpu_lora`, nothing changes.
"""

from __future__ import annotations

import torch

# Up to this many gathered weights (tokens x one adapter's matrix) the per-token gather beats the
# per-adapter loop, whose cost is a handful of small ops per adapter: small decode batches.
GATHER_MAX_ELEMENTS = 1 << 18


# Per LoRA weight buffer (vLLM allocates them once per process): its version and which slots are live.
_live_slots: dict[tuple[int, tuple[int, ...], torch.dtype], tuple[int, torch.Tensor]] = {}


def _live(weights: torch.Tensor) -> torch.Tensor:
    """Which adapter slots of a weight buffer hold any non-zero weight."""
    key = (weights.data_ptr(), tuple(weights.shape), weights.dtype)
    version = weights._version
    cached = _live_slots.get(key)
    if cached is None or cached[0] != version:
        cached = (version, weights.flatten(1).any(dim=1))
        _live_slots[key] = cached
    return cached[1]


def _lora_product(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """out[t] = weights[indices[t]] @ inputs[t] in `dtype`, zero where indices[t] < 0 or the slot is
    not live."""
    # Liveness of vLLM's own buffer: a converted copy would be a new tensor at every call.
    live = _live(weights)
    inputs, weights = inputs.to(dtype=dtype), weights.to(dtype=dtype)
    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    active = (indices >= 0) & live[indices.clamp(min=0)]
    if not bool(active.any()):
        return inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    if indices.numel() * weights[0].numel() <= GATHER_MAX_ELEMENTS:
        out = torch.einsum("bi, boi -> bo", inputs, weights[indices.clamp(min=0)])
        return out * active.unsqueeze(1).to(out.dtype)
    out = inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    for index in torch.unique(indices[active]).tolist():
        rows = (indices == index).nonzero().squeeze(1)
        out[rows] = inputs[rows] @ weights[index].transpose(0, 1)
    return out


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = _lora_product(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad their outputs differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def register() -> None:
    """The plugin entry point: swap the ops in where vLLM-CPU looks them up."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    # `sgmv_*` (prefill) call the `bgmv_*` of their own module; the CPU wrapper imported both.
    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink  # type: ignore[attr-defined]
        module.bgmv_expand = bgmv_expand  # type: ignore[attr-defined]
        module.bgmv_expand_slice = bgmv_expand_slice  # type: ignore[attr-defined]
