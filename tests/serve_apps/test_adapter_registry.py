"""The adapter registry against a fake engine and a small LRU: no Ray, no engine."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import pytest

from serve_apps.adapter_registry import AdapterCatalog, AdapterRegistry, Loader
from serve_apps.adapters import AdapterError
from serve_apps.config import AdapterConfig
from serve_apps.errors import EngineError, ModelNotFound
from serve_apps.protocol import AdapterState, ChatResult, CompletionResult, LLMEngine, LoadedAdapter

BASE = "base-model"


class FakeEngine(LLMEngine):
    def __init__(self) -> None:
        self.held: dict[str, LoadedAdapter] = {}
        self.log: list[str] = []
        self.refuse: set[str] = set()

    async def start(self) -> None: ...

    async def chat(self, request: Any, adapter: LoadedAdapter | None) -> ChatResult:
        raise NotImplementedError

    async def completions(self, request: Any, adapter: LoadedAdapter | None) -> CompletionResult:
        raise NotImplementedError

    async def load_adapter(self, adapter: LoadedAdapter) -> None:
        if adapter.name in self.refuse:
            raise EngineError(f"adapter {adapter.name!r} failed to load", http_status=400)
        self.held[adapter.name] = adapter
        self.log.append(f"load {adapter.name} {adapter.strength}")

    async def unload_adapter(self, name: str) -> None:
        del self.held[name]
        self.log.append(f"unload {name}")

    async def check_health(self) -> None: ...

    def shutdown(self) -> None: ...


class LRU:
    """What Serve's multiplexer does with a loader: cache by name, evict the least recently used."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cached: OrderedDict[str, Any] = OrderedDict()

    def __call__(self, load: Loader) -> Loader:
        async def get(name: str) -> Any:
            if name in self.cached:
                self.cached.move_to_end(name)
                return self.cached[name]
            if len(self.cached) >= self.capacity:
                _, evicted = self.cached.popitem(last=False)
                await evicted.__del__()
            self.cached[name] = await load(name)
            return self.cached[name]

        return get


def materialize(adapter: AdapterConfig) -> LoadedAdapter:
    if adapter.path == "/missing":
        raise AdapterError(adapter.name, "AdapterInvalid", "/missing has no adapter_config.json")
    return LoadedAdapter(adapter.name, str(adapter.path), adapter.strength)


def adapter(name: str, strength: float = 1.0, path: str | None = None) -> AdapterConfig:
    return AdapterConfig(name=name, path=path or f"/adapters/{name}", strength=strength)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def registry(engine: FakeEngine, capacity: int = 2) -> AdapterRegistry:
    return AdapterRegistry(engine, BASE, materialize, LRU(capacity))


async def use(registry: AdapterRegistry, name: str) -> LoadedAdapter | None:
    async with registry.using(name) as loaded:
        return loaded


def test_catalog_resolves_the_base_model_and_configured_adapters() -> None:
    catalog = AdapterCatalog.of(BASE, [adapter("a"), adapter("b")])
    assert catalog.resolve(None) == ""
    assert catalog.resolve(BASE) == ""
    assert catalog.resolve("b") == "b"
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve("c")
    assert info.value.http_status == 404
    assert info.value.param == "model"
    assert str(info.value) == f"The model `c` does not exist. Known models: {BASE}, a, b."


def test_configure_materializes_each_adapter_and_keeps_the_bad_ones_out(engine: FakeEngine) -> None:
    adapters = registry(engine)
    asyncio.run(adapters.configure([adapter("a"), adapter("bad", path="/missing")]))
    assert adapters.states() == {
        "a": AdapterState("a", True, "Ready"),
        "bad": AdapterState("bad", False, "AdapterInvalid", "/missing has no adapter_config.json"),
    }
    assert adapters.ready() == ["a"]
    # The routes resolve against every configured name; the replica refuses what it cannot serve.
    assert adapters.catalog.resolve("bad") == "bad"
    with pytest.raises(ModelNotFound, match=r"`bad` does not exist \(AdapterInvalid: /missing has no"):
        asyncio.run(use(adapters, "bad"))
    assert engine.log == []


