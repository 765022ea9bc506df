"""AksProvisioner with the real async ContainerServiceClient against the fake ARM, and real
`kubernetes` clients against the fake API server for node readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerservice.aio import ContainerServiceClient
from kubernetes.client import CoreV1Api

from controller.nodes.aks import AksProvisioner
from controller.nodes.base import (
    GPU_TAINT,
    WORKSPACE_LABEL,
    NodeProvisioner,
    NodeReport,
    NodeRequest,
    desired_agent_pool,
    pool_name,
)
from harness.fake_apiserver import FakeApiServer
from tests.controller.nodes.conftest import Nodes
from tests.harness.fake_arm import FakeArm, FakeTokenCredential, loopback_client_kwargs

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-kairay"
CLUSTER = "aks-kairay"
BACKOFF = 15.0


class FakeClock:
    """Monotonic time the test moves by hand, so backoff windows pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(name: str = "phi-3", node_count: int = 1, **overrides: Any) -> NodeRequest:
    fields: dict[str, Any] = {
        "namespace": "default",
        "name": name,
        "uid": f"uid-{name}",
        "instance_type": "Standard_NC6s_v3",
        "node_count": node_count,
        "match_labels": {"apps": name},
        "os_disk_gb": 100,
    }
    fields.update(overrides)
    return NodeRequest(**fields)


def provisioner(
    arm: FakeArm, core: CoreV1Api, clock: FakeClock, credential: FakeTokenCredential | None = None
) -> AksProvisioner:
    credential = credential or FakeTokenCredential()
    return AksProvisioner(
        SUB,
        RG,
        CLUSTER,
        credential,
        base_url=arm.base_url,
        core_v1_api=core,
        backoff_base_seconds=BACKOFF,
        clock=clock,
        **loopback_client_kwargs(credential),
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


async def ensure_until(prov: NodeProvisioner, req: NodeRequest, reason: str, limit: int = 10) -> NodeReport:
    """Call `ensure` the way the controller does, until it reports `reason`."""
    seen = []
    for _ in range(limit):
        report = await prov.ensure(req)
        seen.append(report.reason)
        if report.reason == reason:
            return report
    raise AssertionError(f"never reached {reason}: {seen}")


def test_create_pool_then_nodes_become_ready(arm: FakeArm, core: CoreV1Api, nodes: Nodes) -> None:
    req = request(node_count=2)
    pool = pool_name("default", "phi-3")
    credential = FakeTokenCredential()

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock(), credential) as prov:
            first = await prov.ensure(req)
            assert (first.ready, first.reason, first.target_node_count) == (False, "PoolProvisioning", 2)

            [put] = arm.puts()
            assert put.status == 201 and put.pool == pool
            assert put.headers["if-none-match"] == "*"
            assert put.headers["authorization"] == f"Bearer {credential.token}"
            props = put.body["properties"]
            assert props == desired_agent_pool(req).as_dict()["properties"]
            assert (props["vmSize"], props["count"], props["mode"]) == ("Standard_NC6s_v3", 2, "User")
            assert props["nodeTaints"] == [GPU_TAINT]
            assert props["osDiskSizeGB"] == 100
            assert props["nodeLabels"]["apps"] == "phi-3" and props["nodeLabels"][WORKSPACE_LABEL] == "phi-3"

            creating = await prov.ensure(req)
            assert (creating.reason, creating.message) == (
                "PoolProvisioning",
                f"agent pool {pool} is Creating",
            )

            # The pool has succeeded, but kubelets have not reported Ready yet.
            waiting = await prov.ensure(req)
            assert (waiting.ready, waiting.reason) == (False, "NodesNotReady")
            assert "0 of 2 nodes Ready" in waiting.message
            assert len(nodes.names(f"agentpool={pool}")) == 2

            first_node, second_node = nodes.names(f"agentpool={pool}")
            nodes.set_ready(first_node)
            half = await prov.ensure(req)
            assert (half.ready, half.reason, half.worker_nodes) == (False, "NodesNotReady", [first_node])

            nodes.set_ready(second_node)
            ready = await prov.ensure(req)
            assert (ready.ready, ready.reason) == (True, "Ready")
            assert ready.worker_nodes == [first_node, second_node]

        assert len(arm.puts()) == 1
        spec = core.read_node(first_node).spec
        assert spec is not None and spec.taints is not None
        assert [(t.key, t.value, t.effect) for t in spec.taints] == [("sku", "gpu", "NoSchedule")]

    run(scenario)


