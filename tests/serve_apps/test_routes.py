"""The HTTP contract of `serve_apps.routes` against a fake `Backend`: no Ray, no engine.

The end-to-end tests (test_http_api.py and others) run the same contract on the real engines; these
pin down what the routes themselves own: parsing, adapter resolution, the OpenAI error shape and its
statuses, SSE framing, and the Kaito `/chat` translation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.config import AdapterConfig, AppConfig, Limits, ModelSource
from serve_apps.errors import EngineRefused, ModelNotFound, Overloaded, ServingError, error_response
from serve_apps.kaito_chat import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TOP_K
from serve_apps.protocol import AdapterState, Completion, EngineFacts, Kind, Stream
from serve_apps.routes import Backend, build_routes

BASE = "smollm2-135m-instruct"
REPLICA = {"x-kairay-replica": "replica-1"}
ADAPTERS = (
    AdapterConfig(name="adapter-a", path="/adapters/a"),
    AdapterConfig(name="adapter-img", image="registry.test/adapters/img:1"),
    AdapterConfig(name="broken", path="/adapters/broken"),
)
STATES = {
    "adapter-a": AdapterState("adapter-a", True, "Ready"),
    "adapter-img": AdapterState("adapter-img", True, "Ready"),
    "broken": AdapterState("broken", False, "AdapterInvalid", "/adapters/broken has no adapter_config.json"),
}
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


class FakeBackend(Backend):
    """Answers every request with fixed text; records what the routes handed it."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.config = AppConfig(
            name="ws", model=ModelSource(name=BASE, preset=BASE), limits=limits or Limits()
        )
        self.adapters = AdapterCatalog.of(BASE, ADAPTERS)
        self.calls: list[tuple[Kind, Any, str]] = []
        self.refusal: ServingError | None = None
        self.unhealthy: Exception | None = None
        self.lines = ['data: {"n": 1}\n\n', 'data: {"n": 2}\n\n', "data: [DONE]\n\n"]

    def catalog(self) -> AdapterCatalog:
        return self.adapters

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        self.calls.append((kind, request, adapter))
        if self.refusal is not None:
            raise self.refusal
        if kind == "chat":
            message = {"role": "assistant", "content": "Paris."}
            body = {"object": "chat.completion", "model": request.model, "choices": [{"message": message}]}
        else:
            body = {"object": "text_completion", "model": request.model, "choices": [{"text": " Paris"}]}
        return Completion(body, dict(REPLICA))

    async def stream(self, kind: Kind, request: Any, adapter: str) -> Stream:
        self.calls.append((kind, request, adapter))
        if self.refusal is not None:
            raise self.refusal

        async def lines() -> AsyncIterator[str]:
            for line in self.lines:
                yield line

        return Stream(dict(REPLICA), lines())

    async def adapter_states(self) -> Mapping[str, AdapterState]:
        if self.unhealthy is not None:
            raise self.unhealthy
        return STATES

    async def engine_facts(self) -> EngineFacts:
        return EngineFacts(max_model_len=2048, dtype="float32")

    async def engine_health(self) -> None:
        if self.unhealthy is not None:
            raise self.unhealthy

    async def engine_metrics(self) -> str:
        return "vllm_engine_up 1\n"


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def http(backend: FakeBackend) -> Iterator[TestClient]:
    with TestClient(build_routes(backend)) as client:
        yield client


def assert_openai_error(response: Any, status: int, needle: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert needle in error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


# ---- /chat ----------------------------------------------------------------------------------------


def test_chat_prompt_is_one_user_turn_with_kaito_defaults(http: TestClient, backend: FakeBackend) -> None:
    response = http.post("/chat", json={"prompt": "What is the capital of France?"})
    assert response.status_code == 200, response.text
    assert response.json() == {"Result": "Paris."}
    assert response.headers["x-kairay-replica"] == "replica-1"
    [(kind, request, adapter)] = backend.calls
    assert (kind, adapter) == ("chat", "")
    assert isinstance(request, ChatCompletionRequest)
    assert request.model == BASE
    assert request.messages == CHAT
    assert request.max_tokens == DEFAULT_MAX_NEW_TOKENS
    assert request.top_k == DEFAULT_TOP_K


def test_chat_messages_and_generate_kwargs(http: TestClient, backend: FakeBackend) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *CHAT]
    body = {
        "messages": messages,
        "generate_kwargs": {"max_length": 24, "temperature": 0.7, "do_sample": False},
    }
    response = http.post("/chat", json=body)
    assert response.status_code == 200, response.text
    request = backend.calls[0][1]
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert request.max_tokens == 24
    # do_sample=False is greedy whatever the temperature says.
    assert request.temperature == 0.0


