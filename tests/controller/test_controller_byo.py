"""The real controller (`kairay controller --node-provisioner byo`) against the fake API server and fake
KubeRay: the plan sizes the RayService and says how many of the user's nodes it waits for, and only
nodes whose GPU labels fit the plan count. One controller serves the module, each test in a
namespace (and on nodes labelled `pool: <namespace>`) of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.finalizer import FINALIZER
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

A100X2 = "Standard_NC48ads_A100_v4"
V100X2 = "Standard_NC12s_v3"
PHI3 = "phi-3-mini-4k-instruct"
LLAMA_70B = "llama-3.1-70b-instruct"
WATCH_SECONDS = 1
# Waits that include a controller start: imports alone take seconds on a busy machine.
RESTART_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("controller-byo")
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, watch_timeout_seconds=WATCH_SECONDS) as kuberay:
            cluster = Cluster(server, api, kuberay)
            controller = cluster.controller = Controller(
                service_account_kubeconfig(server, root / "kubeconfig"), root / "controller.log"
            ).start()
            try:
                yield cluster
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert cluster.denied() == []
            assert kuberay.violations == []
            assert kuberay.errors == []


def resource_message(obj: dict[str, Any]) -> str:
    return str((conditions(obj).get("ResourceReady") or {}).get("message") or "")


def test_plan_sizes_the_rayservice_and_only_suitable_nodes_count(cluster: Cluster) -> None:
    namespace = cluster.namespace("byo-plan")
    pool = {"pool": namespace}
    plan = plan_inference(resolve_preset(LLAMA_70B), get_sku(A100X2))
    # The 70B model needs several nodes, each with both of its GPUs.
    assert (plan.nodes, plan.gpus_per_node) == (2, 2)
    cluster.create_workspace(sized_workspace(namespace, A100X2, LLAMA_70B))

    ws = cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "ResourceReady", "False", "NodesNotReady"),
        "ResourceReady False without nodes",
    )
    assert resource_message(ws) == f"0 of 2 nodes matching labelSelector 'pool={namespace}' are Ready"
    assert ws["status"]["targetNodeCount"] == plan.nodes
    assert state(ws) == "Pending"
    assert cluster.rayservice(namespace, "ws") is None

    # A node with the right label but 16 GB GPUs is reported with both numbers and left out.
    cluster.node("byo-plan-v100", {**pool, **gpu_labels(get_sku(V100X2))})
    ws = cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "ResourceReady", "False", "NodeMismatch"),
        "ResourceReady False with NodeMismatch",
    )
    unsuitable = "byo-plan-v100: 16384 MiB per GPU (17.2 GB), needs 80 GB"
    assert resource_message(ws).endswith(f"; unsuitable: {unsuitable}")

    a100 = {**pool, **gpu_labels(get_sku(A100X2))}
    cluster.node("byo-plan-a", a100)
    cluster.node("byo-plan-b", a100, ready=False)
    cluster.wait_status(
        namespace,
        "ws",
        lambda o: resource_message(o).startswith(
            f"1 of 2 nodes matching labelSelector 'pool={namespace}' are Ready, 1 not Ready"
        ),
        "one of the two suitable nodes Ready",
    )
    assert cluster.rayservice(namespace, "ws") is None

    cluster.set_node_ready("byo-plan-b")
    ws = cluster.wait_status(namespace, "ws", is_ready, "Ready once both suitable nodes are")
    assert condition_is(ws, "ResourceReady", "True", "Ready")
    assert resource_message(ws) == f"2 nodes Ready (NVIDIA-A100-80GB); not used: {unsuitable}"
    assert ws["status"]["workerNodes"] == ["byo-plan-a", "byo-plan-b"]
    assert ws["status"]["targetNodeCount"] == plan.nodes

    stored = cluster.rayservice(namespace, "ws")
    assert stored is not None
    assert stored["spec"] == cluster.expected_objects(namespace, "ws")[0]["spec"]
    assert_rayservice_follows_plan(stored, plan)
    worker = stored["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["nodeSelector"] == pool


def test_preferred_nodes_are_used_first(cluster: Cluster) -> None:
    namespace = cluster.namespace("byo-preferred")
    for name in ("byo-preferred-a", "byo-preferred-b"):
        cluster.gpu_node(name, {"pool": namespace})
    workspace = sized_workspace(namespace, A100, PHI3, preferred_nodes=("byo-preferred-b",))
    cluster.create_workspace(workspace)

    ws = cluster.wait_status(namespace, "ws", is_ready, "the Workspace to be Ready")
    assert ws["status"]["workerNodes"] == ["byo-preferred-b"]
    assert ws["status"]["targetNodeCount"] == 1


def test_workspace_that_cannot_fit_is_rejected_with_both_numbers(cluster: Cluster) -> None:
    namespace = cluster.namespace("byo-too-big")
    cluster.gpu_node("byo-too-big-gpu-0", {"pool": namespace})
    # The transformers runtime runs in one process: the 70B model would need 2 A100s, the node has 1.
    cluster.create_workspace(sized_workspace(namespace, A100, LLAMA_70B, runtime="transformers"))
    with pytest.raises(SizingError) as sizing:
        plan_inference(resolve_preset(LLAMA_70B), get_sku(A100), node_count=1)

    ws = cluster.wait_status(namespace, "ws", lambda o: state(o) == "Failed", "the Workspace to fail")
    for kind in ("ResourceReady", "InferenceReady", "WorkspaceSucceeded"):
        assert condition_is(ws, kind, "False", "InsufficientGPUMemory"), conditions(ws)[kind]
    assert f"need {sizing.value.need_gb:.1f} GB" in resource_message(ws)
    assert f"have {sizing.value.available_gb:.1f} GB" in resource_message(ws)
    assert ws["status"]["workerNodes"] == []
    assert cluster.rayservice(namespace, "ws") is None


def test_delete_leaves_the_users_nodes_and_removes_the_finalizer(cluster: Cluster) -> None:
    namespace = cluster.namespace("byo-delete")
    cluster.gpu_node("byo-delete-gpu-0", {"pool": namespace})
    cluster.create_workspace(sized_workspace(namespace, A100, PHI3))
    ws = cluster.wait_status(namespace, "ws", is_ready, "the Workspace to be Ready")
    assert ws["metadata"]["finalizers"] == [FINALIZER]

    cluster.delete_workspace(namespace, "ws")
    cluster.wait("the Workspace to be gone", lambda: cluster.workspace(namespace, "ws") is None)
    assert cluster.rayservice(namespace, "ws") is None
    assert cluster.server.get("services", namespace, "ws") is None
    node = cluster.server.get("nodes", None, "byo-delete-gpu-0")
    assert node is not None and node["metadata"].get("deletionTimestamp") is None


def test_restart_while_waiting_for_nodes_converges_on_one_rayservice(cluster: Cluster) -> None:
    namespace = cluster.namespace("byo-restart")
    controller = cluster.controller
    assert controller is not None
    cluster.create_workspace(sized_workspace(namespace, A100, PHI3))
    cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "ResourceReady", "False", "NodesNotReady"),
        "ResourceReady False without nodes",
    )

    controller.kill()
    cluster.gpu_node("byo-restart-gpu-0", {"pool": namespace})
    controller.start()

    def settled() -> bool:
        found = cluster.workspace(namespace, "ws")
        return found is not None and is_ready(found)

    cluster.wait("Ready after the restart", settled, timeout=RESTART_TIMEOUT)
    assert [o["metadata"]["name"] for o in cluster.server.list("rayservices", namespace)] == ["ws"]
    assert len(cluster.kuberay.clusters_created("ws", namespace)) == 1
