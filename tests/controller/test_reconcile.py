"""The reconcile in this process, against the fake API server: which Workspace events start one, and
that one reconcile sizes a Workspace once."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

import kopf
import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api

import controller.render
import presets.sizing
from controller.nodes.base import NodeProvisioner
from controller.nodes.byo import ByoProvisioner
from controller.reconcile import Reconciler
from controller.settings import ControllerOptions
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from tests.controller.cluster import A100, SETTINGS, Cluster, install_crds, sized_workspace, tuning_workspace
from tests.controller.workspaces import workspace


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
    assert reconciler.cache.workspace("team", "ws") == version("7")
    reconciler.observe_workspace(version("7"), deleted=True)
    assert reconciler.cache.workspace("team", "ws") is None
    assert reconciler.cache.workspaces() == []


def count_sizings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap every `plan_*` function (presets.sizing's and controller.render's) wherever it was imported,
    calling through; the names of the outermost calls, one per sizing (plan_for calls plan_inference)."""
    planners = {
        id(fn): fn
        for module in (presets.sizing, controller.render)
        for name, fn in vars(module).items()
        if name.startswith("plan_") and callable(fn)
    }
    calls: list[str] = []
    depth = [0]

    def counting(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                calls.append(fn.__name__)
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    wrappers = {key: counting(fn) for key, fn in planners.items()}
    for module in list(sys.modules.values()):
        if not module.__name__.startswith(("controller", "presets", "kuberay", "tuning", "serve_apps")):
            continue
        for name, value in list(vars(module).items()):
            if id(value) in wrappers and value is planners[id(value)]:
                monkeypatch.setattr(module, name, wrappers[id(value)])
    return calls


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        yield Cluster(server, api, cast(FakeKubeRay, None))


@pytest.mark.parametrize("child", ["rayservices", "rayjobs"])
def test_one_reconcile_sizes_the_workspace_once(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, child: str
) -> None:
    namespace = cluster.namespace("sizing")
    cluster.gpu_node("gpu-0", {"pool": namespace})
    if child == "rayservices":
        created = cluster.create_workspace(sized_workspace(namespace, A100, "phi-3-mini-4k-instruct"))
    else:
        training = "training_config:\n  TrainingArguments:\n    num_train_epochs: 1\n"
        configmap = {"name": "training", "namespace": namespace}
        cluster.add({"kind": "ConfigMap", "metadata": configmap, "data": {"training_config.yaml": training}})
        created = cluster.create_workspace(tuning_workspace(namespace, "registry.test/out:1"))
    name = created["metadata"]["name"]
    # Events go through kopf's queue, which only a running operator has.
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    sizings = count_sizings(monkeypatch)
    reconciler = Reconciler(
        cluster.api, ByoProvisioner(CoreV1Api(cluster.api)), ControllerOptions(settings=SETTINGS)
    )

    asyncio.run(reconciler.reconcile(namespace, name))

    # The reconcile went all the way: children created, status written.
    assert cluster.server.list(child, namespace)
    stored = cluster.workspace(namespace, name)
    assert stored is not None and stored.get("status")
    assert len(sizings) == 1, sizings
