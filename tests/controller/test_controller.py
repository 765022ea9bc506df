"""The real controller (a `kairay controller` subprocess) against the fake API server and fake KubeRay.

Most tests share one cluster and one controller, each in a namespace (and on GPU nodes) of its own;
the restart test has a cluster of its own because it kills the controller. The sample tests need no
controller: they check what the API server itself refuses.
"""

from __future__ import annotations

import copy
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.finalizer import FINALIZER
from controller.workloads.tuning import PUSH_SECRET_DIR, rayjob_name
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay
from kairay.api.crds import load_crd
from kairay.api.crds.schema import NOT_DECLARED
from kairay.api.workspace import parse_workspace
from kuberay.client import SPEC_HASH_ANNOTATION
from tests.controller.cluster import (
    A100,
    RUNTIME_IMAGE,
    Cluster,
    Controller,
    condition_is,
    conditions,
    install_crds,
    printer_columns,
    service_account_kubeconfig,
    state,
    tuning_workspace,
)
from tests.controller.samples import Sample, load_samples

SECRET_VALUE = "s3cr3t-registry-password-do-not-leak"
# Fake KubeRay's watches end this often; stopping it waits for them.
WATCH_SECONDS = 1
# What the API server and controllers write into an object; a user's manifest has the rest.
SERVER_WRITTEN = {"uid", "resourceVersion", "generation", "creationTimestamp", "finalizers"}
ALL_TRUE = ("ResourceReady", "InferenceReady", "WorkspaceSucceeded", "WorkspaceReady")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("controller")
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        with FakeKubeRay(api, job_run_seconds=0.3, watch_timeout_seconds=WATCH_SECONDS) as kuberay:
            cluster = Cluster(server, api, kuberay)
            liveness = f"http://127.0.0.1:{free_port()}/healthz"
            controller = cluster.controller = Controller(
                service_account_kubeconfig(server, root / "kubeconfig"),
                root / "controller.log",
                "--liveness",
                liveness,
            ).start()
            cluster.liveness = liveness
            try:
                yield cluster
            finally:
                code = controller.stop()
            assert code == 0, controller.output()[-4000:]
            assert kuberay.violations == []
            assert cluster.denied() == []
            assert kuberay.errors == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inference_workspace(namespace: str, name: str, pool: str, **inference: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": A100, "labelSelector": {"matchLabels": {"pool": pool}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}, **inference},
    }


def adapter(name: str) -> dict[str, Any]:
    return {"source": {"name": name, "image": f"registry.test/adapters/{name}:1"}, "strength": "0.5"}


def ready(obj: dict[str, Any]) -> bool:
    generation = obj["metadata"]["generation"]
    return state(obj) == "Ready" and all(
        c.get("observedGeneration") == generation for c in conditions(obj).values()
    )


def serving(cluster: Cluster, namespace: str, **inference: Any) -> dict[str, Any]:
    """A Ready inference Workspace `ws` in a new `namespace`, on a GPU node of its own."""
    cluster.namespace(namespace)
    cluster.gpu_node(f"{namespace}-gpu-0", {"pool": namespace})
    cluster.create_workspace(inference_workspace(namespace, "ws", namespace, **inference))
    return cluster.wait_status(namespace, "ws", ready, "the Workspace to be Ready")


def event_reasons(cluster: Cluster, namespace: str, name: str) -> set[str]:
    return {e["reason"] for e in cluster.events(namespace, name)}


def own_services(cluster: Cluster, namespace: str) -> list[str]:
    """Service names in `namespace` apart from the ones KubeRay makes (`<rayservice>-head-svc`, ...)."""
    return [
        s["metadata"]["name"]
        for s in cluster.server.list("services", namespace)
        if not s["metadata"]["name"].endswith("-svc")
    ]


