"""One AKS user agent pool per Workspace, driven by the pool's state in ARM rather than by pollers.

Each `ensure` call GETs the pool and acts on its `provisioningState`, so a restarted controller picks
up an operation that is still running instead of starting a second one, and nothing here waits for a
long-running operation: PUT/DELETE are sent with polling disabled and the next `ensure` looks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineRequest
from azure.identity.aio import DefaultAzureCredential
from azure.mgmt.containerservice import models as aks
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.core.policies import AsyncARMChallengeAuthenticationPolicy
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from controller.nodes.base import (
    GPU_TAINT,
    NodeReport,
    NodeRequest,
    Reason,
    backoff_seconds,
    desired_agent_pool,
    node_is_ready,
    node_name,
    pool_name,
    pool_node_labels,
)
from controller.settings import is_loopback_url

log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
_CREDENTIAL_CODES = {"CredentialUnavailable", "Unauthorized", "Forbidden"}
_IN_PROGRESS = {"Creating", "Updating", "Scaling", "Upgrading", "Starting", "Stopping", "Canceling"}


@dataclass(frozen=True)
class AzureFailure:
    """Azure's own error code and message, and the condition reason it maps to."""

    reason: str
    code: str
    message: str

    def describe(self) -> str:
        return f"{self.code}: {self.message}"


def classify_azure_error(code: str, message: str) -> str:
    """Condition reason for an ARM error code (AKS words quota errors in several ways)."""
    lowered = f"{code} {message}".lower()
    if "quota" in lowered:
        return Reason.QUOTA_EXCEEDED
    if "sku" in code.lower() or "vmsize" in code.lower() or "sku not available" in lowered:
        return Reason.SKU_NOT_AVAILABLE
    # AuthorizationFailed, LinkedAuthorizationFailed, AuthenticationFailed, InvalidAuthenticationToken...
    if "authoriz" in code.lower() or "authenticat" in code.lower() or code in _CREDENTIAL_CODES:
        return Reason.AUTHORIZATION_FAILED
    return Reason.AZURE_ERROR


def failure_from_exception(exc: AzureError) -> AzureFailure:
    """Pull Azure's error code and message out of an SDK exception (never headers or tokens)."""
    code = ""
    message = exc.message or str(exc)
    if isinstance(exc, HttpResponseError):
        if exc.error is not None:
            code = exc.error.code or ""
            message = exc.error.message or message
        if not code and exc.status_code in (401, 403):
            code = "AuthorizationFailed"
    if not code and isinstance(exc, ClientAuthenticationError):
        # Raised by the credential itself, before any request reached Azure.
        code = "CredentialUnavailable"
    code = code or type(exc).__name__
    return AzureFailure(classify_azure_error(code, message), code, message)


def failure_from_pool(pool: aks.AgentPool) -> AzureFailure:
    error = pool.status.provisioning_error if pool.status is not None else None
    code = (error.code if error is not None else None) or "ProvisioningFailed"
    message = (error.message if error is not None else None) or "the agent pool is in state Failed"
    reason = classify_azure_error(code, message)
    return AzureFailure(
        Reason.POOL_PROVISIONING_FAILED if reason == Reason.AZURE_ERROR else reason, code, message
    )


def retry_after(exc: AzureError) -> float:
    """The seconds a 429/503 answer's Retry-After asks for (0 when absent or not a number of seconds)."""
    response = exc.response if isinstance(exc, HttpResponseError) else None
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: rare from ARM, and the backoff still applies


class LoopbackAuthenticationPolicy(AsyncARMChallengeAuthenticationPolicy):
    """ARM bearer auth that also sends the token over plain http, to loopback addresses only.

    The SDK refuses bearer tokens over http, rightly; a fake ARM on this machine has no TLS. For
    tests: any other http URL is still refused by the SDK.
    """

    async def on_request(self, request: PipelineRequest[Any]) -> None:
        if is_loopback_url(request.http_request.url):
            request.context.options["enforce_https"] = False
        await super().on_request(request)


