"""The node request a Workspace makes: its selector and sizes."""

from __future__ import annotations

from controller.workloads.common import node_request
from kairay.api.workspace import parse_workspace
from tests.controller.workspaces import workspace


def test_node_requests_carry_the_selector_and_sizes() -> None:
    ws = parse_workspace(workspace())
    request = node_request(ws, node_count=2, gpus_per_node=1, gpu_memory_gb=80, os_disk_gb=100)
    assert (request.namespace, request.name, request.uid) == ("team", "ws", "u-1")
    assert request.label_selector() == "apps=ws,zone in (1)"
    assert request.preferred_nodes == ("node-b",)
    assert (request.node_count, request.gpus_per_node, request.gpu_memory_needed_gb) == (2, 1, 80)
