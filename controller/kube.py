"""Every Kubernetes call the controller makes, each in a thread once the priority gate lets it
through, and each through `kuberay.client.call`: the one place a 404 becomes `NotFound` (or None, for
reads) and a 409 `Conflict`.

The controller never reads Secrets: it references them by name in the manifests it writes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, TypeVar, cast

import urllib3
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi, V1DeleteOptions, V1Preconditions

from controller.gate import PRIORITY_OTHER, PriorityGate, executor_threads
from controller.workloads.common import WORKSPACE_LABEL
from kairay.api.workspace import GROUP
from kuberay.client import RAYJOBS, ApplyResult, KubeRayClient, Plural, call, found
from kuberay.cluster import GROUP as RAY_GROUP
from kuberay.cluster import VERSION as RAY_VERSION

T = TypeVar("T")

VERSION = "v1beta1"
PLURAL = "workspaces"
WORKSPACES = (GROUP, VERSION, PLURAL)
MERGE_PATCH = "application/merge-patch+json"
# Seconds any single API call may take; a hung connection must not hold a Workspace's lock forever.
REQUEST_TIMEOUT = 30
# The application's own /health answers at once; a slow one must not stall the reconcile.
HEALTH_TIMEOUT = 5
# Its answer lists a few adapters; anything larger is not one, and is not read into memory.
HEALTH_MAX_BYTES = 1 << 20


class Kube:
    """The API calls of the reconcile, async. Objects come back as plain dicts."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api
        self._custom = CustomObjectsApi(api)
        self._core = CoreV1Api(api)
        # The probe's own client, without urllib3's retries: they would repeat a timed-out read, and
        # HEALTH_TIMEOUT would bound each attempt rather than the probe.
        probing = copy.copy(api.configuration)
        probing.retries = False
        self._probe = CoreV1Api(ApiClient(probing))
        self._kuberay = KubeRayClient(api)
        self._gate = PriorityGate(executor_threads())

    # Workspaces

    async def workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    async def patch_workspace(
        self, namespace: str, name: str, patch: dict[str, Any], *, priority: int = PRIORITY_OTHER
    ) -> dict[str, Any]:
        return await self._dict(
            self._custom.patch_namespaced_custom_object,
            *(GROUP, VERSION, namespace, PLURAL, name, patch),
            priority=priority,
            _content_type=MERGE_PATCH,
        )

    async def patch_workspace_status(
        self, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._dict(
            self._custom.patch_namespaced_custom_object_status,
            *(GROUP, VERSION, namespace, PLURAL, name, patch),
            _content_type=MERGE_PATCH,
        )

    # ConfigMaps and Services

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        configmap = await self._call(
            found, self._core.read_namespaced_config_map, name, namespace, _request_timeout=REQUEST_TIMEOUT
        )
        return None if configmap is None else dict(configmap.data or {})

    async def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(self._core.read_namespaced_service, name, namespace)

    async def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._dict(self._core.create_namespaced_service, namespace, body)

    async def patch_service(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._dict(
            self._core.patch_namespaced_service, name, namespace, patch, _content_type=MERGE_PATCH
        )

    async def delete_service(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete the Service of `uid` (a 409 if the name is now another's)."""
        # `found`: a Service already gone is what a delete wants.
        await self._call(
            found,
            self._core.delete_namespaced_service,
            name,
            namespace,
            body=V1DeleteOptions(preconditions=V1Preconditions(uid=uid)),
            _request_timeout=REQUEST_TIMEOUT,
        )

    async def service_proxy(self, namespace: str, service: str, path: str) -> bytes:
        """The body a Service's `path` answers with, through the API server's service proxy. Raises
        ValueError for a body over `HEALTH_MAX_BYTES` (only that much is read), TimeoutError for one
        that takes over `HEALTH_TIMEOUT` to arrive."""
        # Unpreloaded, the client hands back the raw response (typed `str`, the proxied body, which it
        # would otherwise turn into a Python repr of the parsed JSON).
        response = cast(
            urllib3.BaseHTTPResponse,
            await self._call(
                call,
                self._probe.connect_get_namespaced_service_proxy_with_path,
                service,
                namespace,
                path,
                _preload_content=False,
                _request_timeout=HEALTH_TIMEOUT,
            ),
        )
        try:
            # A whole-body deadline: the socket timeout alone lets an answer trickle in forever.
            body = await asyncio.wait_for(
                asyncio.to_thread(response.read, HEALTH_MAX_BYTES + 1), HEALTH_TIMEOUT
            )
        finally:
            # Closed, not returned to the pool: an unread rest must not be the next request's answer.
            response.close()
        if len(body) > HEALTH_MAX_BYTES:
            raise ValueError(f"the answer is larger than {HEALTH_MAX_BYTES} bytes")
        return bytes(body)

    # KubeRay's RayServices and RayJobs

    async def get(self, plural: Plural, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(self._kuberay.get, plural, namespace, name)

    async def apply_rayservice(
        self, desired: dict[str, Any], current: dict[str, Any] | None, *, priority: int
    ) -> ApplyResult:
        return await self._call(
            self._kuberay.apply_rayservice, desired, current, read=False, priority=priority
        )

    async def create_rayjob(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call(self._kuberay.create, RAYJOBS, body)

    async def delete(self, plural: Plural, namespace: str, name: str, *, uid: str) -> bool:
        return await self._call(self._kuberay.delete, plural, namespace, name, uid=uid)

    async def rayjobs(self, namespace: str, workspace: str) -> list[dict[str, Any]]:
        """Every RayJob of a Workspace: the current one and any left from an earlier tuning spec."""
        listing = await self._dict(
            self._custom.list_namespaced_custom_object,
            *(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS),
            label_selector=f"{WORKSPACE_LABEL}={workspace}",
        )
        return list(listing.get("items") or [])

    # plumbing

    async def _read(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """`fn(*args)`, an object as a dict; None when it does not exist."""
        obj = await self._call(found, fn, *args, _request_timeout=REQUEST_TIMEOUT)
        return None if obj is None else self._plain(obj)

    async def _dict(
        self, fn: Callable[..., Any], *args: Any, priority: int = PRIORITY_OTHER, **kwargs: Any
    ) -> dict[str, Any]:
        """`fn(*args)` with statuses translated, its answer as a dict."""
        answer = await self._call(
            call, fn, *args, priority=priority, _request_timeout=REQUEST_TIMEOUT, **kwargs
        )
        return self._plain(answer)

    def _plain(self, obj: Any) -> dict[str, Any]:
        # Custom objects come back as dicts already; core objects are models.
        return (
            obj if isinstance(obj, dict) else cast(dict[str, Any], self._api.sanitize_for_serialization(obj))
        )

    async def _call(
        self, fn: Callable[..., T], *args: Any, priority: int = PRIORITY_OTHER, **kwargs: Any
    ) -> T:
        """`fn` in one of the executor's threads, once the gate lets a call of `priority` through."""
        async with self._gate.slot(priority):
            return await asyncio.to_thread(fn, *args, **kwargs)