def test_the_base_model_needs_no_adapter(engine: FakeEngine) -> None:
    adapters = registry(engine)
    assert asyncio.run(use(adapters, "")) is None
    assert engine.log == []


def test_an_adapter_is_loaded_on_first_use_only(engine: FakeEngine) -> None:
    adapters = registry(engine)

    async def scenario() -> None:
        await adapters.configure([adapter("a", 0.5)])
        assert await use(adapters, "a") == LoadedAdapter("a", "/adapters/a", 0.5)
        await use(adapters, "a")

    asyncio.run(scenario())
    assert engine.log == ["load a 0.5"]


def test_a_new_strength_is_loaded_on_next_use(engine: FakeEngine) -> None:
    adapters = registry(engine)

    async def scenario() -> None:
        await adapters.configure([adapter("a", 0.5)])
        await use(adapters, "a")
        await adapters.configure([adapter("a", 0.25)])
        await use(adapters, "a")

    asyncio.run(scenario())
    assert engine.log == ["load a 0.5", "load a 0.25"]
    assert engine.held["a"].strength == 0.25


def test_the_least_recently_used_adapter_is_unloaded_when_idle(engine: FakeEngine) -> None:
    adapters = registry(engine, capacity=2)

    async def scenario() -> None:
        await adapters.configure([adapter("a"), adapter("b"), adapter("c")])
        for name in ("a", "b", "c"):
            await use(adapters, name)

    asyncio.run(scenario())
    assert engine.log == ["load a 1.0", "load b 1.0", "unload a", "load c 1.0"]
    assert sorted(engine.held) == ["b", "c"]


def test_an_adapter_evicted_while_in_use_is_unloaded_when_its_last_request_ends(engine: FakeEngine) -> None:
    adapters = registry(engine, capacity=1)

    async def scenario() -> None:
        await adapters.configure([adapter("a"), adapter("b")])
        async with adapters.using("a"):
            async with adapters.using("a"):
                await use(adapters, "b")  # evicts `a` from the LRU while two requests use it
                assert "a" in engine.held
            assert "a" in engine.held
        assert "a" not in engine.held

    asyncio.run(scenario())
    assert engine.log == ["load a 1.0", "load b 1.0", "unload a"]


def test_an_adapter_wanted_again_before_its_deferred_unload_stays(engine: FakeEngine) -> None:
    adapters = registry(engine, capacity=1)

    async def scenario() -> None:
        await adapters.configure([adapter("a"), adapter("b")])
        async with adapters.using("a"):
            await use(adapters, "b")  # evicts `a`, unload deferred
            await use(adapters, "a")  # back in the LRU, evicting `b`
        assert "a" in engine.held

    asyncio.run(scenario())
    assert engine.log == ["load a 1.0", "load b 1.0", "unload b"]


def test_an_adapter_dropped_from_the_config_is_unloaded_once_unused(engine: FakeEngine) -> None:
    adapters = registry(engine)

    async def scenario() -> None:
        await adapters.configure([adapter("a"), adapter("b")])
        await use(adapters, "b")
        async with adapters.using("a"):
            await adapters.configure([])
            assert "a" in engine.held
            assert "b" not in engine.held
        assert "a" not in engine.held
        with pytest.raises(ModelNotFound):
            await use(adapters, "a")
        # Added back: the LRU still caches it, but the engine no longer holds it.
        await adapters.configure([adapter("a")])
        await use(adapters, "a")
        assert "a" in engine.held

    asyncio.run(scenario())
    assert adapters.catalog.resolve("a") == "a"


def test_an_engine_refusing_an_adapter_names_the_model_param(engine: FakeEngine) -> None:
    adapters = registry(engine)
    engine.refuse.add("a")

    async def scenario() -> None:
        await adapters.configure([adapter("a")])
        with pytest.raises(EngineError) as info:
            await use(adapters, "a")
        assert info.value.http_status == 400
        assert info.value.param == "model"
        # The failed request no longer counts as using it: a drop unloads at once.
        engine.refuse.clear()
        await use(adapters, "a")
        await adapters.configure([])

    asyncio.run(scenario())
    assert engine.log == ["load a 1.0", "unload a"]
