"""HTTP routes of a running Workspace: Kaito `/chat`, the OpenAI API, `/health`, `/metrics`.

The ingress validates bodies (a client mistake is a JSON 4xx here, never a 500 from an engine),
picks the adapter from `model`, and forwards to the LLM deployment with the adapter as Serve's
multiplexed model id. It holds no engine and reserves no CPU.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList

from serve_apps.config import AdaptersConfig, AppConfig
from serve_apps.kaito_chat import KaitoChatRequest, to_openai
from serve_apps.protocol import error_response

logger = logging.getLogger("ray.serve")

app = FastAPI(title="kairay", description="Kaito Workspace inference API served by Ray Serve")

_REGISTRY = CollectorRegistry()
_REQUESTS = Counter(
    "kairay_requests",
    "HTTP requests by route, model and status",
    ["route", "model", "code"],
    registry=_REGISTRY,
)
_LATENCY = Histogram(
    "kairay_request_seconds",
    "Time to the full answer (non-streaming) by route",
    ["route"],
    registry=_REGISTRY,
)
_TTFT = Histogram(
    "kairay_time_to_first_chunk_seconds",
    "Streaming: time to the first SSE chunk",
    ["route"],
    registry=_REGISTRY,
)
_REJECTED = Counter("kairay_backpressure_rejections", "Requests refused under overload", registry=_REGISTRY)


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


@app.exception_handler(RequestValidationError)
async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    return _error(400, message, param)


@app.exception_handler(StarletteHTTPException)
async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


@serve.ingress(app)
class Ingress:
    def __init__(self, config: dict[str, Any], llm: DeploymentHandle) -> None:
        self.config = AppConfig.model_validate(config)
        self.llm = llm
        self.base = self.config.model.name
        self.adapters = {a.name: a for a in self.config.adapters}
        self.started = int(time.time())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.adapters = {a.name: a for a in AdaptersConfig.model_validate(user_config or {}).adapters}

    # ---- helpers --------------------------------------------------------------------------------

    async def _json_body(self, request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        return body

    def _adapter_for(self, model: str | None) -> str | JSONResponse:
        """'' for the base model, the adapter name, or a 404 naming the known models."""
        if model is None or model == self.base:
            return ""
        if model in self.adapters:
            return model
        known = ", ".join([self.base, *sorted(self.adapters)])
        return _error(404, f"The model `{model}` does not exist. Known models: {known}.", "model")

    def _parse(self, model_cls: type[BaseModel], body: dict[str, Any]) -> Any:
        try:
            return model_cls.model_validate(body)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            return _error(400, message, param)

    async def _forward(self, route: str, kind: str, parsed: Any, adapter: str) -> Response:
        model_label = adapter or self.base
        handle = self.llm.options(multiplexed_model_id=adapter)
        started = time.monotonic()
        try:
            if getattr(parsed, "stream", False):
                return await self._forward_stream(route, kind, parsed, handle, model_label, started)
            status, body, headers = await handle.handle.remote(kind, parsed)
        except BackPressureError:
            return self._overloaded(route, model_label)
        _REQUESTS.labels(route, model_label, str(status)).inc()
        _LATENCY.labels(route).observe(time.monotonic() - started)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _forward_stream(
        self, route: str, kind: str, parsed: Any, handle: DeploymentHandle, model: str, started: float
    ) -> Response:
        stream: DeploymentResponseGenerator[Any] = handle.options(stream=True).handle_stream.remote(  # type: ignore[assignment]
            kind, parsed
        )
        try:
            status, body, headers = await stream.__anext__()
        except BackPressureError:
            stream.cancel()
            return self._overloaded(route, model)
        _REQUESTS.labels(route, model, str(status)).inc()
        if body is not None:
            return JSONResponse(body, status_code=status, headers=headers)

        async def lines() -> AsyncIterator[str]:
            first = True
            async for line in stream:
                if first:
                    _TTFT.labels(route).observe(time.monotonic() - started)
                    first = False
                yield line

        return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)

    def _overloaded(self, route: str, model: str) -> JSONResponse:
        _REJECTED.inc()
        status = self.config.limits.backpressure_status
        _REQUESTS.labels(route, model, str(status)).inc()
        return _error(status, "the server is overloaded; retry later", headers={"Retry-After": "1"})

    # ---- routes ---------------------------------------------------------------------------------

    async def _openai(self, request: Request, model_cls: type[BaseModel], route: str, kind: str) -> Response:
        body = await self._json_body(request)
        if isinstance(body, JSONResponse):
            return body
        parsed = self._parse(model_cls, body)
        if isinstance(parsed, JSONResponse):
            return parsed
        adapter = self._adapter_for(parsed.model)
        if isinstance(adapter, JSONResponse):
            return adapter
        return await self._forward(route, kind, parsed, adapter)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._openai(request, ChatCompletionRequest, "/v1/chat/completions", "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._openai(request, CompletionRequest, "/v1/completions", "completions")

    @app.post("/chat")
    async def kaito_chat(self, request: Request) -> Response:
        body = await self._json_body(request)
        if isinstance(body, JSONResponse):
            return body
        kaito = self._parse(KaitoChatRequest, body)
        if isinstance(kaito, JSONResponse):
            return kaito
        adapter = self._adapter_for(kaito.model)
        if isinstance(adapter, JSONResponse):
            return adapter
        parsed = self._parse(ChatCompletionRequest, to_openai(kaito, self.base))
        if isinstance(parsed, JSONResponse):
            return parsed
        response = await self._forward("/chat", "chat", parsed, adapter)
        if response.status_code != 200 or not isinstance(response, JSONResponse):
            return response
        answer = json.loads(bytes(response.body))
        text = answer["choices"][0]["message"].get("content") or ""
        return JSONResponse(
            {"Result": text}, headers={k: v for k, v in response.headers.items() if k.startswith("x-")}
        )

    @app.get("/v1/models")
    async def models(self) -> JSONResponse:
        states = await self.llm.adapter_states.remote()
        info = await self.llm.replica_info.remote()
        cards = [
            ModelCard(
                id=self.base,
                root=self.config.model.preset,
                owned_by="kairay",
                created=self.started,
                max_model_len=info.get("max_model_len"),
            )
        ]
        for name, adapter in sorted(self.adapters.items()):
            if states.get(name, {}).get("ready"):
                cards.append(
                    ModelCard(
                        id=name,
                        root=adapter.image or adapter.path,
                        parent=self.base,
                        owned_by="kairay",
                        created=self.started,
                    )
                )
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health(self) -> JSONResponse:
        try:
            await self.llm.engine_health.remote()
            states = await self.llm.adapter_states.remote()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "message": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.base, "adapters": states})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        engine = await self.llm.metrics_text.remote()
        text = generate_latest(_REGISTRY).decode() + engine
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)