def test_chat_model_selects_the_adapter(http: TestClient, backend: FakeBackend) -> None:
    response = http.post("/chat", json={"prompt": "hi", "model": "adapter-a"})
    assert response.status_code == 200, response.text
    assert backend.calls[0][2] == "adapter-a"
    assert backend.calls[0][1].model == "adapter-a"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "hi", "messages": CHAT}, "exactly one"),
        ({"prompt": "hi", "generate_kwargs": {"max_length": "long"}}, "max_length"),
        ({"prompt": "hi", "generate_kwargs": {"bogus": 1}}, "bogus"),
    ],
)
def test_chat_bad_bodies_are_400(
    http: TestClient, backend: FakeBackend, body: dict[str, Any], needle: str
) -> None:
    assert_openai_error(http.post("/chat", json=body), 400, needle)
    assert not backend.calls


def test_chat_passes_an_engine_refusal_on(http: TestClient, backend: FakeBackend) -> None:
    backend.refusal = EngineRefused.of(error_response("max_tokens is too large", param="max_tokens"))
    response = http.post("/chat", json={"prompt": "hi"})
    assert_openai_error(response, 400, "max_tokens is too large", param="max_tokens")


# ---- OpenAI routes --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [BASE, None])
def test_chat_completions_on_the_base_model(
    http: TestClient, backend: FakeBackend, model: str | None
) -> None:
    body: dict[str, Any] = {"messages": CHAT, "max_tokens": 12}
    if model is not None:
        body["model"] = model
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert response.headers["x-kairay-replica"] == "replica-1"
    kind, request, adapter = backend.calls[0]
    assert (kind, adapter) == ("chat", "")
    assert isinstance(request, ChatCompletionRequest)
    assert request.max_tokens == 12


def test_completions_with_an_adapter(http: TestClient, backend: FakeBackend) -> None:
    response = http.post(
        "/v1/completions", json={"model": "adapter-img", "prompt": "The capital of France is"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == " Paris"
    kind, request, adapter = backend.calls[0]
    assert (kind, adapter) == ("completions", "adapter-img")
    assert isinstance(request, CompletionRequest)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "The capital of France is", "stream": True}),
        ("/v1/chat/completions", {"messages": CHAT, "stream": True}),
    ],
)
def test_streams_are_sse(http: TestClient, backend: FakeBackend, path: str, body: dict[str, Any]) -> None:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-kairay-replica"] == "replica-1"
        text = "".join(response.iter_text())
    assert text == "".join(backend.lines)
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["n"] for e in events[:-1]] == [1, 2]


def test_a_stream_refused_before_its_first_token_is_a_json_error(
    http: TestClient, backend: FakeBackend
) -> None:
    backend.refusal = EngineRefused.of(error_response("prompt too long", param="input_tokens"))
    response = http.post("/v1/completions", json={"prompt": "hi", "stream": True})
    assert_openai_error(response, 400, "prompt too long", param="input_tokens")


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/chat/completions", {"messages": "hello"}, "messages"),
        ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {}, "prompt"),
    ],
)
def test_openai_bad_bodies_are_400(
    http: TestClient, backend: FakeBackend, path: str, body: dict[str, Any], needle: str
) -> None:
    error = assert_openai_error(http.post(path, json=body), 400, needle)
    assert error["type"] == "BadRequestError"
    assert not backend.calls


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat", {"prompt": "hi", "model": "no-such-adapter"}),
        ("/v1/chat/completions", {"model": "no-such-adapter", "messages": CHAT}),
        ("/v1/completions", {"model": "no-such-adapter", "prompt": "hi"}),
    ],
)
def test_unknown_model_is_404_naming_the_known_ones(
    http: TestClient, backend: FakeBackend, path: str, body: dict[str, Any]
) -> None:
    error = assert_openai_error(http.post(path, json=body), 404, "no-such-adapter", param="model")
    assert error["type"] == "NotFoundError"
    assert f"Known models: {BASE}, adapter-a, adapter-img, broken." in error["message"]
    assert not backend.calls