def test_apply_creates_rayservice_and_service_and_reports_ready(cluster: Cluster) -> None:
    ws = serving(cluster, "apply", adapters=[adapter("sql")])

    rayservice, service = cluster.expected_objects("apply", "ws")
    stored = cluster.rayservice("apply", "ws")
    assert stored is not None
    assert stored["spec"] == rayservice["spec"]
    assert stored["spec"]["serveConfigV2"] == rayservice["spec"]["serveConfigV2"]
    owner = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "name": "ws",
        "uid": ws["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert stored["metadata"]["ownerReferences"] == [owner]
    head = stored["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == RUNTIME_IMAGE

    svc = cluster.server.get("services", "apply", "ws")
    assert svc is not None
    assert svc["metadata"]["ownerReferences"] == [owner]
    assert svc["spec"]["selector"] == service["spec"]["selector"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, 8000)]

    found = conditions(ws)
    assert all(found[kind]["status"] == "True" for kind in ALL_TRUE), found
    assert "JobStarted" not in found
    assert ws["status"]["workerNodes"] == ["apply-gpu-0"]
    assert ws["status"]["targetNodeCount"] == 1
    assert printer_columns(ws) == {
        "Instance": A100,
        "ResourceReady": "True",
        "InferenceReady": "True",
        "JobStarted": None,
        "WorkspaceSucceeded": "True",
        "State": "Ready",
        "Age": ws["metadata"]["creationTimestamp"],
    }
    with urllib.request.urlopen(cluster.liveness, timeout=5) as answer:
        assert answer.status == 200
    cluster.wait(
        "an Event for each step",
        lambda: {"RayServiceCreated", "ServiceCreated", "Ready"} <= event_reasons(cluster, "apply", "ws"),
        timeout=5,
    )


def test_rayservice_failure_reports_kuberay_message(cluster: Cluster) -> None:
    message = "ValueError: vLLM could not allocate the KV cache"
    cluster.kuberay.fail_rayservice("ws", "DEPLOY_FAILED", message, namespace="failing")
    cluster.namespace("failing")
    cluster.gpu_node("failing-gpu-0", {"pool": "failing"})
    cluster.create_workspace(inference_workspace("failing", "ws", "failing"))

    ws = cluster.wait_status(
        "failing",
        "ws",
        lambda o: condition_is(o, "InferenceReady", "False", "DeployFailed"),
        "InferenceReady False with DeployFailed",
    )
    assert message in conditions(ws)["InferenceReady"]["message"]
    assert condition_is(ws, "ResourceReady", "True")
    assert condition_is(ws, "WorkspaceSucceeded", "False", "DeployFailed")
    assert state(ws) == "Failed"
    cluster.wait(
        "a Warning event with KubeRay's message",
        lambda: any(
            e["type"] == "Warning" and message in e["message"] for e in cluster.events("failing", "ws")
        ),
        timeout=5,
    )


def test_adapter_edit_changes_only_serve_config(cluster: Cluster) -> None:
    serving(cluster, "edit", adapters=[adapter("sql")])
    before = cluster.rayservice("edit", "ws")
    assert before is not None
    assert len(cluster.kuberay.clusters_created("ws", "edit")) == 1

    cluster.patch_workspace("edit", "ws", {"inference": {"adapters": [adapter("sql"), adapter("chat")]}})
    cluster.wait_status(
        "edit", "ws", lambda o: o["metadata"]["generation"] == 2 and ready(o), "Ready at generation 2"
    )

    after = cluster.rayservice("edit", "ws")
    assert after is not None
    assert set(after["spec"]) == set(before["spec"])
    assert {key for key in before["spec"] if before["spec"][key] != after["spec"][key]} == {"serveConfigV2"}
    assert after["spec"] == cluster.expected_objects("edit", "ws")[0]["spec"]
    hashes = [o["metadata"]["annotations"][SPEC_HASH_ANNOTATION] for o in (before, after)]
    assert hashes[0] != hashes[1]
    assert "registry.test/adapters/chat:1" in after["spec"]["serveConfigV2"]
    # KubeRay deployed the new Serve config on the running cluster: still the one Ray cluster.
    assert len(cluster.kuberay.clusters_created("ws", "edit")) == 1
    assert "RayServiceUpdated" in event_reasons(cluster, "edit", "ws")


def test_delete_removes_children_then_the_finalizer(cluster: Cluster) -> None:
    ws = serving(cluster, "delete")
    assert ws["metadata"]["finalizers"] == [FINALIZER]
    assert cluster.server.list("rayclusters", "delete")

    cluster.delete_workspace("delete", "ws")
    cluster.wait("the Workspace to be gone", lambda: cluster.workspace("delete", "ws") is None)
    assert cluster.rayservice("delete", "ws") is None
    assert cluster.server.get("services", "delete", "ws") is None
    cluster.wait(
        "the Ray cluster to be collected", lambda: not cluster.server.list("rayclusters", "delete"), timeout=5
    )


def test_conflicts_are_retried_until_the_objects_converge(cluster: Cluster) -> None:
    cluster.namespace("conflict")
    cluster.gpu_node("conflict-gpu-0", {"pool": "conflict"})
    faults = [
        cluster.server.inject_errors(resource, code=409, count=2, verbs=["create"], namespace="conflict")
        for resource in ("rayservices", "services")
    ]
    cluster.create_workspace(inference_workspace("conflict", "ws", "conflict"))

    cluster.wait_status("conflict", "ws", ready, "Ready despite the conflicts")
    assert [fault.hits for fault in faults] == [2, 2]
    assert [o["metadata"]["name"] for o in cluster.server.list("rayservices", "conflict")] == ["ws"]
    assert own_services(cluster, "conflict") == ["ws"]
    assert len(cluster.kuberay.clusters_created("ws", "conflict")) == 1


def test_catalog_errors_become_conditions_without_children(cluster: Cluster) -> None:
    namespace = cluster.namespace("catalog")
    cluster.gpu_node("catalog-gpu-0", {"pool": "catalog"})
    unknown_preset = inference_workspace(namespace, "unknown-preset", "catalog")
    unknown_preset["inference"]["preset"]["name"] = "gpt-17-mega"
    unknown_sku = inference_workspace(namespace, "unknown-sku", "catalog")
    unknown_sku["resource"]["instanceType"] = "Standard_ND1000_Imaginary"
    # One 16 GB V100 cannot hold falcon-7b, and the transformers runtime cannot spread it over nodes.
    too_small = inference_workspace(namespace, "too-small", "catalog")
    too_small["resource"]["instanceType"] = "Standard_NC6s_v3"
    too_small["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    too_small["inference"]["preset"]["name"] = "falcon-7b-instruct"
    expected = {
        "unknown-preset": ("InvalidPreset", "gpt-17-mega"),
        "unknown-sku": ("InvalidInstanceType", "Standard_ND1000_Imaginary"),
        "too-small": ("InsufficientGPUMemory", "does not fit"),
    }
    for ws in (unknown_preset, unknown_sku, too_small):
        cluster.create_workspace(ws)

    for name, (reason, text) in expected.items():
        found = cluster.wait_status(namespace, name, lambda o: state(o) == "Failed", f"{name} to fail")
        for kind in ("ResourceReady", "InferenceReady", "WorkspaceSucceeded"):
            assert condition_is(found, kind, "False", reason), conditions(found)[kind]
        assert text in conditions(found)["WorkspaceSucceeded"]["message"]
    assert cluster.server.list("rayservices", namespace) == []
    assert own_services(cluster, namespace) == []


def test_missing_configmap_is_a_condition_until_it_appears(cluster: Cluster) -> None:
    namespace = cluster.namespace("config")
    cluster.gpu_node("config-gpu-0", {"pool": "config"})
    cluster.create_workspace(inference_workspace(namespace, "ws", "config", config="engine-args"))

    ws = cluster.wait_status(
        namespace,
        "ws",
        lambda o: condition_is(o, "InferenceReady", "False", "ConfigMapNotFound"),
        "InferenceReady False with ConfigMapNotFound",
    )
    assert "engine-args" in conditions(ws)["InferenceReady"]["message"]
    assert state(ws) == "Pending"
    assert cluster.rayservice(namespace, "ws") is None

    engine = yaml.safe_dump({"vllm": {"max-model-len": 1024, "gpu-memory-utilization": 0.8}})
    cluster.add(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "engine-args", "namespace": namespace},
            "data": {"inference_config.yaml": engine},
        }
    )
    cluster.wait_status(namespace, "ws", ready, "Ready once the ConfigMap exists")
    stored = cluster.rayservice(namespace, "ws")
    assert stored is not None
    engine_args = yaml.safe_load(stored["spec"]["serveConfigV2"])["applications"][0]["args"]["engine_args"]
    assert (engine_args["max_model_len"], engine_args["gpu_memory_utilization"]) == (1024, 0.8)


