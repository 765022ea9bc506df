"""The kopf wiring: credentials, operator settings, the watches, and when a reconcile runs.

A reconcile (`controller.reconcile`) runs:

- on every event of a Workspace that brings something new (the first one included, not the echoes of
  the controller's own writes);
- on every event of a RayService or RayJob kairay owns, so the status follows KubeRay at once;
- from one resync task that visits every Workspace each `resync_seconds`, for what is not watched:
  nodes, ConfigMaps, Azure agent pools;
- again after a delay when a run failed or waits for a deletion (kopf retries no event handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from controller.cache import Key
from controller.events import event
from controller.finalizer import KOPF_FINALIZER
from controller.gate import executor_threads
from controller.kube import WORKSPACES
from controller.leader import LeaderElector
from controller.nodes.base import NodeProvisioner
from controller.reconcile import Reconciler
from controller.settings import ControllerOptions
from controller.workloads.common import MANAGED_BY, WORKSPACE_LABEL
from kuberay.client import RAYJOBS, RAYSERVICES, describe
from kuberay.cluster import GROUP as RAY_GROUP
from kuberay.cluster import VERSION as RAY_VERSION

log = logging.getLogger(__name__)

ProvisionerFactory = Callable[[ApiClient], NodeProvisioner]
ConfigurationLoader = Callable[[], Configuration]


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
    # Only the replica holding the Lease reconciles (`controller.leader`).
    elector: LeaderElector | None = None
    election: asyncio.Task[None] | None = None
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

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.leading

    def lead(self, leading: bool) -> None:
        """Leadership changed: a new leader reconciles every Workspace its watches have seen, read
        afresh (the previous leader may have changed anything meanwhile)."""
        if leading and self.reconciler is not None:
            for namespace, name in self.reconciler.cache.workspaces():
                self.spawn(namespace, name, fresh=True)

    def spawn(self, namespace: str, name: str, *, fresh: bool = False) -> None:
        """Reconcile a Workspace in the background, in a copy of a handler's context."""
        if self.handler_context is None:
            return
        task = asyncio.create_task(
            self.run(namespace, name, fresh=fresh), context=self.handler_context.copy()
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, namespace: str, name: str, *, fresh: bool = False) -> None:
        """Reconcile a Workspace; a failure (an API error, conflicts that never settled, a deletion still
        under way) becomes a log line, an Event for API errors, and a retry after the delay it asks
        for: kopf retries no event handler, and every reconcile here starts from one."""
        reconciler = self.get()
        if not self.leading:
            return
        try:
            await reconciler.reconcile(namespace, name, fresh=fresh)
        except ApiException as exc:
            log.warning("Workspace %s/%s: %s", namespace, name, describe(exc))
            body = reconciler.cache.workspace(namespace, name)
            if body is not None:
                event(body, "Warning", "ReconcileFailed", describe(exc))
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
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, executor_threads())
        runtime.api = ApiClient(configuration)
        runtime.provisioner = make_provisioner(runtime.api)
        runtime.reconciler = Reconciler(runtime.api, runtime.provisioner, options)
        runtime.resync = asyncio.create_task(resync_forever(runtime.reconciler))
        runtime.elector = LeaderElector(
            runtime.api, options.lease_namespace, runtime.lead, lease_seconds=options.lease_seconds
        )
        runtime.election = asyncio.create_task(runtime.elector.run())

    async def resync_forever(reconciler: Reconciler) -> None:
        """Every Workspace once per `resync_seconds`, spread over the period (one task for them all,
        rather than a kopf timer per Workspace), for what no watch reports: nodes, ConfigMaps, pools."""
        while True:
            keys = reconciler.cache.workspaces()
            if not keys or runtime.handler_context is None:
                await asyncio.sleep(options.resync_seconds)
                continue
            for namespace, name in keys:
                await asyncio.sleep(options.resync_seconds / len(keys))
                # Read afresh: a watch that dropped and re-listed reports no deletion it missed.
                runtime.spawn(namespace, name, fresh=True)

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        if runtime.resync is not None:
            runtime.resync.cancel()
        for handle in runtime.retries.values():
            handle.cancel()
        if runtime.election is not None:
            # Released before the client closes, so that another replica takes over at once.
            runtime.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runtime.election
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
        runtime.get().cache.observe_service(body, deleted=type == "DELETED")

    @kopf.on.event(RAY_GROUP, RAY_VERSION, RAYSERVICES, labels=MANAGED_BY, registry=registry)
    @kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels=MANAGED_BY, registry=registry)
    async def child_changed(
        *, type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        if body.get("kind") == "RayService":
            runtime.get().cache.observe_rayservice(body, deleted=type == "DELETED")
        owner = labels.get(WORKSPACE_LABEL)
        if owner:
            await runtime.run(namespace or "default", owner)

    return registry
