"""Fixtures for node provisioning tests: the fake API server, Node objects, and the fake ARM wired to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client import CoreV1Api, V1Node, V1NodeSpec, V1ObjectMeta, V1Taint

from controller.nodes.base import node_name
from tests.harness.fake_arm import FakeArm
from tests.harness.fixtures import fake_apiserver, k8s_api_client

__all__ = ["fake_apiserver", "k8s_api_client"]  # re-exported so that pytest finds them here


class Nodes:
    """Creates and changes Node objects in the fake API server the way kubelet and AKS would."""

    def __init__(self, core: CoreV1Api) -> None:
        self.core = core

    def create(
        self, name: str, labels: dict[str, str], *, ready: bool = True, taints: list[str] | None = None
    ) -> None:
        self.core.create_node(
            V1Node(
                api_version="v1",
                kind="Node",
                metadata=V1ObjectMeta(name=name, labels=labels),
                spec=V1NodeSpec(taints=[_taint(t) for t in taints or []]),
            )
        )
        # The API server drops `status` on create; kubelet reports it through the subresource.
        self.set_ready(name, ready)

    def set_ready(self, name: str, ready: bool = True) -> None:
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet is posting ready status" if ready else "container runtime starting",
        }
        self.core.patch_node_status(name, {"status": {"conditions": [condition]}})

    def cordon(self, name: str) -> None:
        self.core.patch_node(name, {"spec": {"unschedulable": True}})

    def names(self, label_selector: str = "") -> list[str]:
        return sorted(node_name(n) for n in self.core.list_node(label_selector=label_selector).items)

    def delete(self, name: str) -> None:
        self.core.delete_node(name)


def _taint(spec: str) -> V1Taint:
    key_value, effect = spec.split(":")
    key, _, value = key_value.partition("=")
    return V1Taint(key=key, value=value, effect=effect)


@pytest.fixture
def core(k8s_api_client: kubernetes.client.ApiClient) -> CoreV1Api:
    return CoreV1Api(k8s_api_client)


@pytest.fixture
def nodes(core: CoreV1Api) -> Nodes:
    return Nodes(core)


@pytest.fixture
def arm(nodes: Nodes) -> Iterator[FakeArm]:
    """A fake ARM whose agent pools grow and shrink NotReady Nodes, as a VM scale set does."""

    def pool_succeeded(pool: str, resource: dict[str, Any]) -> None:
        props = resource["properties"]
        existing = nodes.names(f"agentpool={pool}")
        wanted = [f"aks-{pool}-12345678-vmss{i:06d}" for i in range(props["count"])]
        labels = {
            **props.get("nodeLabels", {}),
            "agentpool": pool,
            "kubernetes.azure.com/agentpool": pool,
            "node.kubernetes.io/instance-type": props["vmSize"],
        }
        for name in wanted:
            if name not in existing:
                nodes.create(name, labels, ready=False, taints=props.get("nodeTaints"))
        for name in existing:
            if name not in wanted:
                nodes.delete(name)

    def pool_deleted(pool: str) -> None:
        for name in nodes.names(f"agentpool={pool}"):
            nodes.delete(name)

    with FakeArm(polls_until_done=2) as server:
        server.on_pool_succeeded = pool_succeeded
        server.on_pool_deleted = pool_deleted
        yield server
