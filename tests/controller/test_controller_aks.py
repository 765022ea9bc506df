"""The real controller (`kairay controller --node-provisioner aks`) against the fake API server, fake
KubeRay and the fake ARM on 127.0.0.1, which the controller's real `ContainerServiceClient` talks to
through the loopback-only test hooks (`controller.settings.ArmConnection`).

The fake ARM plays AKS and the VM scale set: when a pool's operation succeeds its nodes register in
the fake API server with the pool's labels and taints and the GPU labels of the instance type. One
controller serves the whole module, each test in a namespace (and so an agent pool) of its own;
Azure faults are global to the fake, so the tests run one after another.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.mgmt.containerservice.aio import ContainerServiceClient

from controller.nodes.aks import ARM_SCOPE, LoopbackAuthenticationPolicy, StaticTokenCredential
from controller.nodes.base import GPU_TAINT, WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL, pool_name
from controller.settings import ArmConnection, ConfigError
from controller.workloads.common import AKS_DEFAULT_OS_DISK_GB, RUNTIME_DISK_GB
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from presets.models import resolve_preset
from presets.sizing import SizingError, plan_inference
from presets.skus import get_sku
from tests.controller.cluster import (
    A100,
    Cluster,
    Controller,
    assert_rayservice_follows_plan,
    condition_is,
    conditions,
    gpu_labels,
    install_crds,
    is_ready,
    service_account_kubeconfig,
    sized_workspace,
    state,
)
from tests.harness.fake_arm import FAKE_TOKEN, FakeArm

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "rg-kairay"
CLUSTER = "aks-kairay"
# Two A100s per node: the 70B model needs two of these nodes.
A100X2 = "Standard_NC48ads_A100_v4"
PHI3 = "phi-3-mini-4k-instruct"
LLAMA_70B = "llama-3.1-70b-instruct"
# First wait after an Azure failure (doubling); short so that a retry follows within seconds.
BACKOFF_SECONDS = "0.5"
WATCH_SECONDS = 1
# Waits that include a controller start: imports alone take seconds on a busy machine.
RESTART_TIMEOUT = 60.0
QUOTA_MESSAGE = (
    "Operation could not be completed as it results in exceeding approved standardNCADSA100v4Family "
    "Cores quota. Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 24."
)


class PoolNodes:
    """The VM scale sets behind the fake ARM's pools: their nodes register in the fake API server as
    an AKS node would (pool labels and taints, `agentpool`, GPU feature discovery labels)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # Pools whose nodes register NotReady, for a test that makes them Ready itself.
        self.not_ready: set[str] = set()

    def names(self, pool: str) -> list[str]:
        nodes = self.cluster.server.list("nodes", label_selector=f"agentpool={pool}")
        return sorted(node["metadata"]["name"] for node in nodes)

    def succeeded(self, pool: str, resource: dict[str, Any]) -> None:
        props = resource["properties"]
        wanted = [f"aks-{pool}-12345678-vmss{i:06d}" for i in range(props["count"])]
        existing = self.names(pool)
        labels = {
            **props.get("nodeLabels", {}),
            **gpu_labels(get_sku(props["vmSize"])),
            "agentpool": pool,
            "kubernetes.azure.com/agentpool": pool,
            "node.kubernetes.io/instance-type": props["vmSize"],
        }
        for name in wanted:
            if name not in existing:
                taints = tuple(props.get("nodeTaints") or ())
                self.cluster.node(name, labels, ready=pool not in self.not_ready, taints=taints)
        for name in existing:
            if name not in wanted:
                self.cluster.server.delete("nodes", None, name)

    def deleted(self, pool: str) -> None:
        for name in self.names(pool):
            self.cluster.server.delete("nodes", None, name)


@dataclass
class Aks:
    cluster: Cluster
    arm: FakeArm
    pools: PoolNodes

    @property
    def controller(self) -> Controller:
        assert self.cluster.controller is not None
        return self.cluster.controller

    def pool_requests(self, pool: str) -> list[tuple[str, int]]:
        return [(r.method, r.status) for r in self.arm.requests if r.pool == pool]


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aks]:
    root = tmp_path_factory.mktemp("controller-aks")
    with FakeApiServer() as server, server.api_client() as api, FakeArm(polls_until_done=2) as arm:
        install_crds(server)
        with FakeKubeRay(api, watch_timeout_seconds=WATCH_SECONDS) as kuberay:
            cluster = Cluster(server, api, kuberay)
            pools = PoolNodes(cluster)
            arm.on_pool_succeeded = pools.succeeded
            arm.on_pool_deleted = pools.deleted
            controller = cluster.controller = Controller(
                service_account_kubeconfig(server, root / "kubeconfig"),
                root / "controller.log",
                *("--node-provisioner", "aks"),
                *("--subscription-id", SUB, "--resource-group", RG, "--cluster-name", CLUSTER),
                env={
                    "KAIRAY_ARM_ENDPOINT": arm.base_url,
                    "KAIRAY_ARM_TOKEN": FAKE_TOKEN,
                    "KAIRAY_AZURE_BACKOFF_SECONDS": BACKOFF_SECONDS,
                },
            ).start()
            try:
                yield Aks(cluster, arm, pools)
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert cluster.denied() == []
            assert kuberay.violations == []
            assert kuberay.errors == []
    # Every request reached ARM with the token the controller was given.
    assert {r.headers.get("authorization") for r in arm.requests} == {f"Bearer {FAKE_TOKEN}"}


