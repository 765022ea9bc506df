"""Multi-LoRA on both engines: selection by name, strength, and changing adapters on a live app."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.harness.kairay_up import KairayUp

pytestmark = pytest.mark.e2e

PROMPT = "The capital of France is"


def greedy(http: httpx.Client, model: str) -> tuple[str, str]:
    response = http.post(
        "/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"], response.headers["x-kairay-replica"]


def test_adapter_changes_output_and_strength_zero_is_base(served: KairayUp) -> None:
    with served.client() as http:
        base, _ = greedy(http, "smollm2-135m-instruct")
        adapted, _ = greedy(http, "adapter-a")
        zero, _ = greedy(http, "adapter-zero")
    assert adapted != base
    assert zero == base


def test_chat_route_selects_adapter(served: KairayUp) -> None:
    with served.client() as http:
        base = http.post(
            "/chat", json={"prompt": PROMPT, "generate_kwargs": {"do_sample": False, "max_length": 16}}
        )
        adapted = http.post(
            "/chat",
            json={
                "prompt": PROMPT,
                "model": "adapter-a",
                "generate_kwargs": {"do_sample": False, "max_length": 16},
            },
        )
    assert base.status_code == adapted.status_code == 200
    assert base.json()["Result"] != adapted.json()["Result"]


def test_adding_an_adapter_to_a_live_app(served: KairayUp, lora_adapters: dict[str, Path]) -> None:
    with served.client() as http:
        _, replica_before = greedy(http, "smollm2-135m-instruct")
        ws = dict(served.workspace)
        inference = dict(ws["inference"])
        inference["adapters"] = [
            *inference["adapters"],
            {
                "source": {
                    "name": "adapter-b",
                    "volumeSource": {"hostPath": {"path": str(lora_adapters["adapter-b"])}},
                },
                "strength": "1.0",
            },
        ]
        ws["inference"] = inference
        mark = len(served.output)
        served.write(ws)
        served.wait_for_line("re-applied", after=mark)
        deadline = time.monotonic() + 120
        ids: list[str] = []
        while time.monotonic() < deadline:
            ids = [card["id"] for card in http.get("/v1/models").json()["data"]]
            if "adapter-b" in ids:
                break
            time.sleep(1)
        assert "adapter-b" in ids
        b_text, replica_after = greedy(http, "adapter-b")
        base_text, _ = greedy(http, "smollm2-135m-instruct")
    # Same replica: the engine took the new adapter without a restart.
    assert replica_after == replica_before
    assert b_text != base_text
