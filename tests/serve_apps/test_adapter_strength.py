"""Adapter strength and live adapter changes, held to a float32 reference computed in the test.

A strength `s` serves the model with the adapter's update `s * B @ A`. The reference builds exactly
that model with peft (the adapter's `lora_B` scaled by `s`) and decodes greedily; since kairay serves
float32 on CPU, the served answer must be the reference's, step for step. Strength 0.5 is shown to
be a third model, neither the base nor the full adapter. Changes (strength, source, removal) are
made to the running `kairay up` by editing its file, on the same replica, and undone afterwards so
that the session's `served` app is left as the fixture made it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.kairay_up import KairayUp
from tests.serve_apps.reference import Reference, divergence, greedy_reference

pytestmark = pytest.mark.e2e

BASE = "smollm2-135m-instruct"
PROMPT = "The capital of France is"
STEPS = 16
# (adapter, strength) → the reference model; strength 0 is the base model.
CASES = (("adapter-a", 0.0), ("adapter-a", 0.5), ("adapter-a", 1.0), ("adapter-b", 1.0))


@pytest.fixture(scope="module")
def references(local_model_dir: Path, lora_adapters: dict[str, Path]) -> dict[tuple[str, float], Reference]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir)
    base = AutoModelForCausalLM.from_pretrained(local_model_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    found = {}
    for name, strength in CASES:
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(lora_adapters[name])).eval()
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.mul_(strength)
        found[(name, strength)] = greedy_reference(model, tokenizer, ids, STEPS)
    return found


def settled(http: httpx.Client, model: str, ref: Reference, timeout: float = 60) -> tuple[str | None, str]:
    """The answer once a change has reached the replica: Serve applies a re-applied config to running
    replicas (`reconfigure`) shortly after the deploy returns, and a strength or source change of a
    listed adapter shows nowhere else. Returns why the last answer is not `ref`'s, and its replica."""
    deadline = time.monotonic() + timeout
    while True:
        text, replica = complete(http, model)
        problem = divergence(text, ref)
        if problem is None or time.monotonic() > deadline:
            return problem, replica
        time.sleep(0.5)


def complete(http: httpx.Client, model: str) -> tuple[str, str]:
    response = http.post(
        "/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": STEPS, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"], response.headers["x-kairay-replica"]


@dataclass
class LiveApp:
    """The running app, whose Workspace is edited on top of the fixture's own."""

    served: KairayUp
    http: httpx.Client
    original: dict[str, Any]
    models: set[str]

    def apply(self, adapters: list[dict[str, Any]]) -> None:
        """The fixture's Workspace plus `adapters`, re-applied; waits until /v1/models lists them."""
        ws = copy.deepcopy(self.original)
        ws["inference"]["adapters"] = [*ws["inference"]["adapters"], *adapters]
        expect = self.models | {a["source"]["name"] for a in adapters}
        write(self.served, self.http, ws, expect)


def write(served: KairayUp, http: httpx.Client, ws: dict[str, Any], expect: set[str]) -> None:
    mark = len(served.output)
    served.write(ws)
    served.wait_for_line("re-applied", after=mark)
    deadline = time.monotonic() + 120
    ids: set[str] = set()
    while time.monotonic() < deadline:
        ids = {card["id"] for card in http.get("/v1/models").json()["data"]}
        if ids == expect:
            return
        time.sleep(0.5)
    raise AssertionError(f"/v1/models lists {sorted(ids)}, expected {sorted(expect)}")


@contextmanager
def edited(served: KairayUp) -> Iterator[LiveApp]:
    """The live app to edit, restored to the fixture's Workspace afterwards."""
    original = copy.deepcopy(served.workspace)
    with served.client() as http:
        models = {card["id"] for card in http.get("/v1/models").json()["data"]}
        try:
            yield LiveApp(served, http, original, models)
        finally:
            write(served, http, original, models)


def adapter(name: str, path: Path, strength: float) -> dict[str, Any]:
    return {
        "source": {"name": name, "volumeSource": {"hostPath": {"path": str(path)}}},
        "strength": str(strength),
    }


def test_half_strength_is_the_half_scaled_model(
    served: KairayUp, references: dict[tuple[str, float], Reference], lora_adapters: dict[str, Path]
) -> None:
    half, base, full = (references[("adapter-a", s)] for s in (0.5, 0.0, 1.0))
    # The prompt separates the three models, so matching `half` says the strength was applied.
    assert len({tuple(half.tokens), tuple(base.tokens), tuple(full.tokens)}) == 3
    with edited(served) as app:
        app.apply([adapter("half", lora_adapters["adapter-a"], 0.5)])
        text, _ = complete(app.http, "half")
        base_text, _ = complete(app.http, BASE)
    assert divergence(text, half) is None, f"{served.runtime}: {divergence(text, half)}"
    assert divergence(base_text, base) is None, f"{served.runtime}: {divergence(base_text, base)}"


def test_strength_source_and_removal_change_live(
    served: KairayUp, references: dict[tuple[str, float], Reference], lora_adapters: dict[str, Path]
) -> None:
    with edited(served) as app:
        http = app.http
        _, replica = complete(http, BASE)
        steps = [
            ("adapter-a", 1.0),  # added
            ("adapter-a", 0.5),  # same name, new strength
            ("adapter-b", 1.0),  # same name, new source
        ]
        for source, strength in steps:
            app.apply([adapter("live", lora_adapters[source], strength)])
            problem, answered_by = settled(http, "live", references[(source, strength)])
            assert problem is None, f"{served.runtime}, live = {source} at {strength}: {problem}"
            assert answered_by == replica, "the adapter change restarted the replica"
        app.apply([])
        gone = http.post("/v1/completions", json={"model": "live", "prompt": PROMPT, "max_tokens": 4})
        assert gone.status_code == 404, gone.text
        assert gone.json()["error"]["param"] == "model"
        _, answered_by = complete(http, BASE)
        assert answered_by == replica