def event_reasons(cluster: Cluster, namespace: str) -> set[str]:
    return {e["reason"] for e in cluster.events(namespace, "ws")}


def serving(aks: Aks, namespace: str) -> dict[str, Any]:
    """A Ready phi-3 Workspace `ws` on one A100 node of its own pool, in a new namespace."""
    aks.cluster.namespace(namespace)
    aks.cluster.create_workspace(sized_workspace(namespace, A100, PHI3))
    return aks.cluster.wait_status(namespace, "ws", is_ready, "the Workspace to be Ready")


def test_pool_follows_the_plan_and_its_nodes_make_the_workspace_ready(aks: Aks) -> None:
    cluster, arm = aks.cluster, aks.arm
    namespace = cluster.namespace("plan")
    pool = pool_name(namespace, "ws")
    plan = plan_inference(resolve_preset(LLAMA_70B), get_sku(A100X2))
    # The 70B model needs several nodes, each with both of its GPUs.
    assert (plan.nodes, plan.gpus_per_node, plan.tensor_parallel, plan.pipeline_parallel) == (2, 2, 2, 2)
    aks.pools.not_ready.add(pool)
    cluster.create_workspace(sized_workspace(namespace, A100X2, LLAMA_70B))

    ws = cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "ResourceReady", "False", "NodesNotReady"),
        "the pool to succeed with nodes not Ready yet",
    )
    assert ws["status"]["targetNodeCount"] == plan.nodes
    assert conditions(ws)["ResourceReady"]["message"] == f"agent pool {pool} succeeded; 0 of 2 nodes Ready"
    assert state(ws) == "Pending"
    # Ray pods would only sit Pending on nodes that are not Ready.
    assert cluster.rayservice(namespace, "ws") is None

    # Looked up (404), created once (201, If-None-Match: *), then only looked at.
    requests = aks.pool_requests(pool)
    assert requests[:2] == [("GET", 404), ("PUT", 201)]
    assert set(requests[2:]) == {("GET", 200)}
    (put,) = arm.puts(pool)
    assert put.headers["if-none-match"] == "*"
    props = put.body["properties"]
    weights_gb = resolve_preset(LLAMA_70B).disk_gb
    assert weights_gb is not None and math.ceil(weights_gb) + RUNTIME_DISK_GB > AKS_DEFAULT_OS_DISK_GB
    assert props == {
        "vmSize": A100X2,
        "count": plan.nodes,
        "mode": "User",
        "osType": "Linux",
        "type": "VirtualMachineScaleSets",
        "enableAutoScaling": False,
        "nodeLabels": {"pool": namespace, WORKSPACE_LABEL: "ws", WORKSPACE_NAMESPACE_LABEL: namespace},
        "nodeTaints": [GPU_TAINT],
        "tags": {"kairay-workspace-namespace": namespace, "kairay-workspace-name": "ws"},
        "osDiskSizeGB": math.ceil(weights_gb) + RUNTIME_DISK_GB,
    }

    nodes = aks.pools.names(pool)
    assert len(nodes) == plan.nodes
    for name in nodes:
        cluster.set_node_ready(name)
    ws = cluster.wait_status(namespace, "ws", is_ready, "Ready once the nodes are")
    assert condition_is(ws, "ResourceReady", "True", "Ready")
    assert conditions(ws)["ResourceReady"]["message"] == f"agent pool {pool}: 2 nodes Ready"
    assert ws["status"]["workerNodes"] == nodes
    assert ws["status"]["targetNodeCount"] == plan.nodes

    stored = cluster.rayservice(namespace, "ws")
    assert stored is not None
    assert stored["spec"] == cluster.expected_objects(namespace, "ws")[0]["spec"]
    assert_rayservice_follows_plan(stored, plan)
    # The Ray workers land on the pool's nodes: its labels match their selector, they tolerate its taint.
    worker = stored["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    node = cluster.server.get("nodes", None, nodes[0])
    assert node is not None
    assert worker["nodeSelector"].items() <= node["metadata"]["labels"].items()
    tolerated = {(t["key"], t.get("value"), t["effect"]) for t in worker["tolerations"]}
    assert {(t["key"], t["value"], t["effect"]) for t in node["spec"]["taints"]} <= tolerated

    assert len(arm.puts(pool)) == 1
    assert {"PoolProvisioning", "NodesNotReady", "Ready"} <= event_reasons(cluster, namespace)


def test_quota_error_is_reported_until_azure_clears_it(aks: Aks) -> None:
    cluster, arm = aks.cluster, aks.arm
    namespace = cluster.namespace("quota")
    pool = pool_name(namespace, "ws")
    try:
        # Every PUT fails until the quota is raised (the fake's faults are cleared).
        for _ in range(100):
            arm.fail_next_put("QuotaExceeded", QUOTA_MESSAGE, status=409)
        cluster.create_workspace(sized_workspace(namespace, A100, PHI3))

        ws = cluster.wait_status(
            namespace,
            "ws",
            lambda o: condition_is(o, "ResourceReady", "False", "QuotaExceeded"),
            "ResourceReady False with QuotaExceeded",
        )
        assert conditions(ws)["ResourceReady"]["message"] == f"QuotaExceeded: {QUOTA_MESSAGE}"
        assert condition_is(ws, "InferenceReady", "False", "ResourceNotReady")
        assert QUOTA_MESSAGE in conditions(ws)["InferenceReady"]["message"]
        assert state(ws) == "Pending"
        # Retried after the backoff, still refused.
        cluster.wait("a second attempt", lambda: len(arm.puts(pool)) >= 2)
        assert arm.pool(pool) is None
        assert cluster.rayservice(namespace, "ws") is None
    finally:
        arm.clear_faults()

    ws = cluster.wait_status(namespace, "ws", is_ready, "Ready once the quota allows the pool")
    statuses = [put.status for put in arm.puts(pool)]
    assert statuses[-1] == 201 and set(statuses[:-1]) == {409}, statuses
    assert arm.pool_names().count(pool) == 1
    assert ws["status"]["workerNodes"] == aks.pools.names(pool)
    quota_events = [e for e in cluster.events(namespace, "ws") if e["reason"] == "QuotaExceeded"]
    assert quota_events and QUOTA_MESSAGE in quota_events[0]["message"]


def test_failed_pool_operation_is_reported_then_retried(aks: Aks) -> None:
    cluster, arm = aks.cluster, aks.arm
    namespace = cluster.namespace("allocation")
    pool = pool_name(namespace, "ws")
    message = "Allocation failed. We do not have sufficient capacity for the requested VM size in eastus."
    arm.fail_operation("OverconstrainedAllocationRequest", message)
    cluster.create_workspace(sized_workspace(namespace, A100, PHI3))

    ws = cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "ResourceReady", "False", "PoolProvisioningFailed"),
        "ResourceReady False after the operation failed",
    )
    assert conditions(ws)["ResourceReady"]["message"] == f"OverconstrainedAllocationRequest: {message}"

    cluster.wait_status(namespace, "ws", is_ready, "Ready after the retry")
    create, retry = arm.puts(pool)
    assert (create.status, retry.status) == (201, 200)
    # The retry rewrites the Failed pool, keeping what AKS filled in.
    assert retry.body["properties"]["count"] == 1
    assert retry.body["properties"]["orchestratorVersion"] == "1.31.0"


