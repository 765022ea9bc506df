"""The order in which API calls get a thread."""

from __future__ import annotations

import asyncio

from controller.gate import PriorityGate


def test_the_gate_lets_the_most_urgent_waiter_through_first() -> None:
    async def scenario() -> list[str]:
        gate, order = PriorityGate(1), []

        async def call(label: str, priority: int) -> None:
            async with gate.slot(priority):
                order.append(label)
                await asyncio.sleep(0)

        async with gate.slot(2):
            waiters = [asyncio.create_task(call(label, p)) for label, p in (("a", 2), ("b", 0), ("c", 1))]
            cancelled = asyncio.create_task(call("cancelled", 0))
            await asyncio.sleep(0)
            cancelled.cancel()
        await asyncio.gather(*waiters, cancelled, return_exceptions=True)
        async with gate.slot(2):  # every slot came back
            order.append("last")
        return order

    assert asyncio.run(scenario()) == ["b", "c", "a", "last"]
