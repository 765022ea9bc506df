from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from kuberay import RayClusterPlan, build_rayservice, default_gpu_tolerations, serve_config_yaml
from tests.kuberay.conftest import gpu_plan

SchemaErrors = Callable[[dict[str, Any]], list[str]]

SERVE_CONFIG: dict[str, Any] = {
    "applications": [
        {
            "name": "llm",
            "route_prefix": "/",
            "import_path": "serve_apps.app:build_app",
            "args": {
                "model": "microsoft/Phi-3-mini-4k-instruct",
                "adapters": [{"name": "a", "strength": 1.0}],
            },
        }
    ]
}


def _head(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["rayClusterConfig"]["headGroupSpec"])


def _worker(obj: dict[str, Any]) -> dict[str, Any]:
    groups = obj["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(groups) == 1
    return dict(groups[0])


def _container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _diff_paths(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            p for key in sorted(set(a) | set(b)) for p in _diff_paths(a.get(key), b.get(key), f"{path}.{key}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _diff_paths(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path]


def test_gpu_rayservice_is_schema_valid_and_shaped_like_kuberay_expects(schema_errors: SchemaErrors) -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    assert schema_errors(obj) == []
    assert obj["apiVersion"] == "ray.io/v1"
    assert obj["kind"] == "RayService"
    assert obj["metadata"]["name"] == "workspace-phi-3"
    assert obj["metadata"]["namespace"] == "kaito"
    assert obj["metadata"]["labels"] == {"kaito.sh/workspace": "workspace-phi-3"}
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
    assert obj["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert obj["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    # Deprecated and unused since KubeRay 1.1: not written.
    assert "serviceUnhealthySecondThreshold" not in obj["spec"]
    assert "deploymentUnhealthySecondThreshold" not in obj["spec"]


def test_serve_config_is_a_yaml_string_that_round_trips() -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    assert isinstance(obj["spec"]["serveConfigV2"], str)
    assert yaml.safe_load(obj["spec"]["serveConfigV2"]) == SERVE_CONFIG


def test_serve_config_yaml_ignores_key_order_and_never_wraps() -> None:
    reordered = {"applications": [dict(reversed(list(SERVE_CONFIG["applications"][0].items())))]}
    assert serve_config_yaml(reordered) == serve_config_yaml(SERVE_CONFIG)
    sentence = " ".join(["word"] * 400)
    long_value = {"applications": [{"name": "x", "import_path": "a:b", "args": {"p": sentence}}]}
    text = serve_config_yaml(long_value)
    assert yaml.safe_load(text) == long_value
    assert sentence in text  # one line: no folding that would make diffs and hashes noisy


def test_head_runs_no_work_and_exposes_dashboard_client_and_serve_ports() -> None:
    head = _head(build_rayservice(gpu_plan(), SERVE_CONFIG))
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"}
    container = _container(head)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["dashboard"] == 8265
    assert ports["client"] == 10001
    assert ports["serve"] == 8000
    assert ports["gcs-server"] == 6379
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}


def test_workers_request_and_limit_gpus_cpu_and_memory() -> None:
    container = _container(_worker(build_rayservice(gpu_plan(gpus_per_worker=4), SERVE_CONFIG)))
    expected = {"cpu": "20", "memory": "200Gi", "nvidia.com/gpu": "4"}
    assert container["resources"] == {"limits": expected, "requests": expected}


def test_cpu_only_workers_have_no_gpu_resource(schema_errors: SchemaErrors) -> None:
    obj = build_rayservice(gpu_plan(gpus_per_worker=0), SERVE_CONFIG)
    assert schema_errors(obj) == []
    resources = _container(_worker(obj))["resources"]
    assert "nvidia.com/gpu" not in resources["limits"]
    assert "nvidia.com/gpu" not in resources["requests"]


def test_worker_resources_are_omitted_when_not_planned(schema_errors: SchemaErrors) -> None:
    obj = build_rayservice(
        gpu_plan(gpus_per_worker=0, cpu_per_worker=None, memory_per_worker=None), SERVE_CONFIG
    )
    assert schema_errors(obj) == []
    assert _container(_worker(obj))["resources"] == {}


def test_node_selector_goes_to_workers_and_tolerations_to_every_pod() -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    worker_pod = _worker(obj)["template"]["spec"]
    head_pod = _head(obj)["template"]["spec"]
    assert worker_pod["nodeSelector"] == {"apps": "phi-3"}
    assert "nodeSelector" not in head_pod
    assert worker_pod["tolerations"] == default_gpu_tolerations()
    assert head_pod["tolerations"] == default_gpu_tolerations()
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in worker_pod[
        "tolerations"
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker_pod[
        "tolerations"
    ]


def test_head_node_selector_and_custom_tolerations() -> None:
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoExecute"}]
    obj = build_rayservice(
        gpu_plan(head_node_selector={"pool": "system"}, tolerations=tolerations), SERVE_CONFIG
    )
    assert _head(obj)["template"]["spec"]["nodeSelector"] == {"pool": "system"}
    assert _worker(obj)["template"]["spec"]["tolerations"] == tolerations


def test_env_secrets_are_mounted_not_inlined_and_pull_secrets_are_referenced() -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    for group in (_head(obj), _worker(obj)):
        pod = group["template"]["spec"]
        container = _container(group)
        assert pod["imagePullSecrets"] == [{"name": "acr-pull"}]
        assert {"name": "adapter-pull", "secret": {"secretName": "adapter-pull-secret"}} in pod["volumes"]
        assert {"name": "adapter-pull", "mountPath": "/etc/kairay/docker", "readOnly": True} in container[
            "volumeMounts"
        ]
        env = {var["name"]: var for var in container["env"]}
        assert env["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}
        assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    worker = _worker(obj)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in _container(worker)["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in worker["template"]["spec"]["volumes"]


def test_pod_templates_carry_the_plan_labels() -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    for group in (_head(obj), _worker(obj)):
        assert group["template"]["metadata"]["labels"] == {"kaito.sh/workspace": "workspace-phi-3"}


def test_fixed_size_cluster_has_min_and_max_equal_to_replicas() -> None:
    obj = build_rayservice(gpu_plan(replicas=3), SERVE_CONFIG)
    worker = _worker(obj)
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (3, 3, 3)
    assert obj["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in obj["spec"]["rayClusterConfig"]


def test_autoscaling_cluster(schema_errors: SchemaErrors) -> None:
    plan = gpu_plan(
        replicas=1,
        min_replicas=1,
        max_replicas=4,
        enable_autoscaling=True,
        autoscaler_idle_timeout_seconds=300,
    )
    obj = build_rayservice(plan, SERVE_CONFIG)
    assert schema_errors(obj) == []
    cluster = obj["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"] == {"upscalingMode": "Default", "idleTimeoutSeconds": 300}
    worker = _worker(obj)
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (1, 1, 4)


def test_output_is_deterministic_and_does_not_alias_the_plan() -> None:
    plan = gpu_plan()
    first = build_rayservice(plan, SERVE_CONFIG)
    second = build_rayservice(plan, copy.deepcopy(SERVE_CONFIG))
    assert first == second
    assert repr(first) == repr(second)  # same key order too
    _container(_worker(first))["env"].append({"name": "X", "value": "y"})
    first["metadata"]["ownerReferences"][0]["name"] = "changed"
    assert build_rayservice(plan, SERVE_CONFIG) == second


def test_changing_only_the_serve_config_changes_only_serve_config_v2() -> None:
    plan = gpu_plan()
    before = build_rayservice(plan, SERVE_CONFIG)
    with_adapter = copy.deepcopy(SERVE_CONFIG)
    with_adapter["applications"][0]["args"]["adapters"].append({"name": "b", "strength": 0.5})
    after = build_rayservice(plan, with_adapter)
    assert _diff_paths(before, after) == [".spec.serveConfigV2"]


def test_changing_the_cluster_changes_only_the_cluster_config() -> None:
    before = build_rayservice(gpu_plan(), SERVE_CONFIG)
    after = build_rayservice(gpu_plan(image="registry.example/kairay-runtime:0.2.0"), SERVE_CONFIG)
    changed = _diff_paths(before, after)
    assert changed
    assert all(path.startswith(".spec.rayClusterConfig.") for path in changed)


def test_upgrade_strategy() -> None:
    assert build_rayservice(gpu_plan(), SERVE_CONFIG, upgrade_strategy="None")["spec"]["upgradeStrategy"] == {
        "type": "None"
    }
    with pytest.raises(ValueError, match="upgrade_strategy"):
        build_rayservice(gpu_plan(), SERVE_CONFIG, upgrade_strategy="Recreate")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Workspace_1"}, "DNS-1035"),
        ({"name": "1workspace"}, "DNS-1035"),
        ({"name": "w" * 48}, "at most 47"),
        ({"namespace": ""}, "namespace"),
        ({"image": ""}, "image"),
        ({"worker_group_name": "GPU workers"}, "worker_group_name"),
        ({"replicas": 2, "min_replicas": 3, "max_replicas": 4}, "min_replicas <= replicas"),
        ({"replicas": 5, "max_replicas": 4}, "replicas <= max_replicas"),
        ({"replicas": -1}, "0 <= min_replicas"),
        ({"gpus_per_worker": -1}, "gpus_per_worker"),
        ({"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {}}}]}, "exactly one"),
        ({"env": [{"value": "1"}]}, "no name"),
        ({"volume_mounts": [{"name": "missing", "mountPath": "/x"}]}, "no matching volume"),
        ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "reserved"),
    ],
)
def test_plan_rejects_what_kuberay_would_reject(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gpu_plan(**overrides)


def test_plan_is_frozen() -> None:
    plan = gpu_plan()
    with pytest.raises(AttributeError):
        plan.replicas = 3  # type: ignore[misc]


def test_minimal_plan_is_schema_valid(schema_errors: SchemaErrors) -> None:
    obj = build_rayservice(
        RayClusterPlan(name="svc", namespace="default", image="img:1"), {"applications": []}
    )
    assert schema_errors(obj) == []
    assert "labels" not in obj["metadata"]
    assert "ownerReferences" not in obj["metadata"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["spec"].update(serveConfigV2={"applications": []}),  # object instead of YAML string
        lambda o: o["spec"].update(serviceUnhealthySecondThresold=900),  # typo
        lambda o: o["spec"].update(upgradeStrategy={"type": "Recreate"}),
        lambda o: o["spec"]["rayClusterConfig"].update(workerGroupSpec=[]),  # typo
        lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}),
        lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
            {"--num-cpus": "0"}
        ),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replica=2),  # typo
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas=-1),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"].update(
            tolerations=[{"key": "sku", "operator": "Equals", "value": "gpu"}]
        ),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"].update(memory="200 GB"),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
            0
        ].update(envFrom=None, enviroment=[]),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"].update(
            nodeSelecter={}
        ),
        lambda o: o["metadata"].update(name="a" * 48),
        lambda o: o.update(apiVersion="ray.io/v1alpha1"),
    ],
)
def test_schema_catches_mistakes(
    schema_errors: SchemaErrors, mutate: Callable[[dict[str, Any]], None]
) -> None:
    obj = build_rayservice(gpu_plan(), SERVE_CONFIG)
    mutate(obj)
    assert schema_errors(obj) != []
