"""HTTP routes of a running Workspace: Kaito `/chat`, the OpenAI API, `/health`, `/metrics`.

The routes validate bodies (a client mistake is a JSON 4xx here, never a 500 from an engine), pick
the adapter from `model`, and hand the parsed request to a `Backend`: the engine in the same process
(one replica, `serve_apps.direct`) or the LLM deployment behind a handle (`serve_apps.ingress`).
Both topologies answer byte for byte the same. Whatever refuses a request raises a
`serve_apps.errors` error where it finds the problem; one exception handler here answers it in
OpenAI's error shape with the error's `http_status`.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
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
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import VLLMClientError

from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.config import AppConfig
from serve_apps.errors import BadRequest, EngineRefused, Overloaded, ServingError
from serve_apps.kaito_chat import KaitoChatRequest, to_openai
from serve_apps.protocol import AdapterState, Completion, EngineFacts, Kind, Stream


class Backend(abc.ABC):
    """What the routes need from whatever runs the engine."""

    config: AppConfig

    @abc.abstractmethod
    def catalog(self) -> AdapterCatalog:
        """The adapters a request may name now."""

    @abc.abstractmethod
    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion: ...

    @abc.abstractmethod
    async def stream(self, kind: Kind, request: Any, adapter: str) -> Stream:
        """Returns once the engine accepted the request (its refusal raises here, before any status)."""

    @abc.abstractmethod
    async def adapter_states(self) -> Mapping[str, AdapterState]: ...

    @abc.abstractmethod
    async def engine_facts(self) -> EngineFacts: ...

    @abc.abstractmethod
    async def engine_health(self) -> None: ...

    @abc.abstractmethod
    async def engine_metrics(self) -> str:
        """The engine's Prometheus text (vLLM's own metrics live in the engine's process)."""


def error_json(exc: ServingError) -> JSONResponse:
    """The HTTP answer to a refusal: OpenAI's error shape, the error's status and headers."""
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers or None)


def _invalid(exc: ValidationError | RequestValidationError) -> BadRequest:
    errors = exc.errors()
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(p) for p in first if p != "body") or None
    return BadRequest("; ".join(parts), param=param)


def _parse(model_cls: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    except VLLMClientError as exc:
        # vLLM's request models raise their own errors from some validators (a missing prompt):
        # answered as `vllm serve` answers them.
        raise EngineRefused.of(create_error_response(exc)) from exc


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


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

    @contextmanager
    def counting(self, route: str, model: str) -> Iterator[None]:
        """Count the request the block forwards by the status it gets: 200, or its refusal's."""
        try:
            yield
        except ServingError as exc:
            if isinstance(exc, Overloaded):
                self.rejected.inc()
            self.requests.labels(route, model, str(exc.http_status)).inc()
            raise
        self.requests.labels(route, model, "200").inc()


def build_routes(backend: Backend) -> FastAPI:
    """A FastAPI app answering the Workspace's HTTP contract through `backend`."""
    app = FastAPI(title="kairay", description="Kaito Workspace inference API served by Ray Serve")
    metrics = _Metrics()
    started = int(time.time())

    @app.exception_handler(ServingError)
    async def _on_refusal(_: Request, exc: ServingError) -> JSONResponse:
        return error_json(exc)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_json(_invalid(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(ServingError(str(exc.detail), http_status=exc.status_code))

    def base() -> str:
        return backend.config.model.name

    async def read(request: Request, model_cls: type[BaseModel]) -> tuple[Any, str]:
        """The body parsed as `model_cls` and the adapter its `model` names."""
        parsed = _parse(model_cls, await _json_body(request))
        return parsed, backend.catalog().resolve(parsed.model)

    async def complete(route: str, kind: Kind, parsed: Any, adapter: str) -> Completion:
        begun = time.monotonic()
        with metrics.counting(route, adapter or base()):
            completion = await backend.generate(kind, parsed, adapter)
        metrics.latency.labels(route).observe(time.monotonic() - begun)
        return completion

    async def forward(route: str, kind: Kind, parsed: Any, adapter: str) -> Response:
        if not getattr(parsed, "stream", False):
            completion = await complete(route, kind, parsed, adapter)
            return JSONResponse(completion.body, headers=completion.headers)
        begun = time.monotonic()
        with metrics.counting(route, adapter or base()):
            stream = await backend.stream(kind, parsed, adapter)
        metrics.ttft.labels(route).observe(time.monotonic() - begun)
        return StreamingResponse(stream.lines, media_type="text/event-stream", headers=stream.headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        parsed, adapter = await read(request, ChatCompletionRequest)
        return await forward("/v1/chat/completions", "chat", parsed, adapter)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        parsed, adapter = await read(request, CompletionRequest)
        return await forward("/v1/completions", "completions", parsed, adapter)

    @app.post("/chat")
    async def kaito_chat(request: Request) -> Response:
        kaito, adapter = await read(request, KaitoChatRequest)
        parsed = _parse(ChatCompletionRequest, to_openai(kaito, base()))
        completion = await complete("/chat", "chat", parsed, adapter)
        text = completion.body["choices"][0]["message"].get("content") or ""
        return JSONResponse({"Result": text}, headers=completion.headers)

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
        for name, adapter in sorted(backend.catalog().adapters.items()):
            state = states.get(name)
            if state is not None and state.ready:
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
        adapters = {name: asdict(state) for name, state in states.items()}
        return JSONResponse({"status": "ok", "model": base(), "dtype": facts.dtype, "adapters": adapters})

    @app.get("/metrics")
    async def prometheus() -> Response:
        text = generate_latest(metrics.registry).decode() + await backend.engine_metrics()
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)

    return app