def test_restart_during_pending_create_does_not_create_a_second_pool(arm: FakeArm, core: CoreV1Api) -> None:
    arm.polls_until_done = 3
    req = request()

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as before_restart:
            assert (await before_restart.ensure(req)).reason == "PoolProvisioning"
        async with provisioner(arm, core, FakeClock()) as after_restart:
            report = await after_restart.ensure(req)
            assert report.reason == "PoolProvisioning" and "is Creating" in report.message
            await ensure_until(after_restart, req, "NodesNotReady")
        assert len(arm.puts()) == 1
        assert len(arm.creates()) == 1

    run(scenario)


def test_workspaces_are_provisioned_concurrently(arm: FakeArm, core: CoreV1Api) -> None:
    # Operations that never finish while we look: `ensure` must return rather than wait for them.
    arm.polls_until_done = 1000
    reqs = [request(f"ws-{i}") for i in range(4)]

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            reports = await asyncio.gather(*(prov.ensure(r) for r in reqs))
            assert {r.reason for r in reports} == {"PoolProvisioning"}
            reports = await asyncio.gather(*(prov.ensure(r) for r in reqs))
            assert all("is Creating" in r.message for r in reports)
        assert arm.pool_names() == sorted(pool_name("default", r.name) for r in reqs)
        assert len(arm.creates()) == 4

    run(scenario)


def test_quota_error_is_reported_with_backoff_then_succeeds(arm: FakeArm, core: CoreV1Api) -> None:
    quota_message = (
        "Operation could not be completed as it results in exceeding approved standardNCSv3Family Cores "
        "quota. Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 6."
    )
    arm.fail_next_put("QuotaExceeded", quota_message, status=409)
    arm.fail_next_put("QuotaExceeded", quota_message, status=409)
    clock = FakeClock()
    req = request()

    async def scenario() -> None:
        async with provisioner(arm, core, clock) as prov:
            failed = await prov.ensure(req)
            assert (failed.ready, failed.reason) == (False, "QuotaExceeded")
            assert failed.message == f"QuotaExceeded: {quota_message}"

            # Inside the backoff window nothing is sent again.
            clock.advance(5)
            again = await prov.ensure(req)
            assert again.reason == "QuotaExceeded"
            assert len(arm.puts()) == 1

            # The second failure backs off twice as long.
            clock.advance(10)
            second = await prov.ensure(req)
            assert second.reason == "QuotaExceeded"
            assert len(arm.puts()) == 2

            arm.clear_faults()
            clock.advance(2 * BACKOFF)
            assert (await prov.ensure(req)).reason == "PoolProvisioning"
            await ensure_until(prov, req, "NodesNotReady")
        assert [p.status for p in arm.puts()] == [409, 409, 201]

    run(scenario)


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("SkuNotAvailable", 400, "SKUNotAvailable"),
        ("AuthorizationFailed", 403, "AuthorizationFailed"),
        ("OperationNotAllowed", 409, "AzureError"),
    ],
)
def test_synchronous_azure_errors_keep_azure_code_and_message(
    arm: FakeArm, core: CoreV1Api, code: str, status: int, reason: str
) -> None:
    message = f"fake {code} from ARM for Standard_NC6s_v3 in eastus"
    arm.fail_next_put(code, message, status=status)

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            report = await prov.ensure(request())
        assert (report.ready, report.reason) == (False, reason)
        assert report.message == f"{code}: {message}"

    run(scenario)


def test_rejected_credential_is_an_authorization_failure(arm: FakeArm, core: CoreV1Api) -> None:
    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock(), FakeTokenCredential("expired")) as prov:
            report = await prov.ensure(request())
        assert (report.ready, report.reason) == (False, "AuthorizationFailed")
        assert report.message.startswith("AuthenticationFailed: ")
        assert "expired" not in report.message
        assert arm.puts() == []

    run(scenario)


