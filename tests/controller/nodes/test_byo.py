"""ByoProvisioner against Node objects in the fake API server, read with the real `kubernetes` client."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes.client import CoreV1Api

from controller.nodes.base import LabelRequirement, NodeProvisioner, NodeReport, NodeRequest
from controller.nodes.byo import ByoProvisioner, GpuFacts
from harness.fake_apiserver import FakeApiServer
from tests.controller.nodes.conftest import Nodes

V100 = {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "16384", "nvidia.com/gpu.product": "Tesla-V100"}
A100X2 = {
    "nvidia.com/gpu.count": "2",
    "nvidia.com/gpu.memory": "81920",
    "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
}


def request(node_count: int = 2, **overrides: Any) -> NodeRequest:
    fields: dict[str, Any] = {
        "namespace": "default",
        "name": "phi-3",
        "uid": "uid-phi-3",
        "instance_type": "Standard_NC24ads_A100_v4",
        "node_count": node_count,
        "match_labels": {"apps": "phi-3"},
    }
    fields.update(overrides)
    return NodeRequest(**fields)


def ensure(core: CoreV1Api, req: NodeRequest) -> NodeReport:
    provisioner: NodeProvisioner = ByoProvisioner(core)
    return asyncio.run(provisioner.ensure(req))


def test_ready_when_enough_matching_nodes_are_ready(core: CoreV1Api, nodes: Nodes) -> None:
    nodes.create("gpu-b", {"apps": "phi-3"})
    nodes.create("other", {"apps": "llama"})

    short = ensure(core, request())
    assert (short.ready, short.reason, short.target_node_count) == (False, "NodesNotReady", 2)
    assert short.message.startswith("1 of 2 nodes matching labelSelector 'apps=phi-3' are Ready")
    assert short.worker_nodes == ["gpu-b"]

    nodes.create("gpu-a", {"apps": "phi-3"}, ready=False)
    not_ready = ensure(core, request())
    assert (not_ready.reason, not_ready.ready) == ("NodesNotReady", False)
    assert "1 not Ready" in not_ready.message

    nodes.set_ready("gpu-a")
    ready = ensure(core, request())
    assert (ready.ready, ready.reason, ready.worker_nodes) == (True, "Ready", ["gpu-a", "gpu-b"])


def test_cordoned_nodes_do_not_count(core: CoreV1Api, nodes: Nodes) -> None:
    nodes.create("gpu-a", {"apps": "phi-3"})
    nodes.create("gpu-b", {"apps": "phi-3"})
    nodes.cordon("gpu-b")
    report = ensure(core, request())
    assert (report.ready, report.worker_nodes) == (False, ["gpu-a"])


def test_match_expressions_select_nodes(core: CoreV1Api, nodes: Nodes) -> None:
    nodes.create("big-1", {"apps": "phi-3", "tier": "gpu-large"})
    nodes.create("small-1", {"apps": "phi-3", "tier": "cpu"})
    nodes.create("big-2", {"apps": "phi-3", "tier": "gpu"})
    req = request(match_expressions=(LabelRequirement("tier", "In", ("gpu", "gpu-large")),))
    report = ensure(core, req)
    assert report.ready and report.worker_nodes == ["big-1", "big-2"]


def test_preferred_nodes_are_used_first(core: CoreV1Api, nodes: Nodes) -> None:
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        nodes.create(name, {"apps": "phi-3"})
    report = ensure(core, request(preferred_nodes=("gpu-c", "gpu-b")))
    assert report.ready and report.worker_nodes == ["gpu-c", "gpu-b"]

    short = ensure(core, request(node_count=4, preferred_nodes=("gpu-z", "gpu-a")))
    assert short.ready is False
    assert short.worker_nodes == ["gpu-a", "gpu-b", "gpu-c"]
    assert "preferred nodes not found or not matching labelSelector: gpu-z" in short.message


def test_gpu_labels_that_fall_short_are_reported(core: CoreV1Api, nodes: Nodes) -> None:
    nodes.create("v100", {"apps": "phi-3", **V100})
    nodes.create("a100-1", {"apps": "phi-3", **A100X2})
    req = request(gpus_per_node=2, gpu_memory_needed_gb=80)

    mismatch = ensure(core, req)
    assert (mismatch.ready, mismatch.reason) == (False, "NodeMismatch")
    assert "v100: 1 GPUs, needs 2, 16384 MiB per GPU (17.2 GB), needs 80 GB" in mismatch.message
    assert mismatch.worker_nodes == ["a100-1"]

    # With enough suitable nodes the Workspace is ready, and the unsuitable one is still named.
    nodes.create("a100-2", {"apps": "phi-3", **A100X2})
    ready = ensure(core, req)
    assert (ready.ready, ready.reason) == (True, "Ready")
    assert ready.worker_nodes == ["a100-1", "a100-2"]
    assert ready.message.startswith("2 nodes Ready (NVIDIA-A100-SXM4-80GB); not used: v100")


def test_nodes_without_gpu_labels_are_trusted(core: CoreV1Api, nodes: Nodes) -> None:
    nodes.create("plain", {"apps": "phi-3"})
    report = ensure(core, request(node_count=1, gpus_per_node=4, gpu_memory_needed_gb=80))
    assert report.ready and report.worker_nodes == ["plain"]


def test_gpu_facts_from_labels() -> None:
    assert GpuFacts.from_labels(A100X2) == GpuFacts(2, 81920, "NVIDIA-A100-SXM4-80GB")
    assert GpuFacts.from_labels({"nvidia.com/gpu.count": "two"}) == GpuFacts(None, None, None)
    # 16 GiB cards meet a "16 GB" plan (GiB > GB).
    assert GpuFacts(1, 16384, None).shortfalls(request(gpus_per_node=1, gpu_memory_needed_gb=16)) == []


def test_release_is_a_no_op(core: CoreV1Api, nodes: Nodes, fake_apiserver: FakeApiServer) -> None:
    nodes.create("gpu-a", {"apps": "phi-3"})
    fake_apiserver.reset_request_stats()
    assert asyncio.run(ByoProvisioner(core).release(request())) is True
    assert fake_apiserver.count_requests() == 0
    assert nodes.names() == ["gpu-a"]


def test_kubernetes_errors_are_reported(core: CoreV1Api, fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.inject_errors("nodes", code=503, verbs=["list"])
    report = ensure(core, request())
    assert (report.ready, report.reason) == (False, "KubernetesError")
    assert "503" in report.message