def test_tuning_workspace_runs_a_rayjob_and_reports_its_outcome(cluster: Cluster) -> None:
    namespace = cluster.namespace("tuning")
    cluster.gpu_node("tuning-gpu-0", {"pool": namespace})
    docker_config = json.dumps({"auths": {"registry.test": {"auth": SECRET_VALUE}}})
    for secret in ("push-creds", "pull-creds"):
        cluster.add(
            {
                "kind": "Secret",
                "metadata": {"name": secret, "namespace": namespace},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": docker_config},
            }
        )
    training = "training_config:\n  TrainingArguments:\n    num_train_epochs: 1\n"
    cluster.add(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "training", "namespace": namespace},
            "data": {"training_config.yaml": training},
        }
    )
    created = cluster.create_workspace(tuning_workspace(namespace, "registry.test/out:1"))
    first = rayjob_name(parse_workspace(created))
    cluster.kuberay.set_job_outcome(first, "RUNNING", namespace=namespace)

    ws = cluster.wait_status(namespace, "tune", lambda o: state(o) == "Running", "the job to run")
    assert condition_is(ws, "JobStarted", "True")
    assert condition_is(ws, "WorkspaceSucceeded", "False")
    assert "InferenceReady" not in conditions(ws)
    assert printer_columns(ws)["JobStarted"] == "True"

    job = cluster.server.get("rayjobs", namespace, first)
    assert job is not None
    assert SECRET_VALUE not in json.dumps(job)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes["push-secret"]["secret"]["secretName"] == "push-creds"
    assert volumes["pull-secret-0"]["secret"]["secretName"] == "pull-creds"
    assert volumes["tuning-config"]["configMap"]["name"] == "training"
    assert job["spec"]["entrypoint"].startswith("python -m tuning.job ")
    assert f"--push-secret {PUSH_SECRET_DIR}" in job["spec"]["entrypoint"]

    cluster.kuberay.set_job_outcome(first, "SUCCEEDED", namespace=namespace)
    ws = cluster.wait_status(namespace, "tune", lambda o: state(o) == "Succeeded", "the job to succeed")
    assert condition_is(ws, "WorkspaceSucceeded", "True", "Succeeded")
    assert condition_is(ws, "WorkspaceReady", "True")

    # A new output is a new job: a new RayJob, and the old one goes.
    edited = copy.deepcopy(created)
    edited["tuning"]["output"]["image"] = "registry.test/out:2"
    second = rayjob_name(parse_workspace(edited))
    assert second != first
    cluster.kuberay.set_job_outcome(second, "FAILED", "dataset has no 'messages' column", namespace=namespace)
    cluster.patch_workspace(namespace, "tune", {"tuning": {"output": {"image": "registry.test/out:2"}}})
    ws = cluster.wait_status(
        namespace,
        "tune",
        lambda o: o["metadata"]["generation"] == 2 and state(o) == "Failed",
        "the second job to fail",
    )
    assert condition_is(ws, "WorkspaceSucceeded", "False", "AppFailed")
    assert "no 'messages' column" in conditions(ws)["WorkspaceSucceeded"]["message"]
    assert [j["metadata"]["name"] for j in cluster.server.list("rayjobs", namespace)] == [second]
    assert {"RayJobCreated", "RayJobReplaced"} <= event_reasons(cluster, namespace, "tune")
    assert SECRET_VALUE not in json.dumps([ws, cluster.events(namespace, "tune")])
    assert cluster.controller is not None and SECRET_VALUE not in cluster.controller.output()


