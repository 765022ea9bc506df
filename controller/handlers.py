"""The kopf operator: a Workspace becomes nodes, then a RayService + Service (inference) or a RayJob
(tuning), and its status says honestly how far that got.

Reconciling is level-based. `Reconciler.reconcile` brings the cluster in line with the Workspace as
last seen; every step is idempotent and keyed by deterministic names, so running it again (after a
409, a crash or a restart) converges instead of duplicating. It runs:

- on every event of a Workspace that brings something new (the first one included, not the echoes of
  the controller's own writes);
- on every event of a RayService or RayJob kairay owns, so the status follows KubeRay at once;
- from one resync task that visits every Workspace each `resync_seconds`, for what is not watched:
  nodes, ConfigMaps, Azure agent pools;
- again after a delay when a run failed or waits for a deletion (kopf retries no event handler).

Runs for one Workspace are serialised by a per-Workspace lock, and coalesced: events that arrive
while a run is already waiting add nothing to it. A run reads the Workspace, its RayService and its
Service from what the watches last delivered, not from the API server; every write that depends on
such a copy carries its resourceVersion or is a create, so a stale copy ends in a 409, and the retry
reads everything afresh. Deletion goes through a finalizer, which the first run adds before it
creates anything: a run that finds the Workspace deleted deletes the children explicitly (owner
references would get them too, but later), then the node provisioner releases the nodes (an AKS pool
is deleted), and only then does it remove the finalizer.

The controller never reads Secrets: it references them by name in the manifests it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

import kopf
import urllib3
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from controller.conditions import (
    Observation,
    Problem,
    WorkloadKind,
    adapter_problem,
    transitions,
    workspace_status,
)
from controller.nodes.base import LabelRequirement, NodeProvisioner, NodeRequest
from controller.object_meta import MANAGED_BY, WORKSPACE_LABEL
from controller.objects import SERVICE_PORT, render_objects
from controller.render import plan_for
from controller.settings import ControllerOptions
from kairay.api.configmaps import engine_overrides_from_configmap
from kairay.api.errors import FieldError
from kairay.api.workspace import (
    CONDITION_RESOURCE_READY,
    GROUP,
    STATE_FAILED,
    STATE_NOT_READY,
    Workspace,
    parse_workspace,
)
from kuberay.client import RAYJOBS, RAYSERVICES, KubeRayClient, merge_patch_diff
from kuberay.cluster import GROUP as RAY_GROUP
from kuberay.cluster import VERSION as RAY_VERSION
from kuberay.status import rayjob_progress, rayservice_health
from presets.models import resolve_preset
from presets.sizing import InferencePlan, plan_tuning
from presets.skus import get_sku
from presets.validation import validate_workspace
from tuning.config import TuningConfigError, load_configmap_data

log = logging.getLogger(__name__)

VERSION = "v1beta1"
PLURAL = "workspaces"
WORKSPACES = (GROUP, VERSION, PLURAL)
FINALIZER = "kairay.io/finalizer"
# kopf's finalizer, which kopf would add for handlers that need one: none of the controller's does.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
MERGE_PATCH = "application/merge-patch+json"
# Seconds any single API call may take; a hung connection must not hold a Workspace's lock forever.
REQUEST_TIMEOUT = 30
# The application's own /health answers at once; a slow one must not stall the reconcile.
HEALTH_TIMEOUT = 5

# AKS gives a node this much OS disk unless asked otherwise.
AKS_DEFAULT_OS_DISK_GB = 128
# The runtime image (CUDA, Ray, vLLM) and the OS, next to the model weights.
RUNTIME_DISK_GB = 50

REASON_UNSUPPORTED_WORKSPACE = "UnsupportedWorkspace"
REASON_CONFIGMAP_NOT_FOUND = "ConfigMapNotFound"
REASON_INVALID_CONFIGMAP = "InvalidConfigMap"

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)
EventType = Literal["Normal", "Warning"]
ProvisionerFactory = Callable[[ApiClient], NodeProvisioner]
ConfigurationLoader = Callable[[], Configuration]


class Conflict(Exception):
    """The API answered 409: what was read is stale (or was created meanwhile); read again."""


# --- pure helpers ------------------------------------------------------------------------------------


def catalog_problem(errors: list[FieldError]) -> Problem:
    """The condition for what `validate_workspace` found: the first error's reason, every message."""
    return Problem(errors[0].condition, "; ".join(str(e) for e in errors))