def test_failed_operation_is_reported_then_retried(arm: FakeArm, core: CoreV1Api) -> None:
    arm.fail_operation(
        "OverconstrainedAllocationRequest", "Allocation failed. VM size not available in zone 1."
    )
    clock = FakeClock()
    req = request()
    pool = pool_name("default", "phi-3")

    async def scenario() -> None:
        async with provisioner(arm, core, clock) as prov:
            failed = await ensure_until(prov, req, "PoolProvisioningFailed")
            assert failed.ready is False
            assert failed.message == (
                "OverconstrainedAllocationRequest: Allocation failed. VM size not available in zone 1."
            )
            # Still Failed and still backing off: the error stays, no PUT.
            assert (await prov.ensure(req)).reason == "PoolProvisioningFailed"
            assert len(arm.puts()) == 1

            clock.advance(BACKOFF)
            retried = await prov.ensure(req)
            assert (retried.reason, retried.message) == (
                "PoolProvisioning",
                f"retrying agent pool {pool} after OverconstrainedAllocationRequest",
            )
            await ensure_until(prov, req, "NodesNotReady")
        create, retry = arm.puts()
        assert (create.status, retry.status) == (201, 200)
        assert retry.body["properties"]["count"] == 1
        assert retry.body["properties"]["orchestratorVersion"] == "1.31.0"
        assert "provisioningState" not in retry.body["properties"]

    run(scenario)


def test_a_failed_pool_found_after_restart_is_reported(arm: FakeArm, core: CoreV1Api) -> None:
    arm.fail_operation("QuotaExceeded", "Insufficient regional vCPU quota left for the NCSv3 family.")
    req = request()

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await prov.ensure(req)
        # A new process finds the pool Failed: the error comes from the pool's provisioningError.
        async with provisioner(arm, core, FakeClock()) as prov:
            report = await ensure_until(prov, req, "QuotaExceeded")
        assert report.message == "QuotaExceeded: Insufficient regional vCPU quota left for the NCSv3 family."

    run(scenario)


def test_existing_pool_is_resized(arm: FakeArm, core: CoreV1Api, nodes: Nodes) -> None:
    pool = pool_name("default", "phi-3")

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, request(node_count=1), "NodesNotReady")
            for name in nodes.names(f"agentpool={pool}"):
                nodes.set_ready(name)
            assert (await prov.ensure(request(node_count=1))).ready

            grown = request(node_count=2)
            resizing = await prov.ensure(grown)
            assert (resizing.ready, resizing.reason) == (False, "PoolProvisioning")
            assert resizing.message == f"resizing agent pool {pool} from 1 to 2 nodes"
            assert resizing.target_node_count == 2
            await ensure_until(prov, grown, "NodesNotReady")
            for name in nodes.names(f"agentpool={pool}"):
                nodes.set_ready(name)
            ready = await prov.ensure(grown)
            assert ready.ready and len(ready.worker_nodes) == 2
        create, resize = arm.puts()
        assert (create.status, resize.status) == (201, 200)
        assert "if-none-match" not in resize.headers
        assert resize.body["properties"]["count"] == 2
        assert resize.body["properties"]["vmSize"] == "Standard_NC6s_v3"
        assert len(arm.creates()) == 1

    run(scenario)


def test_pool_with_another_vm_size_is_not_touched(arm: FakeArm, core: CoreV1Api) -> None:
    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, request(), "NodesNotReady")
            report = await prov.ensure(request(instance_type="Standard_NC24ads_A100_v4"))
        assert (report.ready, report.reason) == (False, "PoolMismatch")
        assert "Standard_NC6s_v3" in report.message and "Standard_NC24ads_A100_v4" in report.message
        assert len(arm.puts()) == 1

    run(scenario)


def test_release_deletes_the_pool_and_reports_gone(arm: FakeArm, core: CoreV1Api, nodes: Nodes) -> None:
    req = request()
    pool = pool_name("default", "phi-3")

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, req, "NodesNotReady")
            assert nodes.names(f"agentpool={pool}")
            assert await prov.release(req) is False
            assert len(arm.deletes()) == 1
            assert (await prov.ensure(req)).reason == "PoolDeleting"
            gone = [await prov.release(req) for _ in range(3)]
            assert gone[-1] is True
            assert await prov.release(req) is True
        assert len(arm.deletes()) == 1
        assert arm.pool(pool) is None
        assert nodes.names(f"agentpool={pool}") == []

    run(scenario)


def test_release_of_a_workspace_without_pool(arm: FakeArm, core: CoreV1Api) -> None:
    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            assert await prov.release(request()) is True
        assert arm.deletes() == []

    run(scenario)


def test_kubernetes_errors_are_reported(arm: FakeArm, core: CoreV1Api, fake_apiserver: FakeApiServer) -> None:
    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, request(), "NodesNotReady")
            fake_apiserver.inject_errors("nodes", code=500, verbs=["list"])
            report = await prov.ensure(request())
        assert (report.ready, report.reason) == (False, "KubernetesError")
        assert "500" in report.message

    run(scenario)


