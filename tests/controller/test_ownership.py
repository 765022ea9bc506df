"""The ownership check: a Workspace updates and deletes only the objects whose owner references name
its uid. An object that merely has its name (someone's Service, a RayService made by hand, the children
of an earlier Workspace of this name still being deleted) is left byte for byte as it was, and the
Workspace says why in a `ResourceConflict` condition and a Warning Event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.conditions import REASON_RESOURCE_CONFLICT
from controller.ownership import conflict, owned_by
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from tests.controller.cluster import PLURAL, Cluster, Controller, condition_is, conditions, install_crds
from tests.controller.test_controller import WATCH_SECONDS, inference_workspace, ready


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ownership")
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, job_run_seconds=0.3, watch_timeout_seconds=WATCH_SECONDS) as kuberay:
            cluster = Cluster(server, api, kuberay)
            controller = cluster.controller = Controller(
                server.write_kubeconfig(root / "kubeconfig"), root / "controller.log"
            ).start()
            try:
                yield cluster
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert kuberay.errors == []


def test_owned_only_by_an_owner_reference_with_the_uid() -> None:
    child = {
        "metadata": {"name": "ws", "ownerReferences": [{"kind": "Workspace", "name": "ws", "uid": "u-1"}]}
    }
    assert owned_by(child, "u-1")
    assert not owned_by(child, "u-2")  # same name, another Workspace
    assert not owned_by({"metadata": {"name": "ws"}}, "u-1")
    assert not owned_by({"metadata": {"ownerReferences": [{"name": "ws"}]}}, "")


def test_the_conflict_names_the_object_and_why() -> None:
    foreign = conflict("Service", {"metadata": {"namespace": "ns", "name": "ws"}})
    assert (foreign.reason, foreign.final) == (REASON_RESOURCE_CONFLICT, False)
    assert foreign.message.startswith("Service ns/ws exists and is not owned by this Workspace")
    leaving = conflict(
        "RayService", {"metadata": {"namespace": "ns", "name": "ws", "deletionTimestamp": "t"}}
    )
    assert "still being deleted" in leaving.message


def snapshot(obj: dict[str, Any] | None) -> str:
    assert obj is not None
    return json.dumps(obj, sort_keys=True)


def unchanged_by_kairay(obj: dict[str, Any] | None) -> str:
    """A RayService apart from what KubeRay itself writes to any RayService (its status)."""
    assert obj is not None
    metadata = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return json.dumps({"metadata": metadata, "spec": obj["spec"]}, sort_keys=True)


def conflicted(kind: str, namespace: str) -> Any:
    def check(obj: dict[str, Any]) -> bool:
        found = conditions(obj).get("InferenceReady") or {}
        return (
            found.get("reason") == REASON_RESOURCE_CONFLICT and f"{kind} {namespace}/ws" in found["message"]
        )

    return check


def foreign_service(namespace: str) -> dict[str, Any]:
    """A Service someone else runs, under the name a Workspace `ws` would give its own."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ws", "namespace": namespace, "labels": {"app": "billing"}},
        "spec": {"selector": {"app": "billing"}, "ports": [{"port": 443, "targetPort": 8443}]},
    }


def test_a_foreign_service_is_neither_adopted_nor_deleted(cluster: Cluster) -> None:
    namespace = cluster.namespace("foreign-svc")
    cluster.gpu_node("foreign-svc-gpu-0", {"pool": namespace})
    before = snapshot(cluster.server.create(foreign_service(namespace)))

    cluster.create_workspace(inference_workspace(namespace, "ws", namespace))
    ws = cluster.wait_status(namespace, "ws", conflicted("Service", namespace), "a ResourceConflict")
    assert "not owned by this Workspace" in conditions(ws)["InferenceReady"]["message"]
    assert not condition_is(ws, "WorkspaceSucceeded", "True")
    cluster.wait(
        "a Warning Event naming the Service",
        lambda: any(
            e["type"] == "Warning"
            and e["reason"] == REASON_RESOURCE_CONFLICT
            and "Service foreign-svc/ws" in e["message"]
            for e in cluster.events(namespace, "ws")
        ),
    )
    # Several resyncs later, still untouched.
    cluster.wait("two more resyncs", lambda: cluster.server.count_requests("get", "services") >= 3)
    assert snapshot(cluster.server.get("services", namespace, "ws")) == before

    cluster.delete_workspace(namespace, "ws")
    cluster.wait("the Workspace to be gone", lambda: cluster.workspace(namespace, "ws") is None)
    assert snapshot(cluster.server.get("services", namespace, "ws")) == before
    # Its own RayService (created before the Service step found the conflict, or not at all) is gone.
    cluster.wait("no RayService", lambda: cluster.rayservice(namespace, "ws") is None)


