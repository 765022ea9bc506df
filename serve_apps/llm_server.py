"""The LLM deployment: one engine per replica, adapters multiplexed across replicas.

Requests name an adapter through Serve's multiplexed model id, so Serve routes them preferentially
to replicas that already hold it. The adapter list arrives as `user_config`; `reconfigure` applies
it to the live engine without restarting it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ray import serve
from vllm.entrypoints.serve.engine.protocol import ErrorResponse

from presets.local_model import prepare
from presets.models import resolve_preset
from serve_apps import adapters as adapter_store
from serve_apps.config import AdapterConfig, AdaptersConfig, AppConfig
from serve_apps.protocol import EngineError, LLMEngine, LoadedAdapter, error_response
from serve_apps.routes import Answer, Kind, StreamHead

logger = logging.getLogger("ray.serve")


async def _no_lines() -> AsyncIterator[str]:
    return
    yield


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


class _AdapterHandle:
    """What the multiplexer caches; Serve calls `__del__` when it evicts the adapter (LRU)."""

    def __init__(self, adapter: LoadedAdapter, unload: Callable[[str], Awaitable[None]]) -> None:
        self.adapter = adapter
        self._unload = unload

    async def __del__(self) -> None:
        await self._unload(self.adapter.name)


class LLMServer:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        self.config = AppConfig.model_validate(config)
        os.environ.update(self.config.env)
        self._cache = adapter_store.cache_dir(self.config.adapter_cache)
        self._materialized: dict[str, LoadedAdapter] = {}
        self._states: dict[str, adapter_store.AdapterState] = {}
        self.adapter_configs: dict[str, AdapterConfig] = {}
        self._in_use: Counter[str] = Counter()
        self._unload_when_idle: set[str] = set()
        self._config_lock = asyncio.Lock()
        self.started_at = time.time()
        model_path = await asyncio.get_running_loop().run_in_executor(None, resolve_model_path, self.config)
        self.engine = make_engine(self.config, model_path)
        await self.engine.start()
        self.max_model_len = getattr(self.engine, "max_model_len", None)

        # Built here rather than as a decorator so the per-replica limit comes from the Workspace;
        # a plain function, because the multiplexer keeps its cache as an attribute of it.
        async def load_adapter(name: str) -> _AdapterHandle:
            return await self._load_adapter_by_id(name)

        self._adapter = serve.multiplexed(max_num_models_per_replica=self.config.max_adapters_per_replica)(
            load_adapter
        )
        logger.info("engine %s ready in %.1fs", self.config.runtime, time.time() - self.started_at)

    # ---- adapters -------------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        wanted = AdaptersConfig.model_validate(user_config or {}).adapters
        async with self._config_lock:
            loop = asyncio.get_running_loop()
            materialized: dict[str, LoadedAdapter] = {}
            states: dict[str, adapter_store.AdapterState] = {}
            for adapter in wanted:
                try:
                    materialized[adapter.name] = await loop.run_in_executor(
                        None,
                        lambda a=adapter: adapter_store.materialize(  # type: ignore[misc]
                            a,
                            cache=self._cache,
                            # transformers merges by strength itself (peft weighted merge).
                            scale=self.config.runtime == "vllm",
                            base_model=self.config.model.preset,
                            docker_config_dir=self.config.docker_config_dir,
                        ),
                    )
                    states[adapter.name] = adapter_store.AdapterState(adapter.name, True, "Ready")
                except adapter_store.AdapterError as exc:
                    # One bad adapter must not take the base model and the others down with it.
                    logger.warning("%s", exc)
                    states[adapter.name] = adapter_store.AdapterState(
                        adapter.name, False, exc.reason, exc.message
                    )
            for name in set(self._materialized) - set(materialized):
                await self._unload(name)
            self._materialized = materialized
            self._states = states
            self.adapter_configs = {a.name: a for a in wanted}

    async def _load_adapter_by_id(self, name: str) -> _AdapterHandle:
        adapter = self._materialized[name]
        await self.engine.load_adapter(adapter)
        # Loaded again (or still) wanted: a deferred unload must not take it away.
        self._unload_when_idle.discard(name)
        return _AdapterHandle(adapter, self._unload)

    async def _unload(self, name: str) -> None:
        """Unload an adapter the multiplexer evicted or the config dropped, once no request uses it.

        Serve's LRU evicts without knowing about requests still generating with the adapter; an
        immediate unload would fail them with a 404 from the engine.
        """
        if self._in_use[name]:
            self._unload_when_idle.add(name)
        else:
            await self.engine.unload_adapter(name)

    async def _release(self, name: str) -> None:
        self._in_use[name] -= 1
        if not self._in_use[name]:
            del self._in_use[name]
            if name in self._unload_when_idle:
                self._unload_when_idle.discard(name)
                await self.engine.unload_adapter(name)

    async def _released_after(self, lines: AsyncIterator[str], name: str) -> AsyncIterator[str]:
        try:
            async for line in lines:
                yield line
        finally:
            await self._release(name)

    async def _resolve_adapter(self, name: str) -> LoadedAdapter | ErrorResponse | None:
        if not name:
            return None
        if name not in self._materialized:
            state = self._states.get(name)
            reason = f" ({state.reason}: {state.message})" if state else ""
            return error_response(
                f"The model `{name}` does not exist{reason}.", HTTPStatus.NOT_FOUND, param="model"
            )
        current = self._materialized[name]
        try:
            handle: _AdapterHandle = await self._adapter(name)
            if handle.adapter != current:
                # The adapter changed (new strength or image) since the multiplexer cached it.
                await self.engine.load_adapter(current)
                handle.adapter = current
        except EngineError as exc:
            return error_response(str(exc), exc.status, param="model")
        return current

    def adapter_states(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(state) for name, state in self._states.items()}

    # ---- requests -------------------------------------------------------------------------------

    async def _call(self, kind: Kind, request: Any, adapter_name: str) -> Any:
        if not adapter_name:
            return await self._generate(kind, request, None)
        # Counted before resolving: an eviction while this request waits must wait for it too.
        self._in_use[adapter_name] += 1
        try:
            adapter = await self._resolve_adapter(adapter_name)
            if isinstance(adapter, ErrorResponse):
                result: Any = adapter
            else:
                result = await self._generate(kind, request, adapter)
        except BaseException:
            await self._release(adapter_name)
            raise
        if isinstance(result, AsyncIterator):
            return self._released_after(result, adapter_name)
        await self._release(adapter_name)
        return result

    async def _generate(self, kind: Kind, request: Any, adapter: LoadedAdapter | None) -> Any:
        if kind == "chat":
            return await self.engine.chat(request, adapter)
        return await self.engine.completions(request, adapter)

    async def answer(self, kind: Kind, request: Any, adapter_name: str) -> Answer:
        """A whole (non-streaming) answer: (status, JSON body, headers)."""
        result = await self._call(kind, request, adapter_name)
        headers = self.replica_headers()
        if isinstance(result, ErrorResponse):
            return result.error.code, result.model_dump(), headers
        if isinstance(result, AsyncIterator):
            return 500, error_response("engine streamed a non-streaming request").model_dump(), headers
        return 200, result.model_dump(exclude_none=True), headers

    async def open_stream(
        self, kind: Kind, request: Any, adapter_name: str
    ) -> tuple[StreamHead, AsyncIterator[str]]:
        """A streamed answer: its head, carrying the first SSE line, and the remaining lines."""
        result = await self._call(kind, request, adapter_name)
        headers = self.replica_headers()
        if isinstance(result, ErrorResponse):
            return (result.error.code, result.model_dump(), headers, []), _no_lines()
        try:
            first = [await anext(result)]
        except StopAsyncIteration:
            first = []
        return (200, None, headers, first), result

    # Through a handle (the ingress of a multi-replica app): the adapter is the multiplexed model
    # id, which is what let Serve route the request to a replica holding it.
    async def handle(self, kind: Kind, request: Any) -> Answer:
        return await self.answer(kind, request, serve.get_multiplexed_model_id())

    async def handle_stream(self, kind: Kind, request: Any) -> AsyncIterator[Any]:
        """The head first, then the remaining SSE lines."""
        head, rest = await self.open_stream(kind, request, serve.get_multiplexed_model_id())
        yield head
        async for line in rest:
            yield line

    def replica_headers(self) -> dict[str, str]:
        context = serve.get_replica_context()
        return {"x-kairay-replica": context.replica_id.unique_id}

    def replica_info(self) -> dict[str, Any]:
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "max_model_len": self.max_model_len,
            "adapters_loaded": sorted(self._materialized),
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
