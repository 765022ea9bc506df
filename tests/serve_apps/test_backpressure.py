"""Overload: beyond ongoing + queued requests the server answers a JSON 503 at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from harness.kairay_up import KairayUp

pytestmark = pytest.mark.e2e


async def _burst(url: str, count: int) -> list[tuple[int, float, dict[str, object]]]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def one() -> tuple[int, float, dict[str, object]]:
            started = time.monotonic()
            response = await http.post(
                "/v1/completions",
                json={"prompt": "Tell me a long story.", "max_tokens": 64, "temperature": 0},
            )
            return response.status_code, time.monotonic() - started, response.json()

        return await asyncio.gather(*(one() for _ in range(count)))


def test_overload_gets_fast_json_503(served: KairayUp) -> None:
    # The served app allows 4 ongoing + 4 queued requests per caller (tests/conftest.py).
    results = asyncio.run(_burst(served.url, 24))
    rejected = [(elapsed, body) for status, elapsed, body in results if status == 503]
    accepted = [status for status, _, _ in results if status == 200]
    assert accepted, "some requests must be served"
    assert rejected, "a burst beyond the limits must be refused"
    assert all(elapsed < 1.0 for elapsed, _ in rejected), [round(e, 2) for e, _ in rejected]
    assert all(body["error"]["code"] == 503 for _, body in rejected)  # type: ignore[index]
    assert len(accepted) + len(rejected) == len(results)
