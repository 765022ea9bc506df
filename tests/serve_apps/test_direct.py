"""The one-replica backend's admission: what it lets through, refuses, and gives back. No Ray."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.config import AppConfig, Limits, ModelSource
from serve_apps.direct import _LocalBackend
from serve_apps.errors import ModelNotFound, Overloaded
from serve_apps.llm_server import LLMServer
from serve_apps.protocol import Completion, Kind, StreamHead

REPLICA = {"x-kairay-replica": "r"}


class FakeServer:
    """The parts of `LLMServer` the backend calls; each request waits until `release` is set."""

    def __init__(self) -> None:
        self.config = AppConfig(
            name="ws",
            model=ModelSource(name="base", preset="base"),
            limits=Limits(max_ongoing_requests=1, max_queued_requests=1, backpressure_status=429),
        )
        self.adapters = type("Registry", (), {"catalog": AdapterCatalog("base")})()
        self.release = asyncio.Event()

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        await self.release.wait()
        return Completion({"choices": []}, REPLICA)

    async def stream(self, kind: Kind, request: Any, adapter: str) -> AsyncIterator[StreamHead | str]:
        if adapter == "missing":
            raise ModelNotFound("no such adapter")
        yield StreamHead(REPLICA, ("data: 1\n\n",))
        await self.release.wait()
        yield "data: [DONE]\n\n"


def backend() -> tuple[_LocalBackend, FakeServer]:
    server = FakeServer()
    return _LocalBackend(cast(LLMServer, server)), server


def test_beyond_ongoing_plus_queued_requests_are_refused_with_the_workspaces_status() -> None:
    async def scenario() -> None:
        local, server = backend()
        admitted = [asyncio.create_task(local.generate("chat", None, "")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await local.generate("chat", None, "")
        assert info.value.http_status == 429
        assert info.value.headers == {"Retry-After": "1"}
        server.release.set()
        assert all(isinstance(answer, Completion) for answer in await asyncio.gather(*admitted))
        assert local.admission.admitted == 0

    asyncio.run(scenario())


def test_a_stream_holds_its_place_until_its_last_line() -> None:
    async def scenario() -> None:
        local, server = backend()
        stream = await local.stream("chat", None, "")
        assert stream.headers == REPLICA
        assert await anext(stream.lines) == "data: 1\n\n"
        assert local.admission.admitted == 1
        server.release.set()
        assert [line async for line in stream.lines] == ["data: [DONE]\n\n"]
        assert local.admission.admitted == 0

    asyncio.run(scenario())


def test_a_dropped_or_refused_stream_gives_its_place_back() -> None:
    async def scenario() -> None:
        local, _ = backend()
        stream = await local.stream("chat", None, "")
        assert local.admission.admitted == 1
        del stream
        gc.collect()
        assert local.admission.admitted == 0
        with pytest.raises(ModelNotFound):
            await local.stream("chat", None, "missing")
        assert local.admission.admitted == 0

    asyncio.run(scenario())
