"""The controller under the API server's faults, each against the fake with the real controller: 409s
on its writes, watches that drop or expire, throttling and 5xx on reads, deletes that fail while
finalizing, and an application `/health` that hangs, is huge or is not JSON. Each ends with nothing
lost and a condition or Event that says why."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest

from controller.conditions import REASON_ADAPTER_STATUS_UNKNOWN
from controller.finalizer import FINALIZER
from controller.kube import HEALTH_MAX_BYTES, HEALTH_TIMEOUT
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from tests.controller.cluster import Cluster, Controller, condition_is, conditions, install_crds
from tests.controller.test_controller import (
    WATCH_SECONDS,
    adapter,
    event_reasons,
    inference_workspace,
    own_services,
    ready,
    serving,
)

READS = ("get", "list")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("faults")
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
                server.clear_errors()
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert kuberay.errors == []


def gone(cluster: Cluster, namespace: str) -> bool:
    return (
        cluster.workspace(namespace, "ws") is None
        and cluster.rayservice(namespace, "ws") is None
        and cluster.server.get("services", namespace, "ws") is None
    )


def test_409_on_finalizer_status_and_finalizer_removal_is_retried(cluster: Cluster) -> None:
    cluster.namespace("c409")
    cluster.gpu_node("c409-gpu-0", {"pool": "c409"})
    # The first patches of the Workspace (adding the finalizer) conflict.
    adding = cluster.server.inject_errors("workspaces", code=409, count=2, verbs=["patch"], namespace="c409")
    cluster.create_workspace(inference_workspace("c409", "ws", "c409"))
    ws = cluster.wait_status("c409", "ws", ready, "Ready despite the conflicts")
    assert ws["metadata"]["finalizers"] == [FINALIZER] and adding.hits == 2

    # Then the status patches that follow a spec change (the change itself goes straight to the store).
    status = cluster.server.inject_errors("workspaces", code=409, count=2, verbs=["patch"], namespace="c409")
    cluster.server.patch("workspaces", "c409", "ws", {"inference": {"adapters": [adapter("sql")]}})
    ws = cluster.wait_status("c409", "ws", ready, "Ready again despite the conflicts")
    assert ws["metadata"]["generation"] == 2 and status.hits == 2
    refused = {
        (r.verb, r.resource) for r in cluster.server.request_log if r.namespace == "c409" and r.code == 409
    }
    assert refused == {("patch", "workspaces"), ("patch", "workspaces/status")}
    assert [o["metadata"]["name"] for o in cluster.server.list("rayservices", "c409")] == ["ws"]
    assert "sql" in (cluster.rayservice("c409", "ws") or {})["spec"]["serveConfigV2"]
    assert own_services(cluster, "c409") == ["ws"]

    # Removing the finalizer conflicts too: the Workspace stays until it is removed for real.
    removal = cluster.server.inject_errors("workspaces", code=409, count=3, verbs=["patch"], namespace="c409")
    cluster.delete_workspace("c409", "ws")
    cluster.wait("the Workspace and its children to be gone", lambda: gone(cluster, "c409"))
    assert removal.hits == 3


def test_429_and_5xx_on_get_list_and_watch_are_retried(cluster: Cluster) -> None:
    cluster.namespace("throttle")
    cluster.gpu_node("throttle-gpu-0", {"pool": "throttle"})
    # Only the controller's own reads: fake KubeRay reads RayServices and its own Services too.
    faults = [
        cluster.server.inject_errors(plural, code=code, count=2, verbs=READS, namespace="throttle", name=name)
        for plural, name in (("workspaces", None), ("services", "ws"))
        for code in (429, 500, 503)
    ]
    # kopf's watches are cluster-wide; they reconnect after the drop into the faults (not the
    # RayService watch's: fake KubeRay's shares the resource and counts a failed watch as its error).
    watches = [
        cluster.server.inject_errors(plural, code=code, count=1, verbs=["watch"])
        for plural in ("workspaces", "services")
        for code in (429, 503)
    ]
    cluster.server.drop_watches()
    cluster.create_workspace(inference_workspace("throttle", "ws", "throttle"))
    cluster.wait_status("throttle", "ws", ready, "Ready despite the throttling and 5xx")
    cluster.wait("every read fault to be met", lambda: all(f.hits == 2 for f in faults))
    cluster.wait("every watch fault to be met", lambda: all(w.hits == 1 for w in watches))
    cluster.wait(
        "an Event for the failed reads", lambda: "ReconcileFailed" in event_reasons(cluster, "throttle", "ws")
    )
    assert [o["metadata"]["name"] for o in cluster.server.list("rayservices", "throttle")] == ["ws"]


def test_changes_made_while_the_watches_are_down_are_acted_on_after_410(cluster: Cluster) -> None:
    serving(cluster, "dropped")
    server = cluster.server
    size = server.history_size
    # The watches fail to reconnect for a few seconds (kopf backs off), and the history they would
    # resume from is compacted meanwhile: they come back to a 410 and re-list. The RayService watch
    # reconnects at once, but into the same 410.
    down = [
        server.inject_errors(plural, code=503, count=2, verbs=["watch"])
        for plural in ("workspaces", "services")
    ]
    lists_before = server.count_requests("list", "workspaces")
    server.drop_watches()
    try:
        server.delete("services", "dropped", "ws")
        cluster.patch_workspace("dropped", "ws", {"inference": {"adapters": [adapter("sql")]}})
        server.history_size = 1
        for n in range(3):
            cluster.add({"kind": "ConfigMap", "metadata": {"name": f"churn-{n}", "namespace": "dropped"}})
        ws = cluster.wait_status("dropped", "ws", ready, "Ready with the change made while down")
    finally:
        server.history_size = size
    assert "sql" in (cluster.rayservice("dropped", "ws") or {})["spec"]["serveConfigV2"]
    assert own_services(cluster, "dropped") == ["ws"]
    assert ws["metadata"]["generation"] == 2
    cluster.wait("the watches to be back", lambda: all(d.hits == 2 for d in down))
    cluster.wait(
        "a re-list after the 410", lambda: server.count_requests("list", "workspaces") > lists_before
    )


def test_failed_deletes_keep_the_finalizer_until_the_children_are_gone(cluster: Cluster) -> None:
    serving(cluster, "stuck")
    failing = cluster.server.inject_errors(
        "rayservices", code=500, count=3, verbs=["delete"], namespace="stuck"
    )
    cluster.delete_workspace("stuck", "ws")
    cluster.wait("a failed delete", lambda: failing.hits >= 1)
    held = cluster.workspace("stuck", "ws")
    assert held is not None and held["metadata"]["finalizers"] == [FINALIZER]
    cluster.wait("the Workspace and its children to be gone", lambda: gone(cluster, "stuck"))
    assert failing.hits == 3
    warnings = [e for e in cluster.events("stuck", "ws") if e["reason"] == "DeleteFailed"]
    assert warnings and "500" in warnings[0]["message"] and warnings[0]["type"] == "Warning"


class BadHealth:
    """An application whose `/health` is fine, hangs, answers too much, or answers something not JSON."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.mode == "hang":
                    outer.release.wait(HEALTH_TIMEOUT * 4)
                    return
                body = {
                    "ok": json.dumps({"adapters": {"sql": {"ready": True}}}).encode(),
                    "huge": b"[" * (HEALTH_MAX_BYTES * 3),
                }.get(outer.mode, b"<html>oops</html>")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_health_probe_that_hangs_is_huge_or_not_json_is_bounded_and_reported(cluster: Cluster) -> None:
    app = BadHealth()
    try:
        cluster.server.set_service_proxy("health", "ws", app.url)
        cluster.namespace("health")
        cluster.gpu_node("health-gpu-0", {"pool": "health"})
        cluster.create_workspace(inference_workspace("health", "ws", "health", adapters=[adapter("sql")]))
        cluster.wait_status("health", "ws", ready, "Ready while /health answers")
        for mode, why in (("hang", "no answer in time"), ("huge", "larger than"), ("not-json", "Expecting")):
            app.mode = mode
            started = time.monotonic()

            def unknown(obj: dict[str, object], why: str = why) -> bool:
                found = conditions(obj).get("InferenceReady") or {}
                return found.get("reason") == REASON_ADAPTER_STATUS_UNKNOWN and why in found["message"]

            ws = cluster.wait_status("health", "ws", unknown, f"AdapterStatusUnknown for {mode}")
            # One resync, one probe bounded by HEALTH_TIMEOUT, and the status write.
            assert time.monotonic() - started < HEALTH_TIMEOUT * 2
            assert not condition_is(ws, "WorkspaceSucceeded", "True")
        # The controller kept running throughout: a good answer makes the Workspace Ready again.
        app.mode = "ok"
        cluster.wait_status("health", "ws", ready, "Ready once /health answers again")
    finally:
        app.close()
