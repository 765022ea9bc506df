"""Which blocking API call gets a thread next.

Blocking API calls wait for a thread in this order: a Workspace's first RayService (what a user waits
for after `kubectl apply`), then the first write for a new Workspace (its finalizer), then the rest.
The thread pool's own queue is first come first served: with many Workspaces created at once, each
RayService create would queue behind the status patches that KubeRay's progress on the earlier ones
brings about.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
from collections.abc import AsyncIterator

PRIORITY_CREATE = 0
PRIORITY_NEW = 1
PRIORITY_OTHER = 2


def executor_threads() -> int:
    # asyncio's default executor: ThreadPoolExecutor's default size.
    return min(32, (os.cpu_count() or 1) + 4)


class PriorityGate:
    """At most `slots` holders at once; waiters get a slot lowest priority first, then in order of
    arrival."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            handed = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._arrivals), handed))
            try:
                await handed
            except asyncio.CancelledError:
                # Cancelled after the slot was handed over: pass it on (before, `_release` skips it).
                if handed.done() and not handed.cancelled():
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, handed = heapq.heappop(self._waiting)
            if not handed.done():
                handed.set_result(None)
                return
        self._free += 1
