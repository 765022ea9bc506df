"""HTTP routes of a running Workspace: Kaito `/chat`, the OpenAI API, `/health`, `/metrics`.

The routes validate bodies (a client mistake is a JSON 4xx here, never a 500 from an engine), pick
the adapter from `model`, and hand the parsed request to a `Backend`: the engine in the same process
(one replica, `serve_apps.direct`) or the LLM deployment behind a handle (`serve_apps.ingress`).
Both topologies answer byte for byte the same.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList

from serve_apps.config import AdapterConfig, AppConfig
from serve_apps.kaito_chat import KaitoChatRequest, to_openai
from serve_apps.protocol import EngineFacts, error_response

Kind = str  # "chat" | "completions"
# (status, JSON body, headers) of a whole answer.
Answer = tuple[int, dict[str, Any], dict[str, str]]
# A streamed answer opens with (status, error body or None, headers, first SSE lines), then lines.
StreamHead = tuple[int, dict[str, Any] | None, dict[str, str], list[str]]


class Overloaded(Exception):
    """Raised by a backend that refuses a request because it is full."""


class Backend(abc.ABC):
    """What the routes need from whatever runs the engine."""

    config: AppConfig
    adapters: Mapping[str, AdapterConfig]

    @abc.abstractmethod
    async def generate(self, kind: Kind, request: Any, adapter: str) -> Answer: ...

    @abc.abstractmethod
    async def stream(self, kind: Kind, request: Any, adapter: str) -> tuple[StreamHead, AsyncIterator[str]]:
        """The head (with the first lines, so the first token leaves with the headers) and the rest."""

    @abc.abstractmethod
    async def adapter_states(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    async def engine_facts(self) -> EngineFacts: ...

    @abc.abstractmethod
    async def engine_health(self) -> None: ...

    @abc.abstractmethod
    async def engine_metrics(self) -> str:
        """The engine's Prometheus text (vLLM's own metrics live in the engine's process)."""


def _error(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = error_response(message, HTTPStatus(status), param=param).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(p) for p in first if p != "body") or None
    return "; ".join(parts), param


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kairay_requests",
            "HTTP requests by route, model and status",
            ["route", "model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kairay_request_seconds",
            "Time to the full answer (non-streaming) by route",
            ["route"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "kairay_time_to_first_chunk_seconds",
            "Streaming: time to the first SSE chunk",
            ["route"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "kairay_backpressure_rejections", "Requests refused under overload", registry=self.registry
        )


def build_routes(backend: Backend) -> FastAPI:
    """A FastAPI app answering the Workspace's HTTP contract through `backend`."""
    app = FastAPI(title="kairay", description="Kaito Workspace inference API served by Ray Serve")
    metrics = _Metrics()
    started = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def base() -> str:
        return backend.config.model.name

    async def json_body(request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        return body

    def adapter_for(model: str | None) -> str | JSONResponse:
        """'' for the base model, the adapter name, or a 404 naming the known models."""
        if model is None or model == base():
            return ""
        if model in backend.adapters:
            return model
        known = ", ".join([base(), *sorted(backend.adapters)])
        return _error(404, f"The model `{model}` does not exist. Known models: {known}.", "model")

    def parse(model_cls: type[BaseModel], body: dict[str, Any]) -> Any:
        try:
            return model_cls.model_validate(body)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return _error(400, message, param)

    def overloaded(route: str, model: str) -> JSONResponse:
        metrics.rejected.inc()
        status = backend.config.limits.backpressure_status
        metrics.requests.labels(route, model, str(status)).inc()
        return _error(status, "the server is overloaded; retry later", headers={"Retry-After": "1"})

    async def forward(route: str, kind: Kind, parsed: Any, adapter: str) -> Response:
        model = adapter or base()
        begun = time.monotonic()
        try:
            if getattr(parsed, "stream", False):
                return await forward_stream(route, kind, parsed, adapter, model, begun)
            status, body, headers = await backend.generate(kind, parsed, adapter)
        except Overloaded:
            return overloaded(route, model)
        metrics.requests.labels(route, model, str(status)).inc()
        metrics.latency.labels(route).observe(time.monotonic() - begun)
        return JSONResponse(body, status_code=status, headers=headers)

    async def forward_stream(
        route: str, kind: Kind, parsed: Any, adapter: str, model: str, begun: float
    ) -> Response:
        (status, body, headers, first), rest = await backend.stream(kind, parsed, adapter)
        metrics.requests.labels(route, model, str(status)).inc()
        if body is not None:
            return JSONResponse(body, status_code=status, headers=headers)
        metrics.ttft.labels(route).observe(time.monotonic() - begun)

        async def lines() -> AsyncIterator[str]:
            for line in first:
                yield line
            async for line in rest:
                yield line

        return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)

    async def read(request: Request, model_cls: type[BaseModel]) -> tuple[Any, str] | JSONResponse:
        """The body parsed as `model_cls` and the adapter its `model` names, or the 4xx to answer."""
        body = await json_body(request)
        if isinstance(body, JSONResponse):
            return body
        parsed = parse(model_cls, body)
        if isinstance(parsed, JSONResponse):
            return parsed
        adapter = adapter_for(parsed.model)
        if isinstance(adapter, JSONResponse):
            return adapter
        return parsed, adapter

    async def openai(request: Request, model_cls: type[BaseModel], route: str, kind: Kind) -> Response:
        read_in = await read(request, model_cls)
        if isinstance(read_in, JSONResponse):
            return read_in
        parsed, adapter = read_in
        return await forward(route, kind, parsed, adapter)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await openai(request, ChatCompletionRequest, "/v1/chat/completions", "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await openai(request, CompletionRequest, "/v1/completions", "completions")

    @app.post("/chat")
    async def kaito_chat(request: Request) -> Response:
        read_in = await read(request, KaitoChatRequest)
        if isinstance(read_in, JSONResponse):
            return read_in
        kaito, adapter = read_in
        parsed = parse(ChatCompletionRequest, to_openai(kaito, base()))
        if isinstance(parsed, JSONResponse):
            return parsed
        response = await forward("/chat", "chat", parsed, adapter)
        if response.status_code != 200 or not isinstance(response, JSONResponse):
            return response
        answer = json.loads(bytes(response.body))
        text = answer["choices"][0]["message"].get("content") or ""
        return JSONResponse(
            {"Result": text}, headers={k: v for k, v in response.headers.items() if k.startswith("x-")}
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        states = await backend.adapter_states()
        facts = await backend.engine_facts()
        # `dtype` is an extra field (ModelCard allows them): what the engine serves the base in.
        cards = [
            ModelCard.model_validate(
                {
                    "id": base(),
                    "root": backend.config.model.preset,
                    "owned_by": "kairay",
                    "created": started,
                    "max_model_len": facts.max_model_len,
                    "dtype": facts.dtype,
                }
            )
        ]
        for name, adapter in sorted(backend.adapters.items()):
            if states.get(name, {}).get("ready"):
                cards.append(
                    ModelCard(
                        id=name,
                        root=adapter.image or adapter.path,
                        parent=base(),
                        owned_by="kairay",
                        created=started,
                    )
                )
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            await backend.engine_health()
            states = await backend.adapter_states()
            facts = await backend.engine_facts()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "message": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "model": base(), "dtype": facts.dtype, "adapters": states})

    @app.get("/metrics")
    async def prometheus() -> Response:
        text = generate_latest(metrics.registry).decode() + await backend.engine_metrics()
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)

    return app