def node_request(
    ws: Workspace,
    *,
    node_count: int,
    gpus_per_node: int | None = None,
    gpu_memory_gb: float | None = None,
    os_disk_gb: int | None = None,
) -> NodeRequest:
    selector = ws.resource.label_selector
    return NodeRequest(
        namespace=ws.metadata.namespace or "default",
        name=ws.metadata.name or "",
        uid=ws.metadata.uid or "",
        instance_type=ws.resource.instance_type,
        node_count=max(node_count, 1),
        match_labels=dict(selector.match_labels),
        match_expressions=tuple(
            LabelRequirement(e.key, e.operator, tuple(e.values)) for e in selector.match_expressions
        ),
        preferred_nodes=tuple(ws.resource.preferred_nodes),
        os_disk_gb=os_disk_gb,
        gpu_memory_needed_gb=gpu_memory_gb,
        gpus_per_node=gpus_per_node,
    )


def release_request(obj: Mapping[str, Any]) -> NodeRequest:
    """What `release` needs (the pool is named after the Workspace), read without validation: a
    Workspace that never validated must still be deletable."""
    metadata = obj.get("metadata") or {}
    resource = obj.get("resource") or {}
    return NodeRequest(
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        instance_type=str(resource.get("instanceType") or ""),
        node_count=max(int(resource.get("count") or 1), 1),
    )


def _workers(rayservice: Mapping[str, Any]) -> int:
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return int(groups[0]["replicas"]) if groups else 1