class StaticTokenCredential(AsyncTokenCredential):
    """A fixed bearer token, for a fake ARM on this machine (tests); never for Azure itself."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        # The fake does not expire tokens; an hour keeps the SDK from asking on every request.
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class _RetryState:
    """Backoff bookkeeping for one Workspace; lost on restart, which only resets the backoff."""

    attempts: int = 0
    retry_at: float | None = None
    failure: AzureFailure | None = None


class AksProvisioner:
    """`NodeProvisioner` backed by one AKS user agent pool per Workspace.

    `credential` defaults to `azure.identity.aio.DefaultAzureCredential`. `client_kwargs` go to
    `ContainerServiceClient` unchanged (for example `authentication_policy` or `per_call_policies`);
    the defaults are the secure ones, tests against a loopback fake ARM override them. Use and close
    it on one event loop: the SDK's HTTP session belongs to the loop of its first request.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        cluster_name: str,
        credential: AsyncTokenCredential | None = None,
        *,
        base_url: str | None = None,
        core_v1_api: CoreV1Api | None = None,
        backoff_base_seconds: float = 15.0,
        backoff_max_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        **client_kwargs: Any,
    ) -> None:
        self._resource_group = resource_group
        self._cluster = cluster_name
        self._owns_credential = credential is None
        self._credential = credential or DefaultAzureCredential()
        self._client = ContainerServiceClient(
            self._credential, subscription_id, base_url=base_url, **client_kwargs
        )
        # The default client uses the configuration the controller loaded (in-cluster or kubeconfig).
        self._core = core_v1_api or CoreV1Api()
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._clock = clock
        self._retry: dict[str, _RetryState] = {}

    async def close(self) -> None:
        await self._client.close()
        if self._owns_credential:
            await self._credential.close()

    async def __aenter__(self) -> AksProvisioner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure(self, req: NodeRequest) -> NodeReport:
        name = pool_name(req.namespace, req.name)
        state = self._retry.setdefault(req.uid, _RetryState())
        try:
            pool = await self._get(name)
        except AzureError as exc:
            return self._record_failure(req, state, failure_from_exception(exc), retry_after(exc))

        if pool is None:
            return await self._write(
                req, state, name, desired_agent_pool(req), f"creating agent pool {name}", create=True
            )

        provisioning = pool.provisioning_state or ""
        if provisioning in _IN_PROGRESS:
            return NodeReport.of(
                req, False, Reason.POOL_PROVISIONING, f"agent pool {name} is {provisioning}"
            )
        if provisioning == "Deleting":
            return NodeReport.of(
                req, False, Reason.POOL_DELETING, f"agent pool {name} is being deleted"
            )
        if (pool.vm_size or "").lower() != req.instance_type.lower():
            # AKS cannot change the VM size of an existing pool, and deleting someone's pool to fix
            # it is not this controller's call.
            return NodeReport.of(
                req,
                False,
                Reason.POOL_MISMATCH,
                f"agent pool {name} has vmSize {pool.vm_size}, the Workspace asks for {req.instance_type}; "
                "AKS cannot resize VMs of a pool: delete the pool to recreate it",
            )
        if provisioning == "Failed":
            if state.failure is None:
                return self._record_failure(req, state, failure_from_pool(pool))
            # AKS reconciles a Failed pool on the next PUT; `_write` holds it back until the backoff ends.
            action = f"retrying agent pool {name} after {state.failure.code}"
            return await self._write(req, state, name, self._updated(pool, req), action)

        if not self._matches(pool, req):
            action = (
                f"resizing agent pool {name} from {pool.count} to {req.node_count} nodes"
                if pool.count != req.node_count
                else f"updating labels and taints of agent pool {name}"
            )
            return await self._write(req, state, name, self._updated(pool, req), action)

        self._retry.pop(req.uid, None)
        return await self._check_nodes(req, name)

    async def release(self, req: NodeRequest) -> bool:
        name = pool_name(req.namespace, req.name)
        try:
            pool = await self._get(name)
            if pool is None:
                self._retry.pop(req.uid, None)
                return True
            if pool.provisioning_state == "Deleting":
                return False
            log.info("deleting agent pool %s of Workspace %s/%s", name, req.namespace, req.name)
            await self._client.agent_pools.begin_delete(
                self._resource_group, self._cluster, name, polling=False
            )
        except ResourceNotFoundError:
            self._retry.pop(req.uid, None)
            return True
        except AzureError as exc:
            failure = failure_from_exception(exc)
            log.warning("deleting agent pool %s failed: %s", name, failure.describe())
        return False

    async def _get(self, name: str) -> aks.AgentPool | None:
        try:
            return await self._client.agent_pools.get(self._resource_group, self._cluster, name)
        except ResourceNotFoundError:
            return None

    async def _write(
        self,
        req: NodeRequest,
        state: _RetryState,
        name: str,
        body: aks.AgentPool,
        action: str,
        *,
        create: bool = False,
    ) -> NodeReport:
        """PUT the pool unless a failure's backoff is still running."""
        now = self._clock()
        if state.retry_at is not None and now < state.retry_at:
            return self._failure_report(req, state, now)
        log.info(
            "%s (%s x %s) for Workspace %s/%s",
            action,
            req.node_count,
            req.instance_type,
            req.namespace,
            req.name,
        )
        try:
            await self._client.agent_pools.begin_create_or_update(
                self._resource_group,
                self._cluster,
                name,
                body,
                # If-None-Match: * turns a create racing another create into a 412 instead of an update.
                match_condition=MatchConditions.IfMissing if create else None,
                polling=False,
            )
        except AzureError as exc:
            # A 412 means another create won the race (If-None-Match); the SDK maps every 409, quota
            # errors included, to ResourceExistsError, so the status code is what tells them apart.
            if isinstance(exc, HttpResponseError) and exc.status_code == 412:
                message = f"agent pool {name} already exists"
                return NodeReport.of(req, False, Reason.POOL_PROVISIONING, message)
            return self._record_failure(req, state, failure_from_exception(exc), retry_after(exc))
        # `attempts` stays until the pool succeeds, so that a failure after this retry backs off longer.
        state.retry_at = None
        state.failure = None
        return NodeReport.of(req, False, Reason.POOL_PROVISIONING, action)

    def _record_failure(
        self, req: NodeRequest, state: _RetryState, failure: AzureFailure, not_before: float = 0.0
    ) -> NodeReport:
        """`not_before`: seconds ARM asked to wait (Retry-After of a throttled answer the SDK gave up on)."""
        state.attempts += 1
        state.failure = failure
        now = self._clock()
        backoff = backoff_seconds(state.attempts, self._backoff_base, self._backoff_max)
        state.retry_at = now + max(backoff, not_before)
        log.warning("agent pool for Workspace %s/%s: %s", req.namespace, req.name, failure.describe())
        return self._failure_report(req, state, now)

    def _failure_report(self, req: NodeRequest, state: _RetryState, now: float) -> NodeReport:
        assert state.failure is not None and state.retry_at is not None
        return NodeReport.of(
            req,
            False,
            state.failure.reason,
            state.failure.describe(),
        )

    @staticmethod
    def _matches(pool: aks.AgentPool, req: NodeRequest) -> bool:
        wanted = pool_node_labels(req)
        labels = pool.node_labels or {}
        return (
            pool.count == req.node_count
            and all(labels.get(k) == v for k, v in wanted.items())
            and GPU_TAINT in (pool.node_taints or [])
        )

    @staticmethod
    def _updated(pool: aks.AgentPool, req: NodeRequest) -> aks.AgentPool:
        """The existing pool with our fields set: keeps what AKS defaulted (e.g. orchestratorVersion)."""
        body = aks.AgentPool(pool.as_dict())
        desired = desired_agent_pool(req)
        body.count = desired.count
        body.node_labels = {**(pool.node_labels or {}), **(desired.node_labels or {})}
        body.node_taints = sorted({*(pool.node_taints or []), GPU_TAINT})
        return body

    async def _check_nodes(self, req: NodeRequest, name: str) -> NodeReport:
        selector = ",".join(f"{k}={v}" for k, v in sorted(pool_node_labels(req).items()))
        try:
            nodes = await asyncio.to_thread(self._core.list_node, label_selector=selector)
        except ApiException as exc:
            return NodeReport.listing_failed(req, exc)
        ready = sorted(node_name(n) for n in nodes.items if node_is_ready(n))
        if len(ready) >= req.node_count:
            return NodeReport.of(
                req,
                True,
                Reason.READY,
                f"agent pool {name}: {len(ready)} nodes Ready",
                nodes=ready,
            )
        return NodeReport.of(
            req,
            False,
            Reason.NODES_NOT_READY,
            f"agent pool {name} succeeded; {len(ready)} of {req.node_count} nodes Ready",
            nodes=ready,
        )
