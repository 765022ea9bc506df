"""Which adapters exist, which are ready, which the engine holds, and which requests use them.

`AdapterCatalog` is what a request's `model` is resolved against: the adapters the Workspace
configures. Every process that answers HTTP holds one (the ingress its own, from its `user_config`).
`AdapterRegistry` is the engine replica's one source of truth: it materializes each configured
adapter (`serve_apps.adapters`: pull or copy, scale by strength) when the list changes, loads an
adapter into the engine when a request needs it, counts the requests using it, and unloads it once
it is no longer wanted (dropped from the config, or evicted by the least-recently-used limit) and
no request uses it any more. The least-recently-used limit is Serve's multiplexer, which also tells
Serve's router which replica holds which adapter.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from serve_apps import adapters as adapter_files
from serve_apps.adapters import AdapterError
from serve_apps.config import AdapterConfig, AppConfig
from serve_apps.errors import EngineError, ModelNotFound
from serve_apps.protocol import AdapterState, LLMEngine, LoadedAdapter

logger = logging.getLogger("ray.serve")

Materialize = Callable[[AdapterConfig], LoadedAdapter]
# What Serve's multiplexer wraps: a loader by name, returning an object it evicts by calling
# `__del__`; wrapped, a getter by name that loads on a miss and evicts the least recently used.
Loader = Callable[[str], Awaitable[Any]]
LeastRecentlyUsed = Callable[[Loader], Loader]


@dataclass(frozen=True)
class AdapterCatalog:
    """The adapters a Workspace configures, by name, next to the base model's name."""

    base_model: str
    adapters: Mapping[str, AdapterConfig] = field(default_factory=dict)

    @classmethod
    def of(cls, base_model: str, adapters: Iterable[AdapterConfig]) -> AdapterCatalog:
        return cls(base_model, {adapter.name: adapter for adapter in adapters})

    def resolve(self, model: str | None) -> str:
        """The adapter a request's `model` names: '' for the base model; unknown names raise a 404."""
        if model is None or model == self.base_model:
            return ""
        if model in self.adapters:
            return model
        known = ", ".join([self.base_model, *sorted(self.adapters)])
        raise ModelNotFound(f"The model `{model}` does not exist. Known models: {known}.", param="model")


class _Evictable:
    """What the multiplexer caches for an adapter; it awaits `__del__` when it evicts the adapter."""

    def __init__(self, name: str, evict: Callable[[str], Awaitable[None]]) -> None:
        self.name = name

        async def evicted() -> None:
            await evict(name)

        # An instance attribute, not a method: Serve looks `__del__` up on the instance and awaits
        # it, while the garbage collector looks it up on the type and so never calls it (a method
        # would leave a never-awaited coroutine behind at every collection).
        self.__del__ = evicted


class AdapterRegistry:
    """The adapters of one engine replica (see the module docstring)."""

    def __init__(
        self, engine: LLMEngine, base_model: str, materialize: Materialize, lru: LeastRecentlyUsed
    ) -> None:
        self.engine = engine
        self.catalog = AdapterCatalog(base_model)
        self._materialize = materialize
        self._states: dict[str, AdapterState] = {}
        self._ready: dict[str, LoadedAdapter] = {}
        self._loaded: dict[str, LoadedAdapter] = {}
        self._in_use: Counter[str] = Counter()
        # No longer wanted while requests still used them: unloaded when the last one ends.
        self._unload_when_idle: set[str] = set()
        self._config_lock = asyncio.Lock()

        # A plain function, not the bound method: the multiplexer keeps its cache as an attribute
        # of the function it wraps.
        async def load(name: str) -> _Evictable:
            await self._load(self._ready[name])
            return _Evictable(name, self._evict)

        self._cached = lru(load)

    @classmethod
    def for_app(cls, engine: LLMEngine, config: AppConfig) -> AdapterRegistry:
        """The registry of a replica serving `config`: its cache, its engine's kind, its LRU limit."""
        materialize = functools.partial(
            adapter_files.materialize,
            cache=adapter_files.cache_dir(config.adapter_cache),
            # transformers merges by strength itself (peft weighted merge).
            scale=config.runtime == "vllm",
            base_model=config.model.preset,
            docker_config_dir=config.docker_config_dir,
        )
        # Not a decorator: the per-replica limit comes from the Workspace.
        lru = serve.multiplexed(max_num_models_per_replica=config.max_adapters_per_replica)
        return cls(engine, config.model.name, materialize, lru)

    # ---- the configured list --------------------------------------------------------------------

    async def configure(self, adapters: Iterable[AdapterConfig]) -> None:
        """Make `adapters` the configured list: materialize each, unload the ones no longer ready."""
        wanted = tuple(adapters)
        async with self._config_lock:
            loop = asyncio.get_running_loop()
            ready: dict[str, LoadedAdapter] = {}
            states: dict[str, AdapterState] = {}
            for adapter in wanted:
                try:
                    ready[adapter.name] = await loop.run_in_executor(None, self._materialize, adapter)
                    states[adapter.name] = AdapterState(adapter.name, True, "Ready")
                except AdapterError as exc:
                    # One bad adapter must not take the base model and the others down with it.
                    logger.warning("%s", exc)
                    states[adapter.name] = AdapterState(adapter.name, False, exc.reason, exc.message)
            for name in set(self._ready) - set(ready):
                await self._evict(name)
            self._ready = ready
            self._states = states
            self.catalog = AdapterCatalog.of(self.catalog.base_model, wanted)

    def states(self) -> dict[str, AdapterState]:
        return dict(self._states)

    def ready(self) -> list[str]:
        """The adapters materialized on disk: the ones this replica may serve."""
        return sorted(self._ready)

    # ---- requests -------------------------------------------------------------------------------

    @asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[LoadedAdapter | None]:
        """The adapter `name` loaded in the engine (None for the base model) while the block runs."""
        if not name:
            yield None
            return
        # Counted before loading: an eviction while this request waits must wait for it too.
        self._in_use[name] += 1
        try:
            yield await self._acquire(name)
        finally:
            await self._release(name)

    async def _acquire(self, name: str) -> LoadedAdapter:
        adapter = self._ready.get(name)
        if adapter is None:
            state = self._states.get(name)
            reason = f" ({state.reason}: {state.message})" if state else ""
            raise ModelNotFound(f"The model `{name}` does not exist{reason}.", param="model")
        try:
            await self._cached(name)
            # Loaded before with another strength or image, or unloaded since the config dropped it.
            await self._load(adapter)
        except EngineError as exc:
            raise EngineError(str(exc), http_status=exc.http_status, param="model") from exc
        return adapter

    async def _load(self, adapter: LoadedAdapter) -> None:
        if self._loaded.get(adapter.name) != adapter:
            await self.engine.load_adapter(adapter)
            self._loaded[adapter.name] = adapter
        # Wanted again: a deferred unload must not take it away.
        self._unload_when_idle.discard(adapter.name)

    async def _evict(self, name: str) -> None:
        """Unload an adapter the multiplexer evicted or the config dropped, once no request uses it.

        Serve's LRU evicts without knowing about requests still generating with the adapter; an
        immediate unload would fail them with a 404 from the engine.
        """
        if self._in_use[name]:
            self._unload_when_idle.add(name)
        else:
            await self._unload(name)

    async def _release(self, name: str) -> None:
        self._in_use[name] -= 1
        if not self._in_use[name]:
            del self._in_use[name]
            if name in self._unload_when_idle:
                self._unload_when_idle.discard(name)
                await self._unload(name)

    async def _unload(self, name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            await self.engine.unload_adapter(name)