def _covers(actual: Any, wanted: Any) -> bool:
    """Every value of `wanted` is in `actual`, which may hold more (server defaults, others' labels)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and _covers(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_covers(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def _api_error(exc: ApiException) -> str:
    # Status and reason only: response bodies and headers stay out of events and status.
    return f"Kubernetes API error {exc.status} {exc.reason}"


# Blocking API calls wait for a thread in this order: a Workspace's first RayService (what a user waits
# for after `kubectl apply`), then the first write for a new Workspace (its finalizer), then the rest.
# The thread pool's own queue is first come first served: with many Workspaces created at once, each
# RayService create would queue behind the status patches that KubeRay's progress on the earlier
# ones brings about.
PRIORITY_CREATE = 0
PRIORITY_NEW = 1
PRIORITY_OTHER = 2


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


# --- the reconciler ----------------------------------------------------------------------------------


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
        self._api = api
        self._custom = CustomObjectsApi(api)
        self._core = CoreV1Api(api)
        self._kuberay = KubeRayClient(api)
        self._nodes = provisioner
        self._options = options
        self._clock = clock
        self._locks: dict[Key, asyncio.Lock] = {}
        # Reconciles waiting for their Workspace's lock: a run that has not started yet will see any
        # later change too, so one waiter per Workspace is enough however many events arrive.
        self._waiting: set[Key] = set()
        # Workspaces whose deletion has been announced with an Event.
        self._deleting: set[Key] = set()
        # The latest Workspaces, RayServices and Services seen by the watches (or written here). A
        # reconcile reads these rather than the API server; a stale copy only costs a 409 on the
        # write that relied on it, after which the next attempt reads afresh.
        self._workspaces: dict[Key, dict[str, Any]] = {}
        self._rayservices: dict[Key, dict[str, Any]] = {}
        self._services: dict[Key, dict[str, Any]] = {}
        self._rendered: dict[str, tuple[list[dict[str, Any]], InferencePlan]] = {}
        self._gate = PriorityGate(_executor_threads())

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    # what the watches report

    def observe_workspace(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Keep the copy; whether it tells anything new (not the echo of a write made here, which the
        reconcile that made it has already acted on)."""
        key = _key(body)
        held = self._workspaces.get(key)
        _remember(self._workspaces, body, deleted)
        if deleted:
            self._deleting.discard(key)
            lock = self._locks.get(key)
            if lock is not None and not lock.locked() and key not in self._waiting:
                del self._locks[key]
        if held is None:
            return True
        return _resource_version(held) != _resource_version(body) and not _older(
            body.get("metadata") or {}, held.get("metadata") or {}
        )

    def observe_rayservice(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        _remember(self._rayservices, body, deleted)

    def observe_service(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        _remember(self._services, body, deleted)

    @property
    def options(self) -> ControllerOptions:
        return self._options

    def workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The latest copy of a Workspace, if the watch has reported it."""
        return self._workspaces.get((namespace, name))

    def workspaces(self) -> list[Key]:
        """Every Workspace the watch has reported and not seen deleted."""
        return list(self._workspaces)

    async def reconcile(self, namespace: str, name: str) -> None:
        """Reconcile until nothing conflicts; after `conflict_attempts` 409s kopf retries later. Returns
        at once when another reconcile of this Workspace is already waiting to start."""
        key = (namespace, name)
        if key in self._waiting:
            return
        self._waiting.add(key)
        try:
            await self._lock(namespace, name).acquire()
        finally:
            self._waiting.discard(key)
        try:
            for attempt in range(self._options.conflict_attempts):
                try:
                    await self._reconcile_once(namespace, name, fresh=attempt > 0)
                    return
                except Conflict as exc:
                    log.info("Workspace %s/%s: %s; reading again", namespace, name, exc)
                    await asyncio.sleep(0.1 * 2**attempt)
            raise kopf.TemporaryError(
                f"Workspace {namespace}/{name} kept conflicting with other writers",
                delay=self._options.retry_delay_seconds,
            )
        finally:
            self._lock(namespace, name).release()

    async def _finalize(self, obj: dict[str, Any]) -> None:
        """Delete the children, wait until they are gone, release the nodes, then remove the finalizer.
        Raises TemporaryError while something is still on its way out, so that the caller comes back."""
        metadata = obj["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if key not in self._deleting:
            self._deleting.add(key)
            _event(obj, "Normal", "Deleting", "deleting the children and releasing the nodes")
        remaining = await self._delete_children(obj)
        if remaining:
            waiting = f"waiting for {', '.join(remaining)} to be deleted"
            raise kopf.TemporaryError(waiting, delay=self._options.retry_delay_seconds)
        if not await self._nodes.release(release_request(obj)):
            waiting = "waiting for the nodes to be released"
            _event(obj, "Normal", "ReleasingNodes", waiting)
            raise kopf.TemporaryError(waiting, delay=self._options.resync_seconds)
        await self._set_finalizer(obj, present=False, priority=PRIORITY_OTHER)
        _event(obj, "Normal", "Deleted", "children deleted and nodes released")

    async def _set_finalizer(self, obj: dict[str, Any], *, present: bool, priority: int) -> dict[str, Any]:
        """Add or remove the finalizer; the Workspace as written. The resourceVersion makes a stale copy
        end in a 409 rather than drop someone else's finalizer."""
        metadata = obj["metadata"]
        others = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
        patch = {
            "metadata": {
                "resourceVersion": metadata["resourceVersion"],
                "finalizers": [*others, FINALIZER] if present else others,
            }
        }
        patched = cast(
            dict[str, Any],
            await self._call(
                self._custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                metadata["namespace"],
                PLURAL,
                metadata["name"],
                patch,
                priority=priority,
                _content_type=MERGE_PATCH,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        self.observe_workspace(patched)
        return patched

    # one pass

    async def _reconcile_once(self, namespace: str, name: str, *, fresh: bool) -> None:
        """One pass; `fresh` reads every object from the API server instead of the watches' copies."""
        cached = None if fresh else self._workspaces.get((namespace, name))
        obj = cached if cached is not None else await self._read_workspace(namespace, name)
        if obj is None:
            return
        if obj["metadata"].get("deletionTimestamp"):
            if FINALIZER in (obj["metadata"].get("finalizers") or []):
                await self._finalize(obj)
            return
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            # Before anything is created that the deletion would have to clean up (an AKS pool).
            obj = await self._set_finalizer(obj, present=True, priority=PRIORITY_NEW)
        kind: WorkloadKind = "inference" if obj.get("inference") is not None else "tuning"
        generation = obj["metadata"].get("generation")
        errors = _validate(obj)
        if errors:
            observation = Observation(generation, invalid=catalog_problem(errors))
        elif kind == "inference":
            observation = await self._inference(parse_workspace(obj), obj, generation, fresh)
        else:
            observation = await self._tuning(parse_workspace(obj), obj, generation)
        await self._report(obj, kind, observation)

    async def _inference(
        self, ws: Workspace, obj: dict[str, Any], generation: int | None, fresh: bool
    ) -> Observation:
        assert ws.inference is not None
        overrides, config_problem = await self._engine_overrides(ws)
        try:
            (rayservice, service), plan = self._render(obj, ws, overrides)
        except ValueError as exc:
            # A custom pod template, or a name KubeRay cannot use (RenderError is a ValueError); the
            # catalogs were checked by validate_workspace.
            return Observation(generation, invalid=Problem(REASON_UNSUPPORTED_WORKSPACE, str(exc)))
        nodes = await self._nodes.ensure(
            node_request(
                ws,
                node_count=_workers(rayservice),
                gpus_per_node=plan.gpus_per_node or None,
                gpu_memory_gb=plan.sku.gpu_memory_gb if plan.sku is not None else None,
                os_disk_gb=_disk_gb(plan.preset.disk_gb),
            )
        )
        namespace, name = rayservice["metadata"]["namespace"], rayservice["metadata"]["name"]
        if fresh:
            current = await self._call(self._kuberay.get, RAYSERVICES, namespace, name)
        else:
            # Unseen by the watch means not there yet: a create that finds it after all gets a 409.
            current = self._rayservices.get((namespace, name))
        # Children are created once the nodes are ready (pods would only sit Pending before), and kept
        # in sync from then on even while a node is away.
        if config_problem is None and (nodes.ready or current is not None):
            before = current
            priority = PRIORITY_CREATE if current is None else PRIORITY_OTHER
            applied = await self._call(
                self._kuberay.apply_rayservice, rayservice, current, read=False, priority=priority
            )
            current = applied.object
            if applied.action != "unchanged":
                self.observe_rayservice(current)
            if before is None:
                _event(obj, "Normal", "RayServiceCreated", f"created RayService {name}")
            elif changed := _changed_keys(before.get("spec") or {}, rayservice["spec"]):
                _event(obj, "Normal", "RayServiceUpdated", f"updated RayService {name}: {', '.join(changed)}")
            await self._apply_service(obj, service, fresh)
        health = rayservice_health(current) if current is not None else None
        return Observation(
            generation,
            nodes=nodes,
            config=config_problem,
            service=health,
            adapters=await self._adapter_problem(ws) if health is not None and health.ready else None,
        )

    def _render(
        self, obj: Mapping[str, Any], ws: Workspace, overrides: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], InferencePlan]:
        """`render_objects` and the plan, memoised on what they read: the editable Workspace (with its
        uid, for the owner references) and the ConfigMap's overrides. Callers only read the objects."""
        key = json.dumps(
            [_editable(obj), obj["metadata"].get("uid"), overrides], sort_keys=True, default=repr
        )
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = render_objects(ws, self._options.settings, overrides), plan_for(ws, "cluster")
            if len(self._rendered) >= _MAX_MEMO:
                self._rendered.clear()
            self._rendered[key] = rendered
        return rendered

    async def _tuning(self, ws: Workspace, obj: dict[str, Any], generation: int | None) -> Observation:
        assert ws.tuning is not None
        config_problem = await self._check_tuning_config(ws)
        try:
            (rayjob,) = render_objects(ws, self._options.settings)
        except ValueError as exc:
            return Observation(generation, invalid=Problem(REASON_UNSUPPORTED_WORKSPACE, str(exc)))
        gpus, gpu_memory = None, None
        if ws.resource.instance_type:
            sku = get_sku(ws.resource.instance_type)
            gpus = plan_tuning(resolve_preset(ws.tuning.preset.name), sku, ws.tuning.method).workers
            gpu_memory = sku.gpu_memory_gb
        nodes = await self._nodes.ensure(
            node_request(
                ws,
                node_count=1,
                gpus_per_node=gpus,
                gpu_memory_gb=gpu_memory,
                os_disk_gb=_disk_gb(resolve_preset(ws.tuning.preset.name).disk_gb),
            )
        )
        namespace, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
        current = None
        for job in await self._rayjobs(namespace, ws.metadata.name or ""):
            if job["metadata"]["name"] == name:
                current = job
            elif not job["metadata"].get("deletionTimestamp"):
                # A RayJob never re-runs: a changed tuning spec got a new RayJob and the old one goes.
                stale = job["metadata"]["name"]
                await self._call(self._kuberay.delete, RAYJOBS, namespace, stale)
                _event(obj, "Normal", "RayJobReplaced", f"deleted RayJob {stale}: the tuning spec changed")
        if current is None and config_problem is None and nodes.ready:
            current = await self._call(self._kuberay.create, RAYJOBS, rayjob)
            _event(obj, "Normal", "RayJobCreated", f"created RayJob {name}")
        return Observation(
            generation,
            nodes=nodes,
            config=config_problem,
            job=rayjob_progress(current) if current is not None else None,
        )

    async def _adapter_problem(self, ws: Workspace) -> Problem | None:
        """What the running application's `/health` says about its adapters: KubeRay only knows that
        the application runs, not that an adapter image failed to pull. Read through the API server's
        service proxy; without an answer (no endpoints yet, a timeout) KubeRay's verdict stands."""
        assert ws.inference is not None
        wanted = {adapter.source.name for adapter in ws.inference.adapters}
        if not wanted:
            return None
        namespace, name = ws.metadata.namespace or "default", ws.metadata.name or ""
        try:
            # Unpreloaded, the client hands back the raw response (typed `str`, the proxied body, which
            # it would otherwise turn into a Python repr of the parsed JSON).
            response = cast(
                urllib3.BaseHTTPResponse,
                await self._thread(
                    self._core.connect_get_namespaced_service_proxy_with_path,
                    f"{name}:{SERVICE_PORT}",
                    namespace,
                    "health",
                    _preload_content=False,
                    _request_timeout=HEALTH_TIMEOUT,
                ),
            )
            try:
                health = json.loads(response.data)
            finally:
                response.release_conn()
        except (ApiException, urllib3.exceptions.HTTPError, ValueError) as exc:
            detail = _api_error(exc) if isinstance(exc, ApiException) else repr(exc)
            log.info("Workspace %s/%s: no adapter states from /health: %s", namespace, name, detail)
            return None
        return adapter_problem(health, wanted)

    # inputs

    async def _read_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        configmap = await self._found(self._core.read_namespaced_config_map, name, namespace)
        return None if configmap is None else dict(configmap.data or {})

    async def _engine_overrides(self, ws: Workspace) -> tuple[dict[str, Any] | None, Problem | None]:
        assert ws.inference is not None
        name = ws.inference.config
        if not name:
            return None, None
        data = await self._read_configmap(ws.metadata.namespace or "default", name)
        if data is None:
            return None, _missing_configmap("inference.config", name, ws)
        try:
            return engine_overrides_from_configmap(data, ws.runtime, name), None
        except ValueError as exc:
            return None, Problem(REASON_INVALID_CONFIGMAP, f"inference.config: {exc}")

    async def _check_tuning_config(self, ws: Workspace) -> Problem | None:
        assert ws.tuning is not None
        name = ws.tuning.config
        if not name:
            return None
        data = await self._read_configmap(ws.metadata.namespace or "default", name)
        if data is None:
            return _missing_configmap("tuning.config", name, ws)
        try:
            load_configmap_data(data, method=ws.tuning.method, name=f"ConfigMap {name}")
        except TuningConfigError as exc:
            return Problem(REASON_INVALID_CONFIGMAP, f"tuning.config: {exc}")
        return None

    # writes

    async def _apply_service(self, owner: dict[str, Any], desired: dict[str, Any], fresh: bool) -> None:
        metadata = desired["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        current = (
            await self._read_service(namespace, name) if fresh else self._services.get((namespace, name))
        )
        if current is None:
            created = await self._call(
                self._core.create_namespaced_service, namespace, desired, _request_timeout=REQUEST_TIMEOUT
            )
            self.observe_service(self._api.sanitize_for_serialization(created))
            _event(owner, "Normal", "ServiceCreated", f"created Service {name}")
            return
        wanted = {
            "metadata": {"labels": metadata["labels"], "ownerReferences": metadata["ownerReferences"]},
            "spec": desired["spec"],
        }
        if _covers(current, wanted):
            return
        patch = {
            "metadata": {**wanted["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": desired["spec"],
        }
        patched = await self._call(
            self._core.patch_namespaced_service,
            name,
            namespace,
            patch,
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT,
        )
        self.observe_service(self._api.sanitize_for_serialization(patched))
        _event(owner, "Normal", "ServiceUpdated", f"updated Service {name}")

    async def _read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._found(self._core.read_namespaced_service, name, namespace)
        return None if found is None else cast(dict[str, Any], self._api.sanitize_for_serialization(found))

    async def _report(self, obj: dict[str, Any], kind: WorkloadKind, observation: Observation) -> None:
        old = obj.get("status") or {}
        new = workspace_status(kind, observation, old, self._clock())
        if new == old:
            return
        metadata = obj["metadata"]
        # The resourceVersion makes this write fail with 409 if the Workspace changed since it was read,
        # rather than overwrite a status computed from a newer spec.
        patch = {
            "metadata": {"resourceVersion": metadata["resourceVersion"]},
            "status": merge_patch_diff(old, new),
        }
        patched = await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            metadata["namespace"],
            PLURAL,
            metadata["name"],
            patch,
            _content_type=MERGE_PATCH,
            _request_timeout=REQUEST_TIMEOUT,
        )
        self.observe_workspace(cast(dict[str, Any], patched))
        failing = new.get("state") in (STATE_FAILED, STATE_NOT_READY)
        was_true = {c.get("type") for c in old.get("conditions") or [] if c.get("status") == "True"}
        for condition in transitions(old, new):
            warning = condition.status == "False" and failing
            # Events for failures, for every step of the node layer (a pool takes minutes), and for
            # conditions turning True or leaving True; the pending reasons the workload passes through
            # on its way up (ResourceNotReady, Initializing, ...) are only in the status.
            nodes = condition.type == CONDITION_RESOURCE_READY
            if warning or nodes or condition.status == "True" or condition.type in was_true:
                message = f"{condition.type} is {condition.status}: {condition.message}"
                _event(obj, "Warning" if warning else "Normal", condition.reason, message)

    async def _delete_children(self, obj: dict[str, Any]) -> list[str]:
        """Delete the RayService, RayJobs and Service of a Workspace; the ones still present after."""
        metadata = obj["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        await self._call(self._kuberay.delete, RAYSERVICES, namespace, name)
        jobs = [job["metadata"]["name"] for job in await self._rayjobs(namespace, name)]
        for job in jobs:
            await self._call(self._kuberay.delete, RAYJOBS, namespace, job)
        try:
            await self._thread(
                self._core.delete_namespaced_service, name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        remaining = []
        if await self._call(self._kuberay.get, RAYSERVICES, namespace, name) is not None:
            remaining.append(f"RayService {name}")
        for job in jobs:
            if await self._call(self._kuberay.get, RAYJOBS, namespace, job) is not None:
                remaining.append(f"RayJob {job}")
        return remaining

    # API plumbing

    async def _read_workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self._found(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
        return cast(dict[str, Any] | None, found)

    async def _found(self, read: Callable[..., Any], *args: Any) -> Any | None:
        """`read(*args)` in a thread; None when the object does not exist (404)."""
        try:
            return await self._thread(read, *args, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _rayjobs(self, namespace: str, workspace: str) -> list[dict[str, Any]]:
        """Every RayJob of a Workspace: the current one and any left from an earlier tuning spec."""
        listing = await self._thread(
            self._custom.list_namespaced_custom_object,
            RAY_GROUP,
            RAY_VERSION,
            namespace,
            RAYJOBS,
            label_selector=f"{WORKSPACE_LABEL}={workspace}",
            _request_timeout=REQUEST_TIMEOUT,
        )
        return list(cast(dict[str, Any], listing).get("items") or [])

    async def _thread(
        self, fn: Callable[..., T], *args: Any, priority: int = PRIORITY_OTHER, **kwargs: Any
    ) -> T:
        """`fn` in one of the executor's threads, once the gate lets a call of `priority` through."""
        async with self._gate.slot(priority):
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def _call(
        self, fn: Callable[..., T], *args: Any, priority: int = PRIORITY_OTHER, **kwargs: Any
    ) -> T:
        """`fn` in a thread, with a 409 (stale write, or created meanwhile) turned into `Conflict`."""
        try:
            return await self._thread(fn, *args, priority=priority, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(_api_error(exc)) from None
            raise


def _missing_configmap(field_name: str, name: str, ws: Workspace) -> Problem:
    return Problem(
        REASON_CONFIGMAP_NOT_FOUND,
        f"{field_name}: ConfigMap {name} not found in namespace {ws.metadata.namespace}",
        final=False,
    )


def _disk_gb(weights_gb: float | None) -> int | None:
    """OS disk for a node: AKS's default unless the weights (in the Hugging Face cache) and the runtime
    image need more."""
    if weights_gb is None:
        return None
    needed = math.ceil(weights_gb) + RUNTIME_DISK_GB
    return needed if needed > AKS_DEFAULT_OS_DISK_GB else None


def _remember(cache: dict[Key, dict[str, Any]], body: Mapping[str, Any], deleted: bool) -> None:
    """Keep `body` as the latest copy of its object unless the cache holds a newer one (a watch
    event can overtake the answer to the write that caused it)."""
    metadata = body.get("metadata") or {}
    key = _key(body)
    if deleted:
        cache.pop(key, None)
        return
    held = cache.get(key)
    if held is None or not _older(metadata, held.get("metadata") or {}):
        # Not copied: watch events and API answers are fresh objects, and nothing here modifies them.
        cache[key] = dict(body)


def _key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")


def _resource_version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _older(metadata: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `metadata` describes an older version of the same object than `than`. resourceVersions
    are opaque to clients, but the API server's are etcd revisions: compare them when both are."""
    if metadata.get("uid") != than.get("uid"):
        return False
    mine, theirs = str(metadata.get("resourceVersion") or ""), str(than.get("resourceVersion") or "")
    return mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)


# What kopf's change handlers recorded on Workspaces in earlier versions of the controller.
_KOPF_ANNOTATIONS = frozenset(
    f"kairay.io/{key}" for key in ("last-handled-configuration", "reconcile", "finalize")
)
# Memoised results are dropped all at once beyond this many.
_MAX_MEMO = 10_000
# Validation runs on every pass but depends only on what a user can edit (not on status or on the
# resourceVersion), so its verdicts are memoised on that.
_VALIDATIONS: dict[str, list[FieldError]] = {}


def _editable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a user can change in a Workspace: all but the status, the server's metadata and kopf's
    bookkeeping annotations."""
    metadata = obj.get("metadata") or {}
    editable = {key: value for key, value in obj.items() if key not in ("metadata", "status")}
    editable["metadata"] = {k: metadata.get(k) for k in ("name", "namespace", "labels")}
    editable["metadata"]["annotations"] = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in _KOPF_ANNOTATIONS
    }
    return editable


def _validate(obj: Mapping[str, Any]) -> list[FieldError]:
    key = json.dumps(_editable(obj), sort_keys=True, default=repr)
    errors = _VALIDATIONS.get(key)
    if errors is None:
        errors = validate_workspace(dict(obj))
        if len(_VALIDATIONS) >= _MAX_MEMO:
            _VALIDATIONS.clear()
        _VALIDATIONS[key] = errors
    return errors


def _changed_keys(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    return sorted(key for key, value in desired.items() if current.get(key) != value)


def _event(obj: Mapping[str, Any], kind: EventType, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, obj), type=kind, reason=reason, message=message)


# --- kopf wiring -------------------------------------------------------------------------------------


def connection_info(configuration: Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from a `kubernetes` client configuration (as `kopf.login_via_client` does,
    but for whichever configuration the controller loaded: in-cluster or an explicit kubeconfig)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    # "Bearer <token>", or a bare token (RFC 7235, appendix C).
    scheme, _, token = header.rpartition(" ") if header else ("", "", "")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff-base storage, for an operator without change handlers: kopf builds the essence of
    every event it processes (a deep copy of the object) to detect changes no handler here asks about,
    so nothing is built, fetched or stored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@dataclass
class _Runtime:
    """What the operator builds at start-up, on kopf's event loop (the Azure SDK's sessions belong to
    the loop that opened them)."""

    api: ApiClient | None = None
    provisioner: NodeProvisioner | None = None
    reconciler: Reconciler | None = None
    resync: asyncio.Task[None] | None = None
    # A context of kopf's object handlers: `kopf.event` posts through a queue that kopf puts there, so
    # reconciles started outside a handler (resync, retries) run in a copy of it.
    handler_context: contextvars.Context | None = None
    # Reconciles started outside a handler, kept referenced until they finish.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # One pending retry per Workspace whose last reconcile failed or is waiting for a deletion.
    retries: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)

    def get(self) -> Reconciler:
        if self.reconciler is None:
            raise kopf.TemporaryError("the controller is still starting", delay=1)
        return self.reconciler

    def spawn(self, namespace: str, name: str) -> None:
        """Reconcile a Workspace in the background, in a copy of a handler's context."""
        if self.handler_context is None:
            return
        task = asyncio.create_task(self.run(namespace, name), context=self.handler_context.copy())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, namespace: str, name: str) -> None:
        """Reconcile a Workspace; a failure (an API error, conflicts that never settled, a deletion still
        under way) becomes a log line, an Event for API errors, and a retry after the delay it asks
        for: kopf retries no event handler, and every reconcile here starts from one."""
        reconciler = self.get()
        try:
            await reconciler.reconcile(namespace, name)
        except ApiException as exc:
            log.warning("Workspace %s/%s: %s", namespace, name, _api_error(exc))
            body = reconciler.workspace(namespace, name)
            if body is not None:
                _event(body, "Warning", "ReconcileFailed", _api_error(exc))
            self.retry(namespace, name, reconciler.options.retry_delay_seconds)
        except kopf.TemporaryError as exc:
            log.info("Workspace %s/%s: %s", namespace, name, exc)
            self.retry(namespace, name, exc.delay or reconciler.options.retry_delay_seconds)

    def retry(self, namespace: str, name: str, delay: float) -> None:
        key = (namespace, name)
        if key in self.retries:
            return

        def fire() -> None:
            del self.retries[key]
            self.spawn(namespace, name)

        self.retries[key] = asyncio.get_running_loop().call_later(delay, fire)


def _executor_threads() -> int:
    # asyncio's default executor: ThreadPoolExecutor's default size.
    return min(32, (os.cpu_count() or 1) + 4)


def build_registry(
    options: ControllerOptions, load_configuration: ConfigurationLoader, make_provisioner: ProvisionerFactory
) -> kopf.OperatorRegistry:
    """Every kopf handler of the controller, in a registry of its own (nothing global).

    Only event handlers: every Workspace event (the first one included) reconciles at once, and the
    deletion is a reconcile too, which removes the finalizer itself. kopf's create/update/delete
    handlers would first add kopf's finalizer in a round trip of its own, then record each handler's
    progress and the last-handled spec in a patch per change, each echoed back as a watch event.
    """
    registry = kopf.OperatorRegistry()
    runtime = _Runtime()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # Loaded afresh on each login: in-cluster service account tokens rotate.
        return connection_info(load_configuration())

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf strips its finalizer from objects that no handler of its needs it for: it must not be
        # the controller's own, which the reconcile adds and removes.
        settings.persistence.finalizer = KOPF_FINALIZER
        settings.persistence.diffbase_storage = _NoDiffBase()
        # kopf turns every INFO log of a handler into an Event; the controller posts the Events worth
        # reading itself and keeps kopf's for warnings and errors.
        settings.posting.level = logging.WARNING
        # Renew watches regularly: a stream stalled behind a proxy would otherwise go unnoticed.
        settings.watching.server_timeout = 300
        configuration = load_configuration()
        # Reconciles run their blocking calls in the default executor's threads; one pooled connection
        # per thread, so that none opens a connection of its own (and drops it) under load.
        configuration.connection_pool_maxsize = max(
            configuration.connection_pool_maxsize, _executor_threads()
        )
        runtime.api = ApiClient(configuration)
        runtime.provisioner = make_provisioner(runtime.api)
        runtime.reconciler = Reconciler(runtime.api, runtime.provisioner, options)
        runtime.resync = asyncio.create_task(resync_forever(runtime.reconciler))

    async def resync_forever(reconciler: Reconciler) -> None:
        """Every Workspace once per `resync_seconds`, spread over the period (one task for them all,
        rather than a kopf timer per Workspace), for what no watch reports: nodes, ConfigMaps, pools."""
        while True:
            keys = reconciler.workspaces()
            if not keys or runtime.handler_context is None:
                await asyncio.sleep(options.resync_seconds)
                continue
            for namespace, name in keys:
                await asyncio.sleep(options.resync_seconds / len(keys))
                runtime.spawn(namespace, name)

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        if runtime.resync is not None:
            runtime.resync.cancel()
        for handle in runtime.retries.values():
            handle.cancel()
        if runtime.provisioner is not None:
            await runtime.provisioner.close()
        if runtime.api is not None:
            runtime.api.close()

    @kopf.on.event(*WORKSPACES, registry=registry)
    async def workspace_seen(
        *, type: str | None, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> None:
        if runtime.handler_context is None:
            runtime.handler_context = contextvars.copy_context()
        deleted = type == "DELETED"
        if runtime.get().observe_workspace(body, deleted=deleted) and not deleted:
            await runtime.run(namespace or "default", name)

    @kopf.on.event("", "v1", "services", labels=MANAGED_BY, registry=registry)
    async def service_seen(*, type: str | None, body: kopf.Body, **_: Any) -> None:
        runtime.get().observe_service(body, deleted=type == "DELETED")

    @kopf.on.event(RAY_GROUP, RAY_VERSION, RAYSERVICES, labels=MANAGED_BY, registry=registry)
    @kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels=MANAGED_BY, registry=registry)
    async def child_changed(
        *, type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        if body.get("kind") == "RayService":
            runtime.get().observe_rayservice(body, deleted=type == "DELETED")
        owner = labels.get(WORKSPACE_LABEL)
        if owner:
            await runtime.run(namespace or "default", owner)

    return registry
