"""Adapter health in the Workspace status: the app's own `/health`, read through the service proxy.

KubeRay only knows that the Serve application is RUNNING; an adapter image that failed to pull leaves
it RUNNING (the base model and the other adapters keep serving). The controller reads the Workspace's
`/health` through the API server's service proxy and reports such an adapter as `InferenceReady=False`
with the adapter's reason and the registry's message.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from controller.conditions import Observation, Problem, adapter_problem, workspace_status
from controller.manifests import manifests
from controller.nodes.base import NodeReport
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from harness.kairay_up import free_port
from kuberay.status import ServiceHealth
from tests.controller.cluster import (
    Cluster,
    Controller,
    condition_is,
    conditions,
    install_crds,
    service_account_kubeconfig,
    state,
)

NAMESPACE = "adapters"
MISSING_REF = "registry.test/adapters/missing:1"
# What serve_apps.adapters reports for an image the registry does not have.
REGISTRY_MESSAGE = (
    f"pulling {MISSING_REF}: manifest of {MISSING_REF} not found (MANIFEST_UNKNOWN manifest unknown)"
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NODES_READY = NodeReport(True, "Ready", "1 nodes Ready", ["gpu-0"], 1)
RUNNING = ServiceHealth(True, "Ready", "all Serve applications are RUNNING")


def health(**failed: tuple[str, str]) -> dict[str, Any]:
    """A `/health` answer of the Serve app (serve_apps/ingress.py) with adapters `good` and `missing`;
    `failed` maps an adapter to its (reason, message)."""
    adapters = {
        name: {
            "name": name,
            "ready": name not in failed,
            "reason": failed[name][0] if name in failed else "Ready",
            "message": failed[name][1] if name in failed else "",
        }
        for name in ("good", "missing")
    }
    return {"status": "ok", "model": "phi-3-mini-4k-instruct", "adapters": adapters}


# --- pure: /health → Problem → status ----------------------------------------------------------------


def test_adapter_problem_names_each_failed_adapter_with_the_registry_message() -> None:
    answer = health(missing=("AdapterPullFailed", REGISTRY_MESSAGE))
    assert adapter_problem(answer, {"good", "missing"}) == Problem(
        "AdapterPullFailed", f"adapter missing: {REGISTRY_MESSAGE}", final=False
    )
    both = health(good=("AdapterInvalid", "no adapter_config.json"), missing=("AdapterPullFailed", "401"))
    problem = adapter_problem(both, {"good", "missing"})
    assert problem is not None and problem.reason == "AdapterInvalid"
    assert problem.message == "adapter good: no adapter_config.json; adapter missing: 401"


@pytest.mark.parametrize(
    "answer",
    [
        health(),
        {"status": "unavailable", "message": "engine died"},
        ["not", "an", "object"],
        {"adapters": {"missing": "garbage"}},
    ],
)
def test_no_adapter_problem_without_a_failed_adapter(answer: Any) -> None:
    assert adapter_problem(answer, {"good", "missing"}) is None


def test_adapters_the_workspace_no_longer_lists_are_ignored() -> None:
    # A replica not yet reconfigured may still report an adapter the user has removed.
    assert adapter_problem(health(missing=("AdapterPullFailed", "gone")), {"good"}) is None


def test_failed_adapter_makes_a_running_app_not_ready() -> None:
    problem = Problem("AdapterPullFailed", f"adapter missing: {REGISTRY_MESSAGE}", final=False)
    observation = Observation(1, nodes=NODES_READY, service=RUNNING, adapters=problem)
    status = workspace_status("inference", observation, None, T0)
    found = {c["type"]: c for c in status["conditions"]}
    assert found["ResourceReady"]["status"] == "True"
    for kind in ("InferenceReady", "WorkspaceSucceeded"):
        assert (found[kind]["status"], found[kind]["reason"]) == ("False", "AdapterPullFailed")
        assert found[kind]["message"] == problem.message
    # It serves (base model, other adapters), just not everything asked for: neither Pending nor Failed.
    assert status["state"] == "NotReady"


def test_kuberay_verdict_comes_first_while_the_app_is_not_running() -> None:
    deploying = ServiceHealth(False, "Deploying", "Serve applications not running: ws is DEPLOYING")
    problem = Problem("AdapterPullFailed", "adapter missing: 404", final=False)
    status = workspace_status(
        "inference", Observation(1, nodes=NODES_READY, service=deploying, adapters=problem), None, T0
    )
    inference = next(c for c in status["conditions"] if c["type"] == "InferenceReady")
    assert inference["reason"] == "Deploying"


def test_rbac_allows_reading_the_service_proxy_only() -> None:
    (role,) = [d for d in manifests() if d["kind"] == "ClusterRole"]
    proxy = [rule for rule in role["rules"] if "services/proxy" in rule["resources"]]
    assert proxy == [{"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]}]


# --- the real controller against the fake API server's service proxy ----------------------------------


class HealthServer:
    """The Workspace's `/health` on loopback: what the service proxy forwards to."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = health()
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if self.path != "/health":
                    self.send_error(404)
                    return
                body = json.dumps(owner.answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def live(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, job_run_seconds=0.3, watch_timeout_seconds=1) as kuberay:
            cluster = Cluster(server, api, kuberay)
            liveness = f"http://127.0.0.1:{free_port()}/healthz"
            controller = cluster.controller = Controller(
                service_account_kubeconfig(server, tmp_path / "kubeconfig"),
                tmp_path / "controller.log",
                "--liveness",
                liveness,
            ).start()
            try:
                # The status waits below are short; a controller slow to start on a busy machine must not
                # eat into them.
                cluster.wait("the controller to be live", lambda: live(liveness), timeout=120)
                yield cluster
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert cluster.denied() == []
            assert kuberay.errors == []


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    try:
        yield server
    finally:
        server.close()


def test_the_fake_service_proxy_answers_like_the_api_server(health_server: HealthServer) -> None:
    with FakeApiServer() as server, server.api_client() as api:
        core = CoreV1Api(api)

        def get(target: str, path: str = "health") -> tuple[int, str]:
            try:
                response = cast(
                    urllib3.BaseHTTPResponse,
                    core.connect_get_namespaced_service_proxy_with_path(
                        target, "default", path, _preload_content=False
                    ),
                )
            except ApiException as exc:
                return int(exc.status or 0), str(exc.body)
            return response.status, response.data.decode()

        def refusal(target: str) -> tuple[int, str]:
            """The API server's own answer: a Status object."""
            code, body = get(target)
            return code, json.loads(body)["message"]

        assert refusal("ws:80") == (404, 'services "ws" not found')
        service = {"name": "ws", "namespace": "default"}
        ports = [{"name": "http", "port": 80, "targetPort": 8000}]
        server.create({"apiVersion": "v1", "kind": "Service", "metadata": service, "spec": {"ports": ports}})
        assert refusal("ws:80") == (503, 'no endpoints available for service "ws"')
        server.set_service_proxy("default", "ws", health_server.url)
        for target in ("ws", "ws:80", "ws:http", "http:ws:80"):
            assert get(target) == (200, json.dumps(health_server.answer))
        assert refusal("ws:81") == (503, 'no service port "81" found for service "ws"')
        assert get("ws", "metrics")[0] == 404  # the app's own answer, passed through
        assert server.count_requests("get", "services/proxy") == 8


def test_pull_failure_marks_inference_not_ready_until_the_adapter_serves(
    cluster: Cluster, health_server: HealthServer
) -> None:
    health_server.answer = health(missing=("AdapterPullFailed", REGISTRY_MESSAGE))
    # The Workspace Service `ws` fronts the app: its proxy reaches the /health above.
    cluster.server.set_service_proxy(NAMESPACE, "ws", health_server.url)
    cluster.namespace(NAMESPACE)
    cluster.gpu_node("gpu-0", {"pool": NAMESPACE})
    adapters = [
        {"source": {"name": name, "image": f"registry.test/adapters/{name}:1"}, "strength": "1.0"}
        for name in ("good", "missing")
    ]
    cluster.create_workspace(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": "ws", "namespace": NAMESPACE},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"pool": NAMESPACE}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, "adapters": adapters},
        }
    )

    ws = cluster.wait_status(
        NAMESPACE,
        "ws",
        lambda o: condition_is(o, "InferenceReady", "False", "AdapterPullFailed"),
        "InferenceReady False with AdapterPullFailed",
    )
    found = conditions(ws)
    assert found["InferenceReady"]["message"] == f"adapter missing: {REGISTRY_MESSAGE}"
    assert condition_is(ws, "ResourceReady", "True")
    assert condition_is(ws, "WorkspaceSucceeded", "False", "AdapterPullFailed")
    assert state(ws) == "NotReady"
    # KubeRay itself says the app runs: only /health knew.
    rayservice = cluster.rayservice(NAMESPACE, "ws")
    assert rayservice is not None
    apps = rayservice["status"]["activeServiceStatus"]["applicationStatuses"]
    assert {app["status"] for app in apps.values()} == {"RUNNING"}
    proxied = [r for r in cluster.server.request_log if r.resource == "services/proxy"]
    assert proxied and {(r.path, r.code) for r in proxied} >= {
        (f"/api/v1/namespaces/{NAMESPACE}/services/ws:80/proxy/health", 200)
    }
    cluster.wait(
        "a Warning event with the registry's message",
        lambda: any(
            e["type"] == "Warning" and e["reason"] == "AdapterPullFailed" and REGISTRY_MESSAGE in e["message"]
            for e in cluster.events(NAMESPACE, "ws")
        ),
        timeout=5,
    )

    # The registry gets the image (or the Secret is fixed) and the next pull succeeds.
    health_server.answer = health()
    ws = cluster.wait_status(
        NAMESPACE, "ws", lambda o: condition_is(o, "InferenceReady", "True"), "InferenceReady True again"
    )
    assert condition_is(ws, "WorkspaceSucceeded", "True") and state(ws) == "Ready"
