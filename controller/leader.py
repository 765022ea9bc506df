"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it: of any
number of controller replicas, only the holder of the Lease reconciles; the others keep their watch
caches warm and take over once the holder stops renewing.

Why a Lease and not kopf's peering: kopf pauses every operator that sees a peer of the same or a
higher priority, so identical replicas (one Deployment) would all pause, and a priority per replica
is not something a Deployment can hand out. A Lease also needs no CRD of kopf's in the cluster.

Expiry is judged on this replica's own clock: a Lease whose record has not changed for
`lease_seconds` since this replica first saw it is free, whatever time the holder wrote into it (the
replicas' clocks need not agree).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client import ApiClient, CoordinationV1Api
from kubernetes.client.exceptions import ApiException

from kuberay.client import Conflict, NotFound, call, describe

log = logging.getLogger(__name__)

LEASE_NAME = "kairay-controller"
# client-go's defaults: a 15 s lease, renewed every third of it.
LEASE_SECONDS = 15.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def identity() -> str:
    """This replica: the pod's name (its hostname) and a suffix unique to this process."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _micro(moment: datetime) -> str:
    # MicroTime, as the API server stores renewTime and acquireTime.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return _micro(datetime.now(UTC))


def lease_namespace(environ: Mapping[str, str]) -> str:
    """Where the Lease lives: the controller's own namespace ($POD_NAMESPACE from the Deployment's
    downward API, else the service account's), or `default` outside a cluster."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _won(fn: Callable[..., Any], *args: Any) -> bool:
    """Write the Lease; False when another replica wrote it first (409)."""
    try:
        call(fn, *args)
    except Conflict:
        return False
    return True


class LeaderElector:
    """Acquires and renews the Lease `namespace/LEASE_NAME`; `leading` says whether this replica
    holds it. `on_change(leading)` runs (on the event loop) whenever that changes."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        on_change: Callable[[bool], None],
        *,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._api = api
        self._leases = CoordinationV1Api(api)
        self._namespace = namespace
        self._on_change = on_change
        self._lease_seconds = lease_seconds
        self.identity = identity()
        self.leading = False
        # The Lease's record as last seen, and when (monotonic) it was first seen so.
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0

    async def run(self) -> None:
        """Try to acquire or renew every third of the lease, until cancelled; then release it."""
        try:
            while True:
                try:
                    leading = await asyncio.to_thread(self._try)
                except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                    # The API server is unreachable or refuses: this round is lost, not the loop.
                    log.warning(
                        "leader election: %s", describe(exc) if isinstance(exc, ApiException) else exc
                    )
                    # Not renewed: once the lease has run out, another replica may hold it.
                    leading = self.leading and time.monotonic() - self._seen_at < self._lease_seconds
                self._set(leading)
                await asyncio.sleep(self._lease_seconds / 3)
        finally:
            if self.leading:
                self._set(False)
                await asyncio.to_thread(self._release)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            what = "holding" if leading else "no longer holding"
            log.info("%s the Lease %s/%s as %s", what, self._namespace, LEASE_NAME, self.identity)
            self._on_change(leading)

    def _read(self) -> dict[str, Any]:
        """The Lease as a plain dict; NotFound when there is none yet."""
        lease = call(self._leases.read_namespaced_lease, LEASE_NAME, self._namespace)
        return dict(self._api.sanitize_for_serialization(lease))

    def _try(self) -> bool:
        """One round: acquire the Lease if it is free, renew it if ours; whether this replica holds it."""
        try:
            lease = self._read()
        except NotFound:
            spec = self._spec(transitions=0, acquired=_now())
            body = {"metadata": {"name": LEASE_NAME, "namespace": self._namespace}, "spec": spec}
            return _won(self._leases.create_namespaced_lease, self._namespace, body)
        spec = lease.get("spec") or {}
        record = tuple(spec.get(k) for k in ("holderIdentity", "renewTime", "leaseTransitions"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self._lease_seconds)
        ours = spec.get("holderIdentity") == self.identity
        free = not spec.get("holderIdentity") or time.monotonic() - self._seen_at > duration
        if not (ours or free):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        held_since = spec.get("acquireTime")
        acquired = _micro(datetime.fromisoformat(str(held_since))) if ours and held_since else _now()
        body = {
            "metadata": {"name": LEASE_NAME, "resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(transitions=transitions, acquired=acquired),
        }
        # The resourceVersion makes two replicas taking over at once end with one winner and a 409.
        return _won(self._leases.replace_namespaced_lease, LEASE_NAME, self._namespace, body)

    def _spec(self, *, transitions: int, acquired: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(int(self._lease_seconds), 1),
            "acquireTime": acquired,
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }

    def _release(self) -> None:
        """Give the Lease up on a clean stop (client-go's ReleaseOnCancel), so that another replica
        takes over at once rather than after the lease runs out."""
        try:
            lease = self._read()
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            body = {
                "metadata": {"name": LEASE_NAME, "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()},
            }
            call(self._leases.replace_namespaced_lease, LEASE_NAME, self._namespace, body)
        except ApiException as exc:
            log.warning("leader election: could not release the Lease: %s", describe(exc))