def test_a_foreign_rayservice_is_left_alone_until_it_is_gone(cluster: Cluster) -> None:
    namespace = cluster.namespace("foreign-rs")
    cluster.gpu_node("foreign-rs-gpu-0", {"pool": namespace})
    cluster.create_workspace(inference_workspace(namespace, "other", namespace))
    cluster.wait_status(namespace, "other", ready, "the other Workspace to be Ready")
    # A RayService `ws` made by hand from another Workspace's, with no owner references.
    hand_made = cluster.rayservice(namespace, "other")
    assert hand_made is not None
    metadata = {"name": "ws", "namespace": namespace, "labels": {"team": "research"}}
    cluster.server.create({**{k: hand_made[k] for k in ("apiVersion", "kind", "spec")}, "metadata": metadata})
    before = unchanged_by_kairay(cluster.rayservice(namespace, "ws"))

    cluster.create_workspace(inference_workspace(namespace, "ws", namespace))
    cluster.wait_status(namespace, "ws", conflicted("RayService", namespace), "a ResourceConflict")
    assert cluster.server.get("services", namespace, "ws") is None  # nothing written at all
    assert unchanged_by_kairay(cluster.rayservice(namespace, "ws")) == before

    # Its owner removes it: the Workspace now gets children of its own.
    cluster.server.delete("rayservices", namespace, "ws")
    ws = cluster.wait_status(namespace, "ws", ready, "Ready with children of its own")
    for child in (cluster.rayservice(namespace, "ws"), cluster.server.get("services", namespace, "ws")):
        assert child is not None and owned_by(child, ws["metadata"]["uid"])


def test_recreated_under_the_same_name_adopts_nothing_of_the_old(cluster: Cluster) -> None:
    namespace = cluster.namespace("recreate")
    cluster.gpu_node("recreate-gpu-0", {"pool": namespace})
    cluster.create_workspace(inference_workspace(namespace, "ws", namespace))
    old = cluster.wait_status(namespace, "ws", ready, "the first Workspace to be Ready")
    # The old RayService is held on its way out (as KubeRay's own finalizer would hold it).
    cluster.server.patch("rayservices", namespace, "ws", {"metadata": {"finalizers": ["test/hold"]}})

    cluster.delete_workspace(namespace, "ws")
    # The controller waits for it; an impatient user strips the finalizer by hand.
    cluster.wait(
        "the RayService to be on its way out",
        lambda: (cluster.rayservice(namespace, "ws") or {}).get("metadata", {}).get("deletionTimestamp"),
    )
    cluster.server.patch(PLURAL, namespace, "ws", {"metadata": {"finalizers": None}})
    cluster.wait("the old Workspace to be gone", lambda: cluster.workspace(namespace, "ws") is None)
    cluster.create_workspace(inference_workspace(namespace, "ws", namespace))
    new = cluster.wait_status(namespace, "ws", conflicted("RayService", namespace), "a ResourceConflict")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "still being deleted" in conditions(new)["InferenceReady"]["message"]
    held = cluster.rayservice(namespace, "ws")
    assert held is not None and owned_by(held, old["metadata"]["uid"])
    assert not owned_by(held, new["metadata"]["uid"])

    cluster.server.patch("rayservices", namespace, "ws", {"metadata": {"finalizers": None}})
    new = cluster.wait_status(namespace, "ws", ready, "the new Workspace Ready with its own children")
    for child in (cluster.rayservice(namespace, "ws"), cluster.server.get("services", namespace, "ws")):
        assert child is not None
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [new["metadata"]["uid"]]
