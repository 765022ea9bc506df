"""The LLM deployment: one engine per replica, adapters multiplexed across replicas.

Its one request API is `generate` (a whole answer) and `stream` (a `StreamHead`, then SSE lines),
called in process by the one-replica app (`serve_apps.direct`) and through a handle by the ingress
(`serve_apps.ingress`), which also sets the adapter as Serve's multiplexed model id so that Serve
routes the request to a replica already holding it. Refusals are raised as `serve_apps.errors`
errors and answered at the HTTP edge. The adapter list arrives as `user_config`; `reconfigure`
hands it to the replica's `AdapterRegistry`, which applies it to the live engine without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import serve

from presets.local_model import prepare
from presets.models import resolve_preset
from serve_apps.adapter_registry import AdapterRegistry
from serve_apps.config import AdaptersConfig, AppConfig
from serve_apps.errors import EngineError, ServingError
from serve_apps.protocol import AdapterState, Completion, Kind, LLMEngine, LoadedAdapter, StreamHead

logger = logging.getLogger("ray.serve")


def resolve_model_path(config: AppConfig) -> str:
    """A local directory for the engine: prepared locally, given, or left for the engine to fetch."""
    if config.model.path:
        return config.model.path
    if config.model.local:
        return str(prepare(config.model.preset, progress=False))
    if Path(config.model.preset).is_dir():
        return config.model.preset
    return resolve_preset(config.model.preset).model_id


def make_engine(config: AppConfig, model_path: str) -> LLMEngine:
    engine_args = dict(config.engine_args)
    if config.model.chat_template and config.runtime == "transformers":
        engine_args["chat_template"] = config.model.chat_template
    if config.runtime == "transformers":
        from serve_apps.engines.transformers import TransformersEngine

        return TransformersEngine(model_path, config.model.name, engine_args)
    from serve_apps.engines.vllm import VLLMEngine

    return VLLMEngine(model_path, config.model.name, engine_args)


class LLMServer:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        self.config = AppConfig.model_validate(config)
        os.environ.update(self.config.env)
        self.started_at = time.time()
        model_path = await asyncio.get_running_loop().run_in_executor(None, resolve_model_path, self.config)
        self.engine = make_engine(self.config, model_path)
        await self.engine.start()
        self.max_model_len = self.engine.max_model_len
        self.dtype = self.engine.dtype
        self.adapters = AdapterRegistry.for_app(self.engine, self.config)
        logger.info("engine %s ready in %.1fs", self.config.runtime, time.time() - self.started_at)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.adapters.configure(AdaptersConfig.model_validate(user_config or {}).adapters)

    # ---- requests -------------------------------------------------------------------------------

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        """A whole (non-streaming) answer with `adapter` ('' for the base model)."""
        with self._answering():
            async with self.adapters.using(adapter) as loaded:
                result = await self._run(kind, request, loaded)
            if isinstance(result, AsyncIterator):
                raise EngineError("engine streamed a non-streaming request")
            return Completion(result.model_dump(exclude_none=True), self.replica_headers())

    async def stream(self, kind: Kind, request: Any, adapter: str) -> AsyncIterator[StreamHead | str]:
        """A streamed answer: its head, carrying the first SSE lines, then the remaining lines.

        The adapter stays in use until the last line is sent or the stream is dropped.
        """
        with self._answering():
            async with self.adapters.using(adapter) as loaded:
                lines = await self._run(kind, request, loaded)
                if not isinstance(lines, AsyncIterator):
                    raise EngineError("engine answered a streaming request whole")
                first = await anext(lines, None)
                yield StreamHead(self.replica_headers(), () if first is None else (first,))
                async for line in lines:
                    yield line

    async def _run(self, kind: Kind, request: Any, adapter: LoadedAdapter | None) -> Any:
        if kind == "chat":
            return await self.engine.chat(request, adapter)
        return await self.engine.completions(request, adapter)

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Refusals carry the replica's headers too, as answers do."""
        try:
            yield
        except ServingError as exc:
            exc.headers = {**self.replica_headers(), **exc.headers}
            raise

    # ---- replica facts --------------------------------------------------------------------------

    def adapter_states(self) -> dict[str, AdapterState]:
        return self.adapters.states()

    def replica_headers(self) -> dict[str, str]:
        context = serve.get_replica_context()
        return {"x-kairay-replica": context.replica_id.unique_id}

    def replica_info(self) -> dict[str, Any]:
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "adapters_loaded": self.adapters.ready(),
        }

    def metrics_text(self) -> str:
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def engine_health(self) -> None:
        """`check_health` is Serve's own probe; this is the same check, callable through a handle."""
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
