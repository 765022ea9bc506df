"""A float32 greedy reference computed in the test process, and the check that an answer follows it.

kairay serves float32 on CPU (presets/cpu.py), so a served greedy answer must be the reference's
own tokens; the only freedom is a step where the reference is itself tied within `NEAR_TIE` nats,
far below what bfloat16 kernels move (about 0.1) and far above float32 kernels' noise (about 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEAR_TIE = 0.02


@dataclass(frozen=True)
class Reference:
    """The greedy path of one prompt and each step's log-probabilities along it."""

    tokens: list[int]
    logprobs: list[Any]  # one 1-D tensor per step
    tokenizer: Any

    def text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def margin(self, step: int) -> float:
        top = self.logprobs[step].topk(2).values
        return float(top[0] - top[1])


def greedy_reference(model: Any, tokenizer: Any, input_ids: Any, steps: int) -> Reference:
    """`model`'s greedy continuation of `input_ids` (a 1 x n tensor) with its log-probabilities."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=steps,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, input_ids.shape[1] :].tolist()
    return Reference(tokens, [torch.log_softmax(row[0].float(), dim=-1) for row in out.logits], tokenizer)


def divergence(served: str, ref: Reference) -> str | None:
    """Why `served` is not the reference's greedy answer, or None if it is (up to a near-tie)."""
    for step, token in enumerate(ref.tokens):
        if served.startswith(ref.text(ref.tokens[: step + 1])):
            continue
        if ref.margin(step) < NEAR_TIE:
            return None  # tied in float32 too: either continuation is right
        return (
            f"step {step}: served {served!r} left the float32 answer {ref.text(ref.tokens)!r} "
            f"where the reference prefers {ref.text([token])!r} by {ref.margin(step):.3f} nats"
        )
    return None
