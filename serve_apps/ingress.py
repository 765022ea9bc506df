"""The ingress of a multi-replica app: HTTP in front of the LLM deployment's replicas.

It answers the routes of `serve_apps.routes` and forwards each request through a handle with the
adapter as Serve's multiplexed model id, so Serve routes it to a replica that already holds the
adapter. It holds no engine and reserves no CPU. One-replica apps skip it (`serve_apps.direct`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.config import AdaptersConfig, AppConfig
from serve_apps.errors import Overloaded, ServingError
from serve_apps.protocol import AdapterState, Completion, EngineFacts, Kind, Stream, opened
from serve_apps.routes import Backend, build_routes


@contextmanager
def replica_refusals(overload_status: int) -> Iterator[None]:
    """A full LLM deployment, or a replica's refusal unwrapped from Ray's task error, raised as ours.

    Ray re-raises a replica's exception as a `RayTaskError` that also subclasses the exception's
    class but not its attributes (a per-request status, headers); the original is its `cause`.
    """
    try:
        yield
    except BackPressureError as exc:
        raise Overloaded(http_status=overload_status) from exc
    except RayTaskError as exc:
        if isinstance(exc.cause, ServingError):
            raise exc.cause from None
        raise


@serve.ingress()
class Ingress(Backend):
    def __init__(self, config: dict[str, Any], llm: DeploymentHandle) -> None:
        self.config = AppConfig.model_validate(config)
        self.llm = llm
        self.adapters = AdapterCatalog.of(self.config.model.name, self.config.adapters)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_routes(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        adapters = AdaptersConfig.model_validate(user_config or {}).adapters
        self.adapters = AdapterCatalog.of(self.config.model.name, adapters)

    def catalog(self) -> AdapterCatalog:
        return self.adapters

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        handle = self.llm.options(multiplexed_model_id=adapter)
        with replica_refusals(self.config.limits.backpressure_status):
            completion: Completion = await handle.generate.remote(kind, request, adapter)
        return completion

    async def stream(self, kind: Kind, request: Any, adapter: str) -> Stream:
        handle = self.llm.options(multiplexed_model_id=adapter, stream=True)
        items: DeploymentResponseGenerator[Any] = handle.stream.remote(kind, request, adapter)  # type: ignore[assignment]
        try:
            with replica_refusals(self.config.limits.backpressure_status):
                return await opened(items)
        except BaseException:
            items.cancel()
            raise

    async def adapter_states(self) -> Mapping[str, AdapterState]:
        states: Mapping[str, AdapterState] = await self.llm.adapter_states.remote()
        return states

    async def engine_facts(self) -> EngineFacts:
        info: dict[str, Any] = await self.llm.replica_info.remote()
        return EngineFacts(info.get("max_model_len"), info.get("dtype"))

    async def engine_health(self) -> None:
        await self.llm.engine_health.remote()

    async def engine_metrics(self) -> str:
        text: str = await self.llm.metrics_text.remote()
        return text