def test_delete_deletes_the_pool_before_the_finalizer_goes(aks: Aks) -> None:
    cluster, arm = aks.cluster, aks.arm
    namespace = "delete"
    pool = pool_name(namespace, "ws")
    serving(aks, namespace)
    assert aks.pools.names(pool)

    cluster.delete_workspace(namespace, "ws")
    cluster.wait("the Workspace to be gone", lambda: cluster.workspace(namespace, "ws") is None)
    assert [d.status for d in arm.deletes(pool)] == [202]
    assert arm.pool(pool) is None
    assert aks.pools.names(pool) == []
    assert cluster.rayservice(namespace, "ws") is None
    assert cluster.server.get("services", namespace, "ws") is None
    # The finalizer stayed while the pool was being deleted.
    cluster.wait("the ReleasingNodes event", lambda: "ReleasingNodes" in event_reasons(cluster, namespace))


def test_restart_during_a_pending_create_makes_no_second_pool(aks: Aks) -> None:
    cluster, arm = aks.cluster, aks.arm
    namespace = cluster.namespace("restart")
    pool = pool_name(namespace, "ws")
    # Enough looks at the pool that the create is still running when the new controller arrives.
    arm.polls_until_done = 6
    try:
        cluster.create_workspace(sized_workspace(namespace, A100, PHI3))
        cluster.wait("the pool create", lambda: bool(arm.creates(pool)))
        aks.controller.kill()
        created = arm.pool(pool)
        assert created is not None and created["properties"]["provisioningState"] == "Creating"
        before_restart = len(aks.pool_requests(pool))

        aks.controller.start()

        def found_running_create() -> bool:
            found = cluster.workspace(namespace, "ws")
            looked = aks.pool_requests(pool)[before_restart:]
            return (
                found is not None
                and ("GET", 200) in looked
                and condition_is(found, "ResourceReady", "False", "PoolProvisioning")
                and conditions(found)["ResourceReady"]["message"] == f"agent pool {pool} is Creating"
            )

        cluster.wait("the new controller to find the create running", found_running_create, RESTART_TIMEOUT)
    finally:
        arm.polls_until_done = 2

    cluster.wait_status(namespace, "ws", is_ready, "Ready after the restart")
    assert [put.status for put in arm.puts(pool)] == [201]
    assert arm.pool_names().count(pool) == 1
    assert len(aks.pools.names(pool)) == 1
    assert [o["metadata"]["name"] for o in cluster.server.list("rayservices", namespace)] == ["ws"]