def apply_sample(api: client.ApiClient, namespace: str, sample: Sample) -> dict[str, Any]:
    """`kubectl apply` of a sample in a namespace of its own: create it, or create the old object and
    replace it with the new one; with strict field validation, kubectl's default."""
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    custom = client.CustomObjectsApi(api)
    group, version = str(sample.obj["apiVersion"]).split("/")
    where = (group, version, namespace, "workspaces")

    def placed(obj: dict[str, Any]) -> dict[str, Any]:
        metadata = {k: v for k, v in obj["metadata"].items() if k not in SERVER_WRITTEN}
        return {**copy.deepcopy(obj), "metadata": {**metadata, "namespace": namespace}}

    if sample.old is None:
        created = custom.create_namespaced_custom_object(
            *where, placed(sample.obj), field_validation="Strict"
        )
        return cast(dict[str, Any], created)
    stored = custom.create_namespaced_custom_object(*where, placed(sample.old), field_validation="Strict")
    new = placed(sample.obj)
    new["metadata"]["resourceVersion"] = cast(dict[str, Any], stored)["metadata"]["resourceVersion"]
    replaced = custom.replace_namespaced_custom_object(
        *where, new["metadata"]["name"], new, field_validation="Strict"
    )
    return cast(dict[str, Any], replaced)


