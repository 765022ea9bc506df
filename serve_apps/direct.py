"""The one-replica topology: the engine's replica answers HTTP itself.

With a single replica there is nothing to route, so the separate ingress would only add a hop (a
Ray call and a pickled request each way, plus a streamed item per token) and a process competing
with the engine for CPU. Here Serve's proxy calls the replica directly and the routes run next to
the engine, as in vLLM's own server.

Serve's proxy would answer an overload in plain text, so this replica admits requests itself and
refuses the excess with the same JSON error the ingress gives: up to ongoing + queued requests are
admitted (the engine's scheduler queues what it cannot run yet), and Serve's own limit sits just
above, leaving room for `/health` and `/metrics`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve

from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.errors import Overloaded
from serve_apps.llm_server import LLMServer
from serve_apps.protocol import AdapterState, Completion, EngineFacts, Kind, Stream, opened
from serve_apps.routes import Backend, build_routes


class _Admission:
    """Counts admitted generations; a stream holds its place until it ends or is dropped."""

    def __init__(self, capacity: int, refusal_status: int) -> None:
        self.capacity = capacity
        self.refusal_status = refusal_status
        self.admitted = 0

    def enter(self) -> None:
        if self.admitted >= self.capacity:
            raise Overloaded(http_status=self.refusal_status)
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1


class _Held:
    """An SSE line iterator that gives its admission back once, however the stream ends."""

    def __init__(self, lines: AsyncIterator[str], admission: _Admission) -> None:
        self._lines = lines
        self._admission: _Admission | None = admission

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> str:
        try:
            return await anext(self._lines)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._admission is not None:
            self._admission.leave()
            self._admission = None

    def __del__(self) -> None:
        # A response dropped before it was iterated (client gone) must not keep its place.
        self._release()


class _LocalBackend(Backend):
    def __init__(self, server: LLMServer) -> None:
        self.server = server
        self.config = server.config
        limits = server.config.limits
        self.admission = _Admission(
            limits.max_ongoing_requests + limits.max_queued_requests, limits.backpressure_status
        )

    def catalog(self) -> AdapterCatalog:
        return self.server.adapters.catalog

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        self.admission.enter()
        try:
            return await self.server.generate(kind, request, adapter)
        finally:
            self.admission.leave()

    async def stream(self, kind: Kind, request: Any, adapter: str) -> Stream:
        self.admission.enter()
        try:
            stream = await opened(self.server.stream(kind, request, adapter))
        except BaseException:
            self.admission.leave()
            raise
        return Stream(stream.headers, _Held(stream.lines, self.admission))

    async def adapter_states(self) -> Mapping[str, AdapterState]:
        return self.server.adapter_states()

    async def engine_facts(self) -> EngineFacts:
        return EngineFacts(self.server.max_model_len, self.server.dtype)

    async def engine_health(self) -> None:
        await self.server.engine_health()

    async def engine_metrics(self) -> str:
        return self.server.metrics_text()


@serve.ingress()
class DirectLLMServer(LLMServer):
    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_routes(_LocalBackend(self))
