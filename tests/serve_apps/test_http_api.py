"""The HTTP contract of a running Workspace, through `kairay up`, on both engines."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from harness.kairay_up import KairayUp

pytestmark = pytest.mark.e2e

BASE = "smollm2-135m-instruct"


def sse_events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body strictly: only `data:` lines and blank separators, ending in [DONE]."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[Any] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events and events[-1] == "[DONE]", "stream must end with data: [DONE]"
    assert "[DONE]" not in events[:-1]
    return events[:-1]


def test_chat_with_prompt(served: KairayUp) -> None:
    with served.client() as http:
        sampled = http.post("/chat", json={"prompt": "What is the capital of France?"})
        greedy = http.post(
            "/chat",
            json={
                "prompt": "What is the capital of France?",
                "generate_kwargs": {"do_sample": False, "max_length": 32},
            },
        )
    assert sampled.status_code == 200, sampled.text
    assert isinstance(sampled.json()["Result"], str) and sampled.json()["Result"].strip()
    assert greedy.status_code == 200, greedy.text
    assert "Paris" in greedy.json()["Result"]


def test_chat_with_messages_and_generate_kwargs(served: KairayUp) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "generate_kwargs": {"max_length": 24, "temperature": 0.0, "do_sample": False},
    }
    with served.client() as http:
        response = http.post("/chat", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["Result"].strip()


def test_chat_completions(served: KairayUp) -> None:
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 12,
        "temperature": 0,
    }
    with served.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == BASE
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] <= 12


def test_chat_completions_stream(served: KairayUp) -> None:
    body = {"messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 16, "stream": True}
    with served.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text.strip()
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions(served: KairayUp) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    with served.client() as http:
        response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "text_completion"
    assert "Paris" in answer["choices"][0]["text"]


def test_completions_stream(served: KairayUp) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stream": True}
    with served.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert all(e["object"] == "text_completion" for e in events)
    assert "Paris" in "".join(e["choices"][0]["text"] for e in events if e["choices"])


def test_models_lists_base_and_adapters(served: KairayUp) -> None:
    with served.client() as http:
        response = http.get("/v1/models")
    assert response.status_code == 200
    cards = {card["id"]: card for card in response.json()["data"]}
    assert cards[BASE]["parent"] is None
    assert cards[BASE]["max_model_len"] == 2048
    assert cards[BASE]["dtype"] == "float32"
    assert cards["adapter-a"]["parent"] == BASE
    assert cards["adapter-zero"]["parent"] == BASE


def test_openai_client(served: KairayUp) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    assert BASE in [m.id for m in client.models.list()]
    chat = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert chat.choices[0].message.content
    stream = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces).strip()


def test_health_and_metrics(served: KairayUp) -> None:
    with served.client() as http:
        health = http.get("/health")
        metrics = http.get("/metrics")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["dtype"] == "float32"
    assert health.json()["adapters"]["adapter-a"]["ready"] is True
    assert metrics.status_code == 200
    assert "kairay_requests_total" in metrics.text


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/chat", {}, 400, "prompt"),
        ("/chat", {"prompt": 42}, 400, "prompt"),
        ("/chat", {"prompt": "hi", "generate_kwargs": {"max_length": "long"}}, 400, "max_length"),
        ("/chat", {"prompt": "hi", "generate_kwargs": {"bogus": 1}}, 400, "bogus"),
        ("/chat", {"prompt": "hi", "model": "no-such-adapter"}, 404, "no-such-adapter"),
        ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "nope",
        ),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ],
)
def test_bad_bodies_get_json_4xx(
    served: KairayUp, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    with served.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert needle in error["message"]


def test_invalid_json_is_400(served: KairayUp) -> None:
    with served.client() as http:
        response = http.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