def test_an_adapter_the_replica_cannot_serve_is_404(http: TestClient, backend: FakeBackend) -> None:
    backend.refusal = ModelNotFound(
        "The model `broken` does not exist (AdapterInvalid: no weights).", param="model", headers=REPLICA
    )
    response = http.post("/v1/completions", json={"model": "broken", "prompt": "hi"})
    assert_openai_error(response, 404, "AdapterInvalid", param="model")
    assert response.headers["x-kairay-replica"] == "replica-1"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]"])
@pytest.mark.parametrize("path", ["/chat", "/v1/chat/completions", "/v1/completions"])
def test_bodies_that_are_not_a_json_object_are_400(http: TestClient, path: str, content: bytes) -> None:
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "JSON")


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("stream", [False, True])
def test_overload_is_a_json_refusal_with_retry_after(status: Literal[429, 503], stream: bool) -> None:
    backend = FakeBackend(Limits(backpressure_status=status))
    backend.refusal = Overloaded(http_status=backend.config.limits.backpressure_status)
    with TestClient(build_routes(backend)) as http:
        response = http.post("/v1/completions", json={"prompt": "hi", "stream": stream})
        metrics = http.get("/metrics").text
    error = assert_openai_error(response, status, "overloaded")
    assert error["type"] == ("RateLimitError" if status == 429 else "ServiceUnavailableError")
    assert response.headers["retry-after"] == "1"
    assert "kairay_backpressure_rejections_total 1.0" in metrics
    assert f'kairay_requests_total{{code="{status}",model="{BASE}",route="/v1/completions"}} 1.0' in metrics


def test_unknown_routes_and_methods_answer_in_the_same_shape(http: TestClient) -> None:
    assert_openai_error(http.get("/v2/nothing"), 404, "Not Found")
    assert_openai_error(http.get("/chat"), 405, "Method Not Allowed")


# ---- models, health, metrics ----------------------------------------------------------------------


def test_models_lists_the_base_and_the_ready_adapters(http: TestClient) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200
    cards = {card["id"]: card for card in response.json()["data"]}
    assert list(cards) == [BASE, "adapter-a", "adapter-img"]
    assert cards[BASE]["parent"] is None
    assert cards[BASE]["root"] == BASE
    assert cards[BASE]["max_model_len"] == 2048
    assert cards[BASE]["dtype"] == "float32"
    assert cards["adapter-a"]["parent"] == BASE
    assert cards["adapter-a"]["root"] == "/adapters/a"
    assert cards["adapter-img"]["root"] == "registry.test/adapters/img:1"


def test_health_reports_every_adapter(http: TestClient) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": BASE,
        "dtype": "float32",
        "adapters": {
            "adapter-a": {"name": "adapter-a", "ready": True, "reason": "Ready", "message": ""},
            "adapter-img": {"name": "adapter-img", "ready": True, "reason": "Ready", "message": ""},
            "broken": {
                "name": "broken",
                "ready": False,
                "reason": "AdapterInvalid",
                "message": "/adapters/broken has no adapter_config.json",
            },
        },
    }


def test_health_is_503_while_the_engine_cannot_serve(http: TestClient, backend: FakeBackend) -> None:
    backend.unhealthy = RuntimeError("engine dead")
    response = http.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "message": "engine dead"}


def test_metrics_count_requests_and_append_the_engines(http: TestClient) -> None:
    http.post("/v1/completions", json={"prompt": "hi"})
    http.post("/v1/completions", json={"prompt": "hi", "stream": True})
    text = http.get("/metrics").text
    assert f'kairay_requests_total{{code="200",model="{BASE}",route="/v1/completions"}} 2.0' in text
    assert 'kairay_request_seconds_count{route="/v1/completions"} 1.0' in text
    assert 'kairay_time_to_first_chunk_seconds_count{route="/v1/completions"} 1.0' in text
    assert text.endswith("vllm_engine_up 1\n")