def test_fake_arm_speaks_the_sdk_long_running_operation_protocol(arm: FakeArm) -> None:
    """The SDK's own pollers (not used by the provisioner) agree with the fake about LROs."""
    credential = FakeTokenCredential()
    body = desired_agent_pool(request())

    async def scenario() -> None:
        async with ContainerServiceClient(
            credential, SUB, base_url=arm.base_url, polling_interval=0, **loopback_client_kwargs(credential)
        ) as client:
            poller = await client.agent_pools.begin_create_or_update(RG, CLUSTER, "pool1", body)
            created = await poller.result()
            assert (created.provisioning_state, created.count) == ("Succeeded", 1)

            arm.fail_operation("SkuNotAvailable", "The requested size is not available.")
            poller = await client.agent_pools.begin_create_or_update(RG, CLUSTER, "pool2", body)
            with pytest.raises(HttpResponseError) as failure:
                await poller.result()
            assert failure.value.error is not None and failure.value.error.code == "SkuNotAvailable"

            deletion = await client.agent_pools.begin_delete(RG, CLUSTER, "pool1")
            await deletion.result()
            assert arm.pool("pool1") is None

    run(scenario)


def sdk_default_provisioner(arm: FakeArm, core: CoreV1Api, clock: FakeClock) -> AksProvisioner:
    """Built as `kairay controller` builds it: the SDK's own retry policy, not the tests' retry_total=0."""
    credential = FakeTokenCredential()
    return AksProvisioner(
        SUB,
        RG,
        CLUSTER,
        credential,
        base_url=arm.base_url,
        core_v1_api=core,
        polling_interval=0,
        backoff_base_seconds=BACKOFF,
        clock=clock,
        authentication_policy=loopback_client_kwargs(credential)["authentication_policy"],
    )


def test_throttled_requests_are_retried_after_retry_after(arm: FakeArm, core: CoreV1Api) -> None:
    arm.throttle_every = 2
    arm.retry_after_seconds = 1

    async def scenario() -> None:
        async with sdk_default_provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, request(), "NodesNotReady")

    run(scenario)
    assert 429 in [r.status for r in arm.requests]
    assert [p.status for p in arm.puts()][-1] == 201


def test_throttling_that_outlasts_the_sdk_waits_at_least_retry_after(arm: FakeArm, core: CoreV1Api) -> None:
    arm.throttled = True
    arm.retry_after_seconds = 120  # longer than the first backoff
    clock = FakeClock()

    async def scenario() -> None:
        async with provisioner(arm, core, clock) as prov:
            report = await prov.ensure(request())
            assert (report.ready, report.reason) == (False, "AzureError")
            assert report.message.startswith("TooManyRequests: ")
            arm.throttled = False
            # Past the backoff but not the Retry-After: no new write yet.
            clock.advance(BACKOFF)
            assert not (await prov.ensure(request())).ready
            assert arm.puts() == []
            clock.advance(120)
            await ensure_until(prov, request(), "NodesNotReady")

    run(scenario)


@pytest.mark.parametrize(
    ("overrides", "reason", "code"),
    [
        ({"instance_type": "Standard_Imaginary_v9"}, "SKUNotAvailable", "VMSizeNotSupported"),
        ({"node_count": 5000}, "AzureError", "InvalidParameter"),
    ],
)
def test_a_pool_arm_refuses_becomes_a_condition(
    arm: FakeArm, core: CoreV1Api, overrides: dict[str, Any], reason: str, code: str
) -> None:
    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            report = await prov.ensure(request(**overrides))
        assert (report.ready, report.reason) == (False, reason)
        assert report.message.startswith(f"{code}: ")

    run(scenario)
    assert arm.pool_names() == []


def test_a_failed_delete_is_retried_on_the_next_release(arm: FakeArm, core: CoreV1Api) -> None:
    req = request()

    async def scenario() -> None:
        async with provisioner(arm, core, FakeClock()) as prov:
            await ensure_until(prov, req, "NodesNotReady")
            arm.fail_next_delete("OperationNotAllowed", "Cannot delete while the cluster is upgrading.")
            assert await prov.release(req) is False
            assert arm.pool(pool_name("default", "phi-3")) is not None
            gone = [await prov.release(req) for _ in range(4)]
            assert gone[-1] is True

    run(scenario)
    assert [d.status for d in arm.deletes()][:2] == [409, 202]
