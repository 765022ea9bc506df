"""Multi-LoRA on both engines: selection by name, strength, and changing adapters on a live app."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from harness.kairay_up import KairayUp

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


def _stream(http: httpx.Client, model: str) -> tuple[int, str]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        text = "".join(response.iter_text())
    return response.status_code, text


def test_more_adapters_in_flight_than_a_replica_holds(
    served: KairayUp, lora_adapters: dict[str, Path]
) -> None:
    """The replica keeps 4 adapters loaded; streams over 7 evict adapters other streams still use."""
    from concurrent.futures import ThreadPoolExecutor

    extra = [f"rotating-{i}" for i in range(5)]
    source = {"hostPath": {"path": str(lora_adapters["adapter-b"])}}
    ws = dict(served.workspace)
    inference = dict(ws["inference"])
    inference["adapters"] = [
        *inference["adapters"],
        *(
            {
                "source": {"name": name, "volumeSource": source},
                "strength": f"0.{i + 5}",
            }
            for i, name in enumerate(extra)
        ),
    ]
    ws["inference"] = inference
    mark = len(served.output)
    served.write(ws)
    served.wait_for_line("re-applied", after=mark)
    models = ["adapter-a", "adapter-zero", *extra]
    with served.client() as http:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if set(models) <= {card["id"] for card in http.get("/v1/models").json()["data"]}:
                break
            time.sleep(1)
        # Within the served app's 4 ongoing + 4 queued, so none is refused for load.
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda m: _stream(http, m), [*models, models[0]]))
    for (status, text), model in zip(results, [*models, models[0]], strict=True):
        assert status == 200, (model, text[-500:])
        assert text.rstrip().endswith("data: [DONE]"), (model, text[-500:])
        assert '"error"' not in text, (model, text[-500:])