def test_workspace_that_cannot_fit_is_rejected_with_both_numbers_and_no_pool(aks: Aks) -> None:
    cluster = aks.cluster
    namespace = cluster.namespace("too-big")
    # The transformers runtime runs in one process: the 70B model would need 2 A100s, the node has 1.
    cluster.create_workspace(sized_workspace(namespace, A100, LLAMA_70B, runtime="transformers"))
    with pytest.raises(SizingError) as sizing:
        plan_inference(resolve_preset(LLAMA_70B), get_sku(A100), node_count=1)

    ws = cluster.wait_status(namespace, "ws", lambda o: state(o) == "Failed", "the Workspace to fail")
    for kind in ("ResourceReady", "InferenceReady", "WorkspaceSucceeded"):
        assert condition_is(ws, kind, "False", "InsufficientGPUMemory"), conditions(ws)[kind]
    message = conditions(ws)["ResourceReady"]["message"]
    assert f"need {sizing.value.need_gb:.1f} GB" in message
    assert f"have {sizing.value.available_gb:.1f} GB" in message
    assert "targetNodeCount" not in ws["status"]
    assert aks.pool_requests(pool_name(namespace, "ws")) == []
    assert cluster.rayservice(namespace, "ws") is None


# --- the loopback test hooks stay test hooks -------------------------------------------------------


def test_arm_connection_defaults_to_azure() -> None:
    assert ArmConnection.from_env({}) == ArmConnection(endpoint=None, token=None, backoff_seconds=15.0)
    loopback = {"KAIRAY_ARM_ENDPOINT": "http://127.0.0.1:8443", "KAIRAY_ARM_TOKEN": "t"}
    assert ArmConnection.from_env(loopback).endpoint == "http://127.0.0.1:8443"


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"KAIRAY_ARM_ENDPOINT": "http://arm.example.com", "KAIRAY_ARM_TOKEN": "t"}, "loopback"),
        ({"KAIRAY_ARM_ENDPOINT": "https://management.azure.com", "KAIRAY_ARM_TOKEN": "t"}, "loopback"),
        ({"KAIRAY_ARM_TOKEN": "t"}, "go together"),
        ({"KAIRAY_ARM_ENDPOINT": "http://127.0.0.1:8443"}, "go together"),
        ({"KAIRAY_AZURE_BACKOFF_SECONDS": "0"}, "positive"),
        ({"KAIRAY_AZURE_BACKOFF_SECONDS": "soon"}, "positive"),
    ],
)
def test_arm_connection_refuses_anything_but_loopback(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        ArmConnection.from_env(environ)


def test_controller_refuses_a_fake_arm_off_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kairay.cli import main

    monkeypatch.setenv("KAIRAY_ARM_ENDPOINT", "http://arm.example.com")
    monkeypatch.setenv("KAIRAY_ARM_TOKEN", "t")
    argv = ["controller", "--node-provisioner", "aks", "--kubeconfig", "/nonexistent"]
    argv += ["--subscription-id", SUB, "--resource-group", RG, "--cluster-name", CLUSTER]
    assert main(argv) == 1
    assert "KAIRAY_ARM_ENDPOINT must be a loopback URL" in capsys.readouterr().err


def test_loopback_policy_never_sends_the_token_over_http_off_this_machine() -> None:
    credential = StaticTokenCredential("secret-token")
    policy = LoopbackAuthenticationPolicy(credential, ARM_SCOPE)

    async def scenario() -> None:
        # TEST-NET-1 (RFC 5737): the request must fail before any connection is tried.
        async with ContainerServiceClient(
            credential, SUB, base_url="http://192.0.2.1:9", authentication_policy=policy, retry_total=0
        ) as client:
            with pytest.raises(ServiceRequestError, match="non-TLS"):
                await client.agent_pools.get(RG, CLUSTER, "pool")

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
