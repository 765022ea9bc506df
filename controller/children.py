"""The children step: make the cluster hold what a `DesiredState` lists, and read back how KubeRay
and the application are doing.

Children are created once the nodes are ready (pods would only sit Pending before), and kept in sync
from then on even while a node is away. Every write that relies on a watched copy carries its
resourceVersion or is a create, so a stale copy ends in a 409 (`Conflict`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from controller.cache import WatchCache
from controller.conditions import REASON_ADAPTER_STATUS_UNKNOWN, Problem, adapter_problem
from controller.events import event
from controller.gate import PRIORITY_CREATE, PRIORITY_OTHER
from controller.kube import Kube
from controller.nodes.base import NodeReport
from controller.ownership import conflict, owned_by
from controller.workloads.common import SERVICE_PORT, DesiredState
from kairay.api.workspace import CONDITION_INFERENCE_READY, Workspace
from kuberay.client import RAYJOBS, RAYSERVICES, describe, is_subset
from kuberay.status import JobProgress, ServiceHealth, rayjob_progress, rayservice_health

log = logging.getLogger(__name__)


class Children:
    def __init__(self, kube: Kube, cache: WatchCache) -> None:
        self._kube = kube
        self._cache = cache

    async def inference(
        self,
        obj: dict[str, Any],
        ws: Workspace,
        desired: DesiredState,
        nodes: NodeReport,
        *,
        create: bool,
        fresh: bool,
    ) -> tuple[ServiceHealth | None, Problem | None, Problem | None]:
        """Apply the RayService and Service (`create`: may create them); KubeRay's verdict on the
        RayService, what the application says about its adapters, and the conflict of a child's name
        held by an object this Workspace does not own (then nothing is written)."""
        rayservice, service = desired.objects
        namespace, name = rayservice["metadata"]["namespace"], rayservice["metadata"]["name"]
        current = await self._current_rayservice(namespace, name, fresh)
        current_service = await self._current_service(namespace, name, fresh)
        uid = str(obj["metadata"].get("uid") or "")
        for kind, held in (("RayService", current), ("Service", current_service)):
            if held is not None and not owned_by(held, uid):
                problem = conflict(kind, held)
                if _reason(obj) != problem.reason:
                    event(obj, "Warning", problem.reason, problem.message)
                return None, None, problem
        if create and (nodes.ready or current is not None):
            before = current
            priority = PRIORITY_CREATE if current is None else PRIORITY_OTHER
            applied = await self._kube.apply_rayservice(rayservice, current, priority=priority)
            current = applied.object
            if applied.action != "unchanged":
                self._cache.observe_rayservice(current)
            if before is None:
                event(obj, "Normal", "RayServiceCreated", f"created RayService {name}")
            elif changed := _changed_keys(before.get("spec") or {}, rayservice["spec"]):
                event(obj, "Normal", "RayServiceUpdated", f"updated RayService {name}: {', '.join(changed)}")
            await self._apply_service(obj, service, current_service)
        health = rayservice_health(current) if current is not None else None
        adapters = await self._adapter_problem(ws) if health is not None and health.ready else None
        return health, adapters, None

    async def _current_rayservice(self, namespace: str, name: str, fresh: bool) -> dict[str, Any] | None:
        """The RayService as the watch last saw it, or (`fresh`) as the API server has it now; a fresh
        read corrects the cache too (a deletion missed while the watch was down)."""
        if not fresh:
            return self._cache.rayservice(namespace, name)
        current = await self._kube.get(RAYSERVICES, namespace, name)
        self._cache.correct_rayservice(namespace, name, current)
        return current

    async def _current_service(self, namespace: str, name: str, fresh: bool) -> dict[str, Any] | None:
        if not fresh:
            return self._cache.service(namespace, name)
        current = await self._kube.service(namespace, name)
        self._cache.correct_service(namespace, name, current)
        return current

    async def tuning(
        self, obj: dict[str, Any], ws: Workspace, desired: DesiredState, nodes: NodeReport, *, create: bool
    ) -> JobProgress | None:
        """Create the RayJob (`create`: may create it) and delete those of earlier tuning specs;
        KubeRay's verdict on the job."""
        (rayjob,) = desired.objects
        namespace, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
        current = None
        uid = str(obj["metadata"].get("uid") or "")
        for job in await self._kube.rayjobs(namespace, ws.metadata.name or ""):
            if job["metadata"]["name"] == name:
                # One of an earlier Workspace of this name is not adopted: creating ours gets a 409
                # until it is gone.
                current = job if owned_by(job, uid) else None
            elif not job["metadata"].get("deletionTimestamp") and owned_by(job, uid):
                # A RayJob never re-runs: a changed tuning spec got a new RayJob and the old one goes.
                stale = job["metadata"]["name"]
                await self._kube.delete(RAYJOBS, namespace, stale, uid=job["metadata"]["uid"])
                event(obj, "Normal", "RayJobReplaced", f"deleted RayJob {stale}: the tuning spec changed")
        if current is None and create and nodes.ready:
            current = await self._kube.create_rayjob(rayjob)
            event(obj, "Normal", "RayJobCreated", f"created RayJob {name}")
        return rayjob_progress(current) if current is not None else None

    async def _apply_service(
        self, owner: dict[str, Any], desired: dict[str, Any], current: dict[str, Any] | None
    ) -> None:
        metadata = desired["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        if current is None:
            self._cache.observe_service(await self._kube.create_service(namespace, desired))
            event(owner, "Normal", "ServiceCreated", f"created Service {name}")
            return
        wanted = {
            "metadata": {"labels": metadata["labels"], "ownerReferences": metadata["ownerReferences"]},
            "spec": desired["spec"],
        }
        if is_subset(wanted, current):
            return
        patch = {
            "metadata": {**wanted["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": desired["spec"],
        }
        self._cache.observe_service(await self._kube.patch_service(namespace, name, patch))
        event(owner, "Normal", "ServiceUpdated", f"updated Service {name}")

    async def _adapter_problem(self, ws: Workspace) -> Problem | None:
        """What the running application's `/health` says about its adapters: KubeRay only knows that
        the application runs, not that an adapter image failed to pull. Read through the API server's
        service proxy; without an answer (no endpoints yet) KubeRay's verdict stands, and an answer that
        cannot be read (a timeout, too large, not JSON) is a problem of its own."""
        assert ws.inference is not None
        wanted = {adapter.source.name for adapter in ws.inference.adapters}
        if not wanted:
            return None
        namespace, name = ws.metadata.namespace or "default", ws.metadata.name or ""
        try:
            health = json.loads(await self._kube.service_proxy(namespace, f"{name}:{SERVICE_PORT}", "health"))
        except ApiException as exc:
            # No endpoints yet, or the app is restarting: the proxy's own refusal.
            log.info("Workspace %s/%s: no adapter states from /health: %s", namespace, name, describe(exc))
            return None
        except (urllib3.exceptions.HTTPError, ValueError, TimeoutError) as exc:
            # An app that answers, but too slowly, too much or not JSON: its adapters cannot be vouched for.
            slow = isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError)
            why = "no answer in time" if slow else str(exc)
            log.info("Workspace %s/%s: unusable /health answer: %r", namespace, name, exc)
            message = f"the application's /health gave no usable answer ({why[:200]}); adapter states unknown"
            return Problem(REASON_ADAPTER_STATUS_UNKNOWN, message, final=False)
        return adapter_problem(health, wanted)


def _reason(obj: Mapping[str, Any]) -> str | None:
    """The reason of the Workspace's InferenceReady condition as last written."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == CONDITION_INFERENCE_READY:
            return str(condition.get("reason") or "")
    return None


def _changed_keys(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, value in desired.items() if current.get(key) != value)
