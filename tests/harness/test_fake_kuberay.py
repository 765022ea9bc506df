"""The fake KubeRay against the fake API server, driven through kairay's own KubeRay client and readers."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay, install_crds, kuberay_crds, load_schema, schema_errors
from kuberay import (
    RAYJOBS,
    RAYSERVICES,
    KubeRayClient,
    RayClusterPlan,
    ServiceHealth,
    build_rayjob,
    build_rayservice,
    rayjob_progress,
    rayservice_health,
)

T = TypeVar("T")
NS = "default"
SERVE: dict[str, Any] = {
    "applications": [
        {
            "name": "llm",
            "route_prefix": "/",
            "import_path": "serve_apps.app:build_app",
            "args": {
                "name": "llm",
                "model": {"name": "llm", "preset": "smollm2-135m-instruct"},
                "adapters": [],
            },
            "deployments": [{"name": "LLMDeployment"}, {"name": "Ingress"}],
        }
    ]
}


@dataclass
class Env:
    server: FakeApiServer
    api: client.ApiClient
    kuberay: KubeRayClient
    fake: FakeKubeRay

    def health(self, name: str) -> ServiceHealth:
        obj = self.kuberay.get(RAYSERVICES, NS, name)
        assert obj is not None
        return rayservice_health(obj)

    def wait_health(
        self, name: str, predicate: Callable[[ServiceHealth], bool], what: str, timeout: float = 10.0
    ) -> ServiceHealth:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health(name)
            if predicate(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last: {health}")
            time.sleep(0.02)

    def clusters(self) -> list[dict[str, Any]]:
        listing = client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            "ray.io", "v1", NS, "rayclusters"
        )
        return list(cast(dict[str, Any], listing)["items"])

    def services(self) -> dict[str, dict[str, Any]]:
        listing = self.api.sanitize_for_serialization(client.CoreV1Api(self.api).list_namespaced_service(NS))
        return {item["metadata"]["name"]: item for item in listing["items"]}


@pytest.fixture
def env() -> Iterator[Env]:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(api)
        fake = FakeKubeRay(api, cluster_start_seconds=0.15, deploy_seconds=0.15, job_run_seconds=0.15, seed=7)
        with fake:
            yield Env(server, api, KubeRayClient(api), fake)
        assert fake.errors == []


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def plan(**overrides: Any) -> RayClusterPlan:
    values: dict[str, Any] = {
        "name": "ws",
        "namespace": NS,
        "image": "img:1",
        "gpus_per_worker": 1,
        "replicas": 2,
    }
    return RayClusterPlan(**(values | overrides))


def with_adapter(name: str) -> dict[str, Any]:
    config = copy.deepcopy(SERVE)
    config["applications"][0]["args"]["adapters"].append(
        {"name": name, "image": f"registry.example/{name}:1"}
    )
    return config


def test_crds_are_minimal_with_status_subresource() -> None:
    kinds = {crd["spec"]["names"]["kind"] for crd in kuberay_crds()}
    assert kinds == {"RayService", "RayJob", "RayCluster"}
    for crd in kuberay_crds():
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1"
        assert version["subresources"] == {"status": {}}
        assert version["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"] is True


def test_rayservice_becomes_ready_with_services_and_cluster(env: Env) -> None:
    created = env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE)).object
    first = env.wait_health("ws", lambda h: h.reason != "Pending", "a first status")
    assert (first.ready, first.reason) == (False, "Initializing")
    health = env.wait_health("ws", lambda h: h.ready, "ready")
    assert health.app_statuses == {"llm": "RUNNING"}

    obj = env.kuberay.get(RAYSERVICES, NS, "ws")
    assert obj is not None
    status = obj["status"]
    assert status["serviceStatus"] == "Running"
    assert status["numServeEndpoints"] == 3
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "UpgradeInProgress": "False",
    }
    deployments = status["activeServiceStatus"]["applicationStatuses"]["llm"]["serveDeploymentStatuses"]
    assert deployments == {"LLMDeployment": {"status": "HEALTHY"}, "Ingress": {"status": "HEALTHY"}}

    services = env.services()
    head, serve = services["ws-head-svc"], services["ws-serve-svc"]
    assert {p["port"] for p in head["spec"]["ports"]} == {8265, 10001, 6379, 8000}
    assert [p["port"] for p in serve["spec"]["ports"]] == [8000]
    for service in (head, serve):
        owner = service["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "RayService",
            "ws",
            created["metadata"]["uid"],
        )
        assert service["spec"]["selector"]["ray.io/cluster"] == health.ray_cluster_name

    clusters = env.clusters()
    assert [c["metadata"]["name"] for c in clusters] == [health.ray_cluster_name]
    assert clusters[0]["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert clusters[0]["spec"] == obj["spec"]["rayClusterConfig"]
    assert env.fake.violations == []


def test_serve_config_change_redeploys_in_place(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    cluster = env.wait_health("ws", lambda h: h.ready, "ready").ray_cluster_name

    assert env.kuberay.apply_rayservice(build_rayservice(plan(), with_adapter("a"))).action == "patched"
    seen: list[str] = []

    def settled() -> bool:
        health = env.health("ws")
        seen.append(health.reason)
        assert health.ray_cluster_name == cluster
        return health.ready

    wait_for(settled, what="redeployed")
    assert "Deploying" in seen
    assert env.fake.clusters_created("ws", NS) == [cluster]
    assert [c["metadata"]["name"] for c in env.clusters()] == [cluster]
    assert env.fake.violations == []


def test_cluster_change_prepares_a_new_cluster_and_switches(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    old = env.wait_health("ws", lambda h: h.ready, "ready").ray_cluster_name

    # Replicas alone are the autoscaler's business: no new cluster (as KubeRay's cluster hash).
    env.kuberay.apply_rayservice(build_rayservice(plan(replicas=3, max_replicas=3), SERVE))
    wait_for(lambda: env.health("ws").reason != "Pending")
    assert env.fake.clusters_created("ws", NS) == [old]

    env.kuberay.apply_rayservice(build_rayservice(plan(image="img:2", replicas=3, max_replicas=3), SERVE))
    upgrading = env.wait_health("ws", lambda h: h.upgrading, "upgrade")
    assert upgrading.ready  # the old cluster keeps serving
    assert upgrading.ray_cluster_name == old
    new = env.wait_health("ws", lambda h: h.ready and not h.upgrading, "switch").ray_cluster_name
    assert new != old
    assert env.fake.clusters_created("ws", NS) == [old, new]
    wait_for(lambda: [c["metadata"]["name"] for c in env.clusters()] == [new], what="old cluster deleted")
    wait_for(lambda: env.services()["ws-serve-svc"]["spec"]["selector"]["ray.io/cluster"] == new)
    assert env.fake.violations == []


def test_upgrade_strategy_none_keeps_the_cluster(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE, upgrade_strategy="None"))
    old = env.wait_health("ws", lambda h: h.ready, "ready").ray_cluster_name
    env.kuberay.apply_rayservice(build_rayservice(plan(image="img:2"), SERVE, upgrade_strategy="None"))
    wait_for(lambda: env.health("ws").ready)
    time.sleep(0.4)
    assert env.health("ws").ray_cluster_name == old
    assert env.fake.clusters_created("ws", NS) == [old]


def test_deploy_failure_until_the_spec_changes(env: Env) -> None:
    env.fake.fail_rayservice("ws", "DEPLOY_FAILED", "Deploying app 'llm' failed: adapter b not found")
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    health = env.wait_health("ws", lambda h: h.reason == "DeployFailed", "DEPLOY_FAILED")
    assert not health.ready
    assert health.failed
    assert "adapter b not found" in health.message
    time.sleep(0.4)
    assert env.health("ws").reason == "DeployFailed"  # it does not heal by itself

    env.kuberay.apply_rayservice(build_rayservice(plan(), with_adapter("a")))
    wait_for(lambda: env.health("ws").ready, what="recovery after a fix")
    assert env.fake.violations == []


def test_unhealthy_application_on_a_running_service(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    wait_for(lambda: env.health("ws").ready)
    env.fake.fail_rayservice("ws", "UNHEALTHY", "replica crashed", namespace=NS)
    health = env.wait_health("ws", lambda h: h.reason == "Unhealthy", "UNHEALTHY")
    assert "replica crashed" in health.message
    obj = env.kuberay.get(RAYSERVICES, NS, "ws")
    assert obj is not None
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"  # KubeRay still has serve endpoints; the app status says otherwise


def job_progress(env: Env, name: str) -> Any:
    obj = env.kuberay.get(RAYJOBS, NS, name)
    assert obj is not None
    return rayjob_progress(obj)


def test_rayjob_succeeds_and_its_cluster_is_shut_down(env: Env) -> None:
    env.kuberay.create(RAYJOBS, build_rayjob(plan(name="tune"), "python -m tuning.job", ttl_seconds=0))
    states: list[str] = []

    def done() -> bool:
        progress = job_progress(env, "tune")
        states.append(progress.state)
        return bool(progress.finished)

    wait_for(done, what="job end")
    final = job_progress(env, "tune")
    assert (final.state, final.reason, final.job_status, final.deployment_status) == (
        "Succeeded",
        "Succeeded",
        "SUCCEEDED",
        "Complete",
    )
    assert "Running" in states
    obj = env.kuberay.get(RAYJOBS, NS, "tune")
    assert obj is not None
    assert obj["status"]["rayJobInfo"]["startTime"]
    assert obj["status"]["endTime"]
    wait_for(lambda: env.clusters() == [], what="cluster deleted after the TTL")
    assert env.fake.violations == []


def test_rayjob_failure_is_reported_with_message(env: Env) -> None:
    env.fake.set_job_outcome("tune", "FAILED", "RuntimeError: dataset is empty")
    env.kuberay.create(
        RAYJOBS, build_rayjob(plan(name="tune"), "python -m tuning.job", shutdown_after_finishes=False)
    )
    wait_for(lambda: job_progress(env, "tune").finished)
    final = job_progress(env, "tune")
    assert (final.state, final.reason, final.message) == (
        "Failed",
        "AppFailed",
        "RuntimeError: dataset is empty",
    )
    time.sleep(0.2)
    assert len(env.clusters()) == 1  # kept: shutdownAfterJobFinishes is false


def test_rayjob_held_running_then_released(env: Env) -> None:
    env.fake.set_job_outcome("tune", "RUNNING")
    env.kuberay.create(RAYJOBS, build_rayjob(plan(name="tune"), "python -m tuning.job"))
    wait_for(lambda: job_progress(env, "tune").state == "Running")
    time.sleep(0.4)
    assert job_progress(env, "tune").state == "Running"
    env.fake.set_job_outcome("tune", "SUCCEEDED")
    wait_for(lambda: job_progress(env, "tune").state == "Succeeded")


def test_rayjob_deadline(env: Env) -> None:
    env.fake.set_job_outcome("tune", "RUNNING")
    env.kuberay.create(
        RAYJOBS, build_rayjob(plan(name="tune"), "python -m tuning.job", active_deadline_seconds=1)
    )
    wait_for(lambda: job_progress(env, "tune").finished, timeout=5)
    final = job_progress(env, "tune")
    assert (final.state, final.reason) == ("Failed", "DeadlineExceeded")


def test_invalid_objects_are_recorded(env: Env) -> None:
    bad = build_rayservice(plan(name="bad"), SERVE)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2
    bad["spec"]["serveConfigV2"] = "applications:\n- route_prefix: /\n"
    env.kuberay.create(RAYSERVICES, bad)

    def problems() -> str:
        return " | ".join(str(v) for v in env.fake.violations)

    wait_for(lambda: "replica" in problems() and "serveConfigV2" in problems(), what="violations")
    # The RayCluster made from it inherits the typo.
    assert all(v.name.startswith("bad") for v in env.fake.violations)


def test_deleting_the_rayservice_collects_its_children(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    wait_for(lambda: env.health("ws").ready)
    assert env.kuberay.delete(RAYSERVICES, NS, "ws")
    wait_for(lambda: env.clusters() == [] and not env.services(), what="garbage collection")


def test_schema_errors_helper() -> None:
    assert schema_errors(build_rayservice(plan(), SERVE)) == []
    assert (
        schema_errors({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}, "spec": {}})
        != []
    )


def _app_status(env: Env, name: str, app: str = "llm") -> dict[str, Any]:
    obj = env.kuberay.get(RAYSERVICES, NS, name)
    status = (obj or {}).get("status") or {}
    for side in ("activeServiceStatus", "pendingServiceStatus"):
        found = ((status.get(side) or {}).get("applicationStatuses") or {}).get(app)
        if found and found["status"] != "DEPLOYING":
            return cast(dict[str, Any], found)
    return {}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"import_path": "serve_apps.app:no_such_builder"}, "AttributeError: module 'serve_apps.app' has no"),
        ({"import_path": "no_such_package.app:build_app"}, "ModuleNotFoundError: No module named"),
        (
            {"args": {"name": "llm", "adapters": []}},
            "ValidationError: 1 validation error for AppConfig\nmodel",
        ),
        ({"args": {"name": "llm", "model": {"name": "m", "preset": "p"}, "replicas": 2}}, "replicas"),
    ],
)
def test_an_app_serve_cannot_build_is_deploy_failed_and_never_ready(
    env: Env, change: dict[str, Any], error: str
) -> None:
    config = copy.deepcopy(SERVE)
    config["applications"][0].update(change)
    env.kuberay.apply_rayservice(build_rayservice(plan(name="broken"), config))
    app = wait_for(lambda: _app_status(env, "broken"), what="an application status")
    assert app["status"] == "DEPLOY_FAILED"
    assert app["message"].startswith("Deploying app 'llm' failed with exception:\n")
    assert error in app["message"]
    assert "serveDeploymentStatuses" not in app
    time.sleep(0.4)
    assert not env.health("broken").ready
    assert env.fake.violations == []


def test_a_broken_app_in_place_is_deploy_failed_and_fixing_it_runs_again(env: Env) -> None:
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    wait_for(lambda: env.health("ws").ready)
    broken = copy.deepcopy(SERVE)
    broken["applications"][0]["args"]["num_replicas"] = 0
    env.kuberay.apply_rayservice(build_rayservice(plan(), broken))
    wait_for(lambda: _app_status(env, "ws").get("status") == "DEPLOY_FAILED", what="DEPLOY_FAILED")
    assert "num_replicas" in _app_status(env, "ws")["message"]
    env.kuberay.apply_rayservice(build_rayservice(plan(), SERVE))
    wait_for(lambda: env.health("ws").app_statuses == {"llm": "RUNNING"}, what="RUNNING again")


def test_a_serve_config_ray_refuses_deploys_nothing(env: Env) -> None:
    config = copy.deepcopy(SERVE)
    config["applications"][0]["route_prefix"] = 8000  # Serve wants a string starting with "/"
    env.kuberay.apply_rayservice(build_rayservice(plan(name="refused"), config))
    wait_for(lambda: "Ray Serve refuses it" in " ".join(map(str, env.fake.violations)), what="violation")
    assert "route_prefix" in " ".join(map(str, env.fake.violations))
    assert not env.health("refused").ready


def test_rayjob_whose_entrypoint_module_does_not_import_fails(env: Env) -> None:
    env.kuberay.create(RAYJOBS, build_rayjob(plan(name="tune"), "python -m tuning.no_such_job --x 1"))
    wait_for(lambda: job_progress(env, "tune").finished)
    final = job_progress(env, "tune")
    assert (final.state, final.reason, final.job_status) == ("Failed", "AppFailed", "FAILED")
    assert final.message.endswith("python: No module named tuning.no_such_job")


def test_released_schemas_make_the_server_refuse_prune_and_default_like_kuberay() -> None:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(api, released_schemas=True)
        kuberay = KubeRayClient(api)
        bad = build_rayservice(plan(name="bad"), SERVE)
        bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
        with pytest.raises(ApiException) as refused:
            kuberay.create(RAYSERVICES, bad)
        assert refused.value.status == 422
        assert "workerGroupSpecs[0].replicas" in str(refused.value.body)

        job = build_rayjob(plan(name="tune"), "python -m tuning.job")
        job["spec"]["managedBy"] = "someone-else"  # a CEL rule of the released RayJob CRD
        with pytest.raises(ApiException) as cel:
            kuberay.create(RAYJOBS, job)
        assert cel.value.status == 422
        assert "managedBy field value must be either" in str(cel.value.body)

        typo = build_rayservice(plan(name="typo"), SERVE)
        typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2
        stored = kuberay.create(RAYSERVICES, typo)
        worker = stored["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        assert "replica" not in worker  # pruned, as a real server does
        assert worker["numOfHosts"] == 1  # the CRD's default
        assert schema_errors(typo) != []  # which is why the fake's own check is stricter


def test_schema_facts_name_the_release_and_keep_no_prose() -> None:
    facts = load_schema()
    assert facts["kuberay"] == "v1.7.0"
    assert set(facts["schemas"]) == {"RayService", "RayJob", "RayCluster"}
    text = json.dumps(facts["schemas"])
    assert '"description"' not in text
    assert "x-kubernetes-validations" in text


def test_cel_transition_rules_compare_with_the_version_before(env: Env) -> None:
    job = build_rayjob(plan(name="tune"), "python -m tuning.job")
    job["spec"]["managedBy"] = "ray.io/kuberay-operator"
    env.fake.set_job_outcome("tune", "RUNNING")
    env.kuberay.create(RAYJOBS, job)
    wait_for(lambda: job_progress(env, "tune").started, what="the job picked up")
    env.kuberay.patch(RAYJOBS, NS, "tune", {"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}})
    wait_for(
        lambda: "the managedBy field is immutable" in " ".join(map(str, env.fake.violations)),
        what="the transition rule",
    )
