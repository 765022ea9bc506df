"""The grouped CPU LoRA ops give vLLM's per-token results, and vLLM loads them as a plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as stock

from serve_apps.engines import cpu_lora

SLOTS, RANK, HIDDEN, OUT = 4, 8, 64, 48


def _case(tokens: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, generator=generator).to(dtype)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator).to(dtype)
    indices = torch.randint(0, SLOTS, (tokens,), generator=generator)
    return x, a, indices


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


# Small batches take the gather path, 1,000 tokens the per-adapter one (GATHER_MAX_ELEMENTS).
@pytest.mark.parametrize("tokens", [1, 7, 300, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shrink_and_expand_match_vllm_per_token_ops(tokens: int, dtype: torch.dtype) -> None:
    x, a, indices = _case(tokens, dtype, seed=tokens)
    want, got = torch.zeros(tokens, RANK, dtype=dtype), torch.zeros(tokens, RANK, dtype=dtype)
    stock.bgmv_shrink(x, a, want, indices, 0.5)
    cpu_lora.bgmv_shrink(x, a, got, indices, 0.5)
    _close(got, want)

    b = torch.randn(SLOTS, 1, OUT, RANK).to(dtype)
    base = torch.randn(tokens, OUT).to(dtype)
    for add in (True, False):
        want_y, got_y = base.clone(), base.clone()
        stock.bgmv_expand(want, b, want_y, indices, add)
        cpu_lora.bgmv_expand(want, b, got_y, indices, add)
        _close(got_y, want_y)

    wide = torch.zeros(tokens, 3 * OUT, dtype=dtype)
    want_s, got_s = wide.clone(), wide.clone()
    stock.bgmv_expand_slice(want, b, want_s, indices, OUT, OUT, True)
    cpu_lora.bgmv_expand_slice(want, b, got_s, indices, OUT, OUT, True)
    _close(got_s, want_s)


@pytest.mark.parametrize("tokens", [5, 1000])
def test_tokens_without_an_adapter_get_no_delta(tokens: int) -> None:
    x, a, indices = _case(tokens, torch.float32, seed=3)
    indices[::2] = -1
    shrunk = torch.full((tokens, RANK), 7.0)
    cpu_lora.bgmv_shrink(x, a, shrunk, indices, 1.0)
    assert torch.all(shrunk[::2] == 0)

    b = torch.randn(SLOTS, 1, OUT, RANK)
    base = torch.randn(tokens, OUT)
    y = base.clone()
    cpu_lora.bgmv_expand(torch.randn(tokens, RANK), b, y, indices, True)
    assert torch.equal(y[::2], base[::2])
    assert not torch.equal(y[1::2], base[1::2])


def test_prefill_ops_use_the_grouped_ones_once_vllm_loads_its_plugins() -> None:
    code = (
        "from vllm.plugins import load_general_plugins; load_general_plugins();"
        "from vllm.lora.ops.torch_ops import lora_ops; from vllm.lora.punica_wrapper import punica_cpu;"
        "mods = {f.__module__ for f in (lora_ops.bgmv_shrink, punica_cpu.bgmv_expand, "
        "punica_cpu.bgmv_expand_slice)}; print(sorted(mods))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['serve_apps.engines.cpu_lora']"


@pytest.mark.parametrize("tokens", [5, 1000])
def test_a_slot_written_after_a_call_is_seen_by_the_next(tokens: int) -> None:
    """Zero slots are skipped from a cache, which vLLM's in-place writes (adapter loads) invalidate."""
    b = torch.zeros(SLOTS, 1, OUT, RANK)
    x = torch.randn(tokens, RANK)
    indices = torch.full((tokens,), 2)
    base = torch.randn(tokens, OUT)
    y = base.clone()
    cpu_lora.bgmv_expand(x, b, y, indices, True)
    assert torch.equal(y, base)

    weights = torch.randn(OUT, RANK)
    b[2, 0].copy_(weights)
    cpu_lora.bgmv_expand(x, b, y, indices, True)
    _close(y, base + x @ weights.T)