def test_invalid_samples_are_rejected_by_the_api_server(
    k8s_api_client: client.ApiClient, fake_apiserver: FakeApiServer
) -> None:
    fake_apiserver.register_crd(load_crd())
    for index, sample in enumerate(load_samples("invalid")):
        with pytest.raises(ApiException) as caught:
            apply_sample(k8s_api_client, f"invalid-{index}", sample)
        status = json.loads(caught.value.body or "{}")
        undeclared = {e.removesuffix(f": {NOT_DECLARED}") for e in sample.expect if e.endswith(NOT_DECLARED)}
        if undeclared:
            # Not a 422: the API server prunes an undeclared field, or under kubectl's
            # fieldValidation=Strict refuses the request as undecodable.
            assert caught.value.status == 400, sample.name
            assert all(f'unknown field "{field}"' in status["message"] for field in undeclared), sample.name
            continue
        assert caught.value.status == 422, sample.name
        causes = {
            f"{c['field']}: {c['message']}" if c.get("field") else c["message"]
            for c in status["details"]["causes"]
        }
        assert causes == sample.expect, sample.name
        assert all(text in status["message"] for text in sample.expect), sample.name


def test_valid_samples_are_accepted_by_the_api_server(
    k8s_api_client: client.ApiClient, fake_apiserver: FakeApiServer
) -> None:
    fake_apiserver.register_crd(load_crd())
    for index, sample in enumerate(load_samples("valid")):
        stored = apply_sample(k8s_api_client, f"valid-{index}", sample)
        assert stored["metadata"]["uid"], sample.name


@pytest.mark.slow
def test_killed_mid_reconcile_the_restarted_controller_converges(tmp_path: Path) -> None:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        kuberay = FakeKubeRay(api, watch_timeout_seconds=WATCH_SECONDS).start()
        cluster = Cluster(server, api, kuberay)
        cluster.namespace("restart")
        cluster.gpu_node("restart-gpu-0", {"pool": "restart"})
        # Every Service creation fails: the controller creates the RayService and then is stuck right
        # before the Service, which is where it is killed.
        blocked = server.inject_errors(
            "services", code=503, count=10_000, verbs=["create"], namespace="restart"
        )
        controller = cluster.controller = Controller(
            service_account_kubeconfig(server, tmp_path / "kubeconfig"), tmp_path / "controller.log"
        ).start()
        try:
            cluster.create_workspace(inference_workspace("restart", "ws", "restart"))
            cluster.wait(
                "the RayService, then a failed Service creation",
                lambda: cluster.rayservice("restart", "ws") is not None and blocked.hits > 0,
            )
            controller.kill()
            assert "status" not in (cluster.workspace("restart", "ws") or {})
            server.clear_errors()
            controller.start()
            ws = cluster.wait_status("restart", "ws", ready, "Ready after the restart")
        finally:
            controller.stop()
            kuberay.stop()

        assert ws["metadata"]["finalizers"] == [FINALIZER]
        assert [o["metadata"]["name"] for o in server.list("rayservices", "restart")] == ["ws"]
        assert own_services(cluster, "restart") == ["ws"]
        assert len(kuberay.clusters_created("ws", "restart")) == 1
        assert len(server.list("rayclusters", "restart")) == 1
        assert kuberay.violations == []
        assert cluster.denied() == []


def test_a_rule_missing_from_the_cluster_role_is_a_403_the_controller_tests_catch(tmp_path: Path) -> None:
    """The controller runs as the ServiceAccount of `kairay manifests` in every controller test,
    and each cluster fixture asserts `denied() == []`: here the proof that a missing rule shows."""
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(server)
        cluster = Cluster(server, api, FakeKubeRay(api))
        kubeconfig = service_account_kubeconfig(server, tmp_path / "kubeconfig")
        role = server.get("clusterroles", None, "kairay-controller")
        assert role is not None
        rules = [r for r in role["rules"] if r["resources"] != ["services"]]
        server.patch("clusterroles", None, "kairay-controller", {"rules": rules})
        controller = cluster.controller = Controller(kubeconfig, tmp_path / "controller.log").start()
        try:
            cluster.wait("the controller's Service watch to be refused", lambda: bool(cluster.denied()))
        finally:
            controller.stop()
        assert "list services (group '') as system:serviceaccount:kairay-system:kairay-controller" in (
            cluster.denied()
        )


def test_controller_refuses_aks_without_a_cluster(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kairay.cli import main

    for variable in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_CLUSTER_NAME"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["controller", "--node-provisioner", "aks", "--kubeconfig", "/nonexistent"]) == 1
    assert "--subscription-id" in capsys.readouterr().err
