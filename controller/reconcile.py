"""The reconcile: a Workspace becomes nodes, then a RayService + Service (inference) or a RayJob
(tuning), and its status says honestly how far that got.

Reconciling is level-based. `Reconciler.reconcile` brings the cluster in line with the Workspace as
last seen; every step is idempotent and keyed by deterministic names, so running it again (after a
409, a crash or a restart) converges instead of duplicating. It runs on every Workspace event that
brings something new, on every event of a child, from a periodic resync, and again after a delay
when a run failed or waits for a deletion (`controller.wiring` says when).

Runs for one Workspace are serialised by a per-Workspace lock, and coalesced: events that arrive
while a run is already waiting add nothing to it. A run reads the Workspace, its RayService and its
Service from the watch cache, not from the API server; every write that depends on such a copy
carries its resourceVersion or is a create, so a stale copy ends in a 409, and the retry reads
everything afresh. One pass (`_reconcile_once`) is the sequence of steps below, each a function of
its own module:

    read → finalize (deleted) | add the finalizer → validate → inputs → desired state → nodes
         → children → status
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import ApiClient

from controller.cache import Key, WatchCache, key
from controller.children import Children
from controller.conditions import Observation, WorkloadKind
from controller.finalizer import Finalizer, has_finalizer
from controller.gate import PRIORITY_NEW
from controller.inputs import read_inputs
from controller.kube import Kube
from controller.memo import Memo, editable
from controller.nodes.base import NodeProvisioner
from controller.settings import ControllerOptions
from controller.status import USER_ERRORS, observation, report
from controller.validate import misfit, validated
from controller.workloads import DesiredState, desired_state
from kairay.api.workspace import Workspace
from kuberay.client import Conflict, describe
from presets.sizing import SizingError

log = logging.getLogger(__name__)


class Reconciler:
    """Brings one Workspace at a time in line with its spec. Blocking `kubernetes` calls run in threads."""

    def __init__(
        self,
        api: ApiClient,
        provisioner: NodeProvisioner,
        options: ControllerOptions,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cache = WatchCache()
        self.options = options
        self._kube = Kube(api)
        self._nodes = provisioner
        self._finalizer = Finalizer(self._kube, provisioner, options)
        self._children = Children(self._kube, self.cache)
        self._clock = clock
        self._locks: dict[Key, asyncio.Lock] = {}
        # Reconciles waiting for their Workspace's lock: a run that has not started yet will see any
        # later change too, so one waiter per Workspace is enough however many events arrive.
        self._waiting: set[Key] = set()
        self._states: Memo[DesiredState] = Memo()

    def observe_workspace(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Keep the watch's copy; whether it tells anything new (see `WatchCache.observe_workspace`)."""
        news = self.cache.observe_workspace(body, deleted)
        if deleted:
            held = key(body)
            self._finalizer.forget(held)
            lock = self._locks.get(held)
            if lock is not None and not lock.locked() and held not in self._waiting:
                del self._locks[held]
        return news

    async def reconcile(self, namespace: str, name: str, *, fresh: bool = False) -> None:
        """Reconcile until nothing conflicts; after `conflict_attempts` 409s kopf retries later. Returns
        at once when another reconcile of this Workspace is already waiting to start. `fresh` reads
        everything from the API server from the first attempt on (the periodic resync: a watch that
        was down and re-listed reports no deletion it missed)."""
        held = (namespace, name)
        if held in self._waiting:
            return
        self._waiting.add(held)
        lock = self._locks.setdefault(held, asyncio.Lock())
        try:
            await lock.acquire()
        finally:
            self._waiting.discard(held)
        try:
            for attempt in range(self.options.conflict_attempts):
                try:
                    await self._reconcile_once(namespace, name, fresh=fresh or attempt > 0)
                    return
                except Conflict as exc:
                    log.info("Workspace %s/%s: %s; reading again", namespace, name, describe(exc))
                    await asyncio.sleep(0.1 * 2**attempt)
            raise kopf.TemporaryError(
                f"Workspace {namespace}/{name} kept conflicting with other writers",
                delay=self.options.retry_delay_seconds,
            )
        finally:
            lock.release()

    async def _reconcile_once(self, namespace: str, name: str, *, fresh: bool) -> None:
        """One pass; `fresh` reads every object from the API server instead of the watches' copies."""
        cached = None if fresh else self.cache.workspace(namespace, name)
        obj = cached if cached is not None else await self._kube.workspace(namespace, name)
        if obj is None:
            self.cache.forget_workspace(namespace, name)
            return
        if obj["metadata"].get("deletionTimestamp"):
            if has_finalizer(obj):
                self._written(await self._finalizer.finalize(obj))
            return
        if not has_finalizer(obj):
            # Before anything is created that the deletion would have to clean up (an AKS pool).
            obj = self._written(await self._finalizer.set(obj, present=True, priority=PRIORITY_NEW))
        kind: WorkloadKind = "inference" if obj.get("inference") is not None else "tuning"
        seen = await self._converge(obj, fresh)
        written = await report(self._kube, obj, kind, seen, self._clock())
        if written is not None:
            self._written(written)

    async def _converge(self, obj: dict[str, Any], fresh: bool) -> Observation:
        """Validate, read the inputs, size, then bring the nodes and the children in line."""
        generation = obj["metadata"].get("generation")
        try:
            ws = validated(obj)
            inputs = await read_inputs(self._kube, ws)
            desired = self._desired(obj, ws, inputs.engine_overrides)
        except USER_ERRORS as exc:
            return observation(generation, invalid=exc)
        nodes = await self._nodes.ensure(desired.nodes)
        create = inputs.error is None
        if desired.kind == "inference":
            service, adapters, conflict = await self._children.inference(
                obj, ws, desired, nodes, create=create, fresh=fresh
            )
            return observation(
                generation,
                config=inputs.error,
                nodes=nodes,
                service=service,
                adapters=adapters,
                conflict=conflict,
            )
        job = await self._children.tuning(obj, ws, desired, nodes, create=create)
        return observation(generation, config=inputs.error, nodes=nodes, job=job)

    def _desired(
        self, obj: Mapping[str, Any], ws: Workspace, overrides: dict[str, Any] | None
    ) -> DesiredState:
        """The Workspace's `DesiredState`, memoised on what it is built from: the editable Workspace
        (with its uid, for the owner references) and the ConfigMap's overrides. Callers only read it."""

        def build() -> DesiredState:
            try:
                return desired_state(ws, self.options.settings, overrides)
            except SizingError as exc:
                raise misfit(exc, ws) from None

        return self._states.get([editable(obj), obj["metadata"].get("uid"), overrides], build)

    def _written(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A Workspace as the API server answered a write: the newest copy there is."""
        self.cache.observe_workspace(obj)
        return obj
