"""The ingress of a multi-replica app: HTTP in front of the LLM deployment's replicas.

It answers the routes of `serve_apps.routes` and forwards each request through a handle with the
adapter as Serve's multiplexed model id, so Serve routes it to a replica that already holds the
adapter. It holds no engine and reserves no CPU. One-replica apps skip it (`serve_apps.direct`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_apps.config import AdapterConfig, AdaptersConfig, AppConfig
from serve_apps.protocol import EngineFacts
from serve_apps.routes import Answer, Backend, Kind, Overloaded, StreamHead, build_routes


@serve.ingress()
class Ingress(Backend):
    def __init__(self, config: dict[str, Any], llm: DeploymentHandle) -> None:
        self.config = AppConfig.model_validate(config)
        self.llm = llm
        self.adapters: Mapping[str, AdapterConfig] = {a.name: a for a in self.config.adapters}

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_routes(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.adapters = {a.name: a for a in AdaptersConfig.model_validate(user_config or {}).adapters}

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Answer:
        try:
            answer: Answer = await self.llm.options(multiplexed_model_id=adapter).handle.remote(kind, request)
        except BackPressureError as exc:
            raise Overloaded from exc
        return answer

    async def stream(self, kind: Kind, request: Any, adapter: str) -> tuple[StreamHead, AsyncIterator[str]]:
        handle = self.llm.options(multiplexed_model_id=adapter, stream=True)
        lines: DeploymentResponseGenerator[Any] = handle.handle_stream.remote(kind, request)  # type: ignore[assignment]
        try:
            head: StreamHead = await lines.__anext__()
        except BackPressureError as exc:
            lines.cancel()
            raise Overloaded from exc
        return head, lines

    async def adapter_states(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = await self.llm.adapter_states.remote()
        return states

    async def engine_facts(self) -> EngineFacts:
        info: dict[str, Any] = await self.llm.replica_info.remote()
        return EngineFacts(info.get("max_model_len"), info.get("dtype"))

    async def engine_health(self) -> None:
        await self.llm.engine_health.remote()

    async def engine_metrics(self) -> str:
        text: str = await self.llm.metrics_text.remote()
        return text
