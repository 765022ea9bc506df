"""The finalizer: added by a Workspace's first reconcile before it creates anything that the deletion
would have to clean up (an AKS pool); removed once the children are gone and the nodes released.

The children are deleted explicitly (owner references would get them too, but later), then the node
provisioner releases the nodes (an AKS pool is deleted), and only then is the finalizer removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from controller.cache import Key
from controller.events import event
from controller.gate import PRIORITY_OTHER
from controller.kube import Kube
from controller.nodes.base import NodeProvisioner, NodeRequest
from controller.ownership import owned_by
from controller.settings import ControllerOptions
from kuberay.client import RAYJOBS, RAYSERVICES, describe

FINALIZER = "kairay.io/finalizer"
# kopf's finalizer, which kopf would add for handlers that need one: none of the controller's does.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def has_finalizer(obj: Mapping[str, Any]) -> bool:
    return FINALIZER in (obj["metadata"].get("finalizers") or [])


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


class Finalizer:
    def __init__(self, kube: Kube, nodes: NodeProvisioner, options: ControllerOptions) -> None:
        self._kube = kube
        self._nodes = nodes
        self._options = options
        # Workspaces whose deletion has been announced with an Event.
        self._deleting: set[Key] = set()

    def forget(self, key: Key) -> None:
        """The Workspace is gone."""
        self._deleting.discard(key)

    async def set(self, obj: dict[str, Any], *, present: bool, priority: int) -> dict[str, Any]:
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
        return await self._kube.patch_workspace(
            metadata["namespace"], metadata["name"], patch, priority=priority
        )

    async def finalize(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Delete the children, wait until they are gone, release the nodes, then remove the finalizer;
        the Workspace as written. Raises TemporaryError while something is still on its way out, so
        that the caller comes back."""
        metadata = obj["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if key not in self._deleting:
            self._deleting.add(key)
            event(obj, "Normal", "Deleting", "deleting the children and releasing the nodes")
        try:
            remaining = await self._delete_children(obj)
        except ApiException as exc:
            # The finalizer stays until the children are really gone; the Event says what is stuck.
            failed = f"could not delete the children: {describe(exc)}; retrying"
            event(obj, "Warning", "DeleteFailed", failed)
            raise kopf.TemporaryError(failed, delay=self._options.retry_delay_seconds) from None
        if remaining:
            waiting = f"waiting for {', '.join(remaining)} to be deleted"
            raise kopf.TemporaryError(waiting, delay=self._options.retry_delay_seconds)
        if not await self._nodes.release(release_request(obj)):
            waiting = "waiting for the nodes to be released"
            event(obj, "Normal", "ReleasingNodes", waiting)
            raise kopf.TemporaryError(waiting, delay=self._options.resync_seconds)
        written = await self.set(obj, present=False, priority=PRIORITY_OTHER)
        event(obj, "Normal", "Deleted", "children deleted and nodes released")
        return written

    async def _delete_children(self, obj: dict[str, Any]) -> list[str]:
        """Delete the RayService, RayJobs and Service this Workspace owns (an object that only has the
        name stays: `controller.ownership`); the ones still present after."""
        metadata = obj["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], str(metadata.get("uid") or "")
        rayservice = await self._kube.get(RAYSERVICES, namespace, name)
        if rayservice is not None and owned_by(rayservice, uid):
            await self._kube.delete(RAYSERVICES, namespace, name, uid=rayservice["metadata"]["uid"])
        jobs = [job for job in await self._kube.rayjobs(namespace, name) if owned_by(job, uid)]
        for job in jobs:
            await self._kube.delete(RAYJOBS, namespace, job["metadata"]["name"], uid=job["metadata"]["uid"])
        service = await self._kube.service(namespace, name)
        if service is not None and owned_by(service, uid):
            await self._kube.delete_service(namespace, name, uid=service["metadata"]["uid"])
        remaining = []
        rayservice = await self._kube.get(RAYSERVICES, namespace, name)
        if rayservice is not None and owned_by(rayservice, uid):
            remaining.append(f"RayService {name}")
        for job in jobs:
            left = await self._kube.get(RAYJOBS, namespace, job["metadata"]["name"])
            if left is not None and owned_by(left, uid):
                remaining.append(f"RayJob {job['metadata']['name']}")
        service = await self._kube.service(namespace, name)
        if service is not None and owned_by(service, uid):
            remaining.append(f"Service {name}")
        return remaining
