"""The controller's pure helpers: catalog errors as condition reasons, node requests and kopf
credentials; which Workspace events start a reconcile, and in which order
API calls get a thread."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kubernetes.client import ApiClient, Configuration

from controller.handlers import (
    PriorityGate,
    Reconciler,
    catalog_problem,
    connection_info,
    node_request,
    release_request,
)
from controller.nodes.base import NodeProvisioner
from controller.settings import ControllerOptions
from kairay.api.workspace import parse_workspace
from presets.validation import validate_workspace


def workspace(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "count": 2,
            "labelSelector": {
                "matchLabels": {"apps": "ws"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["1"]}],
            },
            "preferredNodes": ["node-b"],
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }
    for key, value in changes.items():
        obj[key] = {**obj[key], **value}
    return obj


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"inference": {"preset": {"name": "gpt-17-mega"}}}, "InvalidPreset"),
        ({"resource": {"instanceType": "Standard_Imaginary_v9"}}, "InvalidInstanceType"),
        (
            {
                "resource": {"instanceType": "Standard_NC6s_v3"},
                "metadata": {"annotations": {"kaito.sh/runtime": "transformers"}},
                "inference": {"preset": {"name": "falcon-7b-instruct"}},
            },
            "InsufficientGPUMemory",
        ),
    ],
)
def test_catalog_errors_get_kaito_reasons(changes: dict[str, Any], reason: str) -> None:
    obj = workspace(**changes)
    errors = validate_workspace(obj)
    assert errors
    problem = catalog_problem(errors)
    assert problem.reason == reason and problem.final
    assert str(errors[0]) in problem.message


def test_node_requests_carry_the_selector_and_sizes() -> None:
    ws = parse_workspace(workspace())
    request = node_request(ws, node_count=2, gpus_per_node=1, gpu_memory_gb=80, os_disk_gb=100)
    assert (request.namespace, request.name, request.uid) == ("team", "ws", "u-1")
    assert request.label_selector() == "apps=ws,zone in (1)"
    assert request.preferred_nodes == ("node-b",)
    assert (request.node_count, request.gpus_per_node, request.gpu_memory_needed_gb) == (2, 1, 80)
    released = release_request(
        {"metadata": {"name": "ws", "namespace": "team", "uid": "u-1"}, "resource": {"count": 3}}
    )
    assert (released.name, released.node_count, released.instance_type) == ("ws", 3, "")


def test_kopf_credentials_from_a_client_configuration() -> None:
    configuration = Configuration(host="https://api.test:6443", api_key={"authorization": "Bearer t0k3n"})
    configuration.ssl_ca_cert = "/ca.crt"
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token, info.ca_path, info.insecure) == (
        "https://api.test:6443",
        "Bearer",
        "t0k3n",
        "/ca.crt",
        False,
    )
    bare = connection_info(Configuration(host="http://127.0.0.1:1", api_key={"authorization": "raw"}))
    assert (bare.scheme, bare.token) == (None, "raw")


def test_only_workspace_events_with_news_start_a_reconcile() -> None:
    # Nothing here reaches the API server or the provisioner.
    reconciler = Reconciler(ApiClient(Configuration()), cast(NodeProvisioner, None), ControllerOptions())

    def version(rv: str) -> dict[str, Any]:
        obj = workspace()
        obj["metadata"]["resourceVersion"] = rv
        return obj

    assert reconciler.observe_workspace(version("5"))  # first seen (after a restart too)
    assert not reconciler.observe_workspace(version("5"))  # the echo of a write made from it
    assert not reconciler.observe_workspace(version("4"))  # a watch behind that write
    assert reconciler.observe_workspace(version("7"))  # someone else's change
    assert reconciler.workspace("team", "ws") == version("7")
    reconciler.observe_workspace(version("7"), deleted=True)
    assert reconciler.workspace("team", "ws") is None
    assert reconciler.workspaces() == []


def test_the_gate_lets_the_most_urgent_waiter_through_first() -> None:
    async def scenario() -> list[str]:
        gate, order = PriorityGate(1), []

        async def call(label: str, priority: int) -> None:
            async with gate.slot(priority):
                order.append(label)
                await asyncio.sleep(0)

        async with gate.slot(2):
            waiters = [asyncio.create_task(call(label, p)) for label, p in (("a", 2), ("b", 0), ("c", 1))]
            cancelled = asyncio.create_task(call("cancelled", 0))
            await asyncio.sleep(0)
            cancelled.cancel()
        await asyncio.gather(*waiters, cancelled, return_exceptions=True)
        async with gate.slot(2):  # every slot came back
            order.append("last")
        return order

    assert asyncio.run(scenario()) == ["b", "c", "a", "last"]
