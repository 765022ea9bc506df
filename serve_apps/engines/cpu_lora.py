"""A vLLM plugin (`vllm.general_plugins`): multi-LoRA on CPU by adapter groups, not per token.

vLLM-CPU applies LoRA with PyTorch ops that first gather a copy of the adapter matrices for every
token (`weights[indices]`, then a batched matrix-vector product). A prefill of 16 prompts of 128
tokens copies 2,048 rank x hidden matrices per LoRA'd projection and layer: measured here, 26 ms
per op against 0.3 ms for the same product as one matrix multiply, which made a 4-adapter mix run
at 0.3x the base model's throughput (BENCHMARKS.md, section 2). These replacements compute the same
product once per adapter present in the batch (at most `max_loras` + base) as a plain matrix
multiply over that adapter's tokens. Decode steps gain too: the LoRA'd logits processor gathered a
vocabulary x rank matrix per sequence at every step, adapters or not.

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


def _lora_product(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """out[t] = weights[indices[t]] @ inputs[t], zero where indices[t] < 0."""
    if weights.dim() == 4:
        weights = weights.squeeze(dim=1)
    if indices.numel() * weights[0].numel() <= GATHER_MAX_ELEMENTS:
        out = torch.einsum("bi, boi -> bo", inputs, weights[indices.clamp(min=0)])
        return out * (indices >= 0).unsqueeze(1).to(out.dtype)
    out = inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    for index in torch.unique(indices).tolist():
        if index < 0:
            continue
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
    dtype = output_tensor.dtype
    outputs = _lora_product(inputs.to(dtype=dtype), lora_a_weights.to(dtype=dtype), lora_indices_tensor)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    dtype = output_tensor.dtype
    outputs = _lora_product(inputs.to(dtype=dtype), lora_b_weights.to(dtype=dtype), lora_indices_tensor)
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
    dtype = output_tensor.dtype
    outputs = _lora_product(inputs.to(dtype=dtype), lora_b_weights.to(dtype=dtype), lora_indices_tensor)
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
