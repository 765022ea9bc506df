from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from kuberay import build_rayjob
from tests.kuberay.conftest import gpu_plan

SchemaErrors = Callable[[dict[str, Any]], list[str]]

ENTRYPOINT = "python -m tuning.train --config /etc/kairay/tuning.yaml"


def test_rayjob_is_schema_valid_with_kuberay_defaults_spelled_out(schema_errors: SchemaErrors) -> None:
    job = build_rayjob(gpu_plan(name="tune-phi-3"), ENTRYPOINT)
    assert schema_errors(job) == []
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"] == "tune-phi-3"
    spec = job["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 60
    assert "activeDeadlineSeconds" not in spec
    assert "runtimeEnvYAML" not in spec


def test_rayjob_cluster_matches_the_rayservice_cluster_builder() -> None:
    job = build_rayjob(gpu_plan(gpus_per_worker=2), ENTRYPOINT)
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"}
    worker = cluster["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    assert worker["template"]["spec"]["nodeSelector"] == {"apps": "phi-3"}


def test_runtime_env_is_a_yaml_string(schema_errors: SchemaErrors) -> None:
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1"}, "working_dir": "/app"}
    job = build_rayjob(gpu_plan(), ENTRYPOINT, runtime_env=runtime_env)
    assert schema_errors(job) == []
    assert isinstance(job["spec"]["runtimeEnvYAML"], str)
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == runtime_env


def test_deadline_ttl_and_keeping_the_cluster(schema_errors: SchemaErrors) -> None:
    job = build_rayjob(gpu_plan(), ENTRYPOINT, ttl_seconds=0, active_deadline_seconds=3600)
    assert schema_errors(job) == []
    assert job["spec"]["ttlSecondsAfterFinished"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    kept = build_rayjob(gpu_plan(), ENTRYPOINT, shutdown_after_finishes=False)
    assert schema_errors(kept) == []
    assert kept["spec"]["shutdownAfterJobFinishes"] is False
    # KubeRay only honours the TTL together with shutdown.
    assert "ttlSecondsAfterFinished" not in kept["spec"]


@pytest.mark.parametrize("mode", ["K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"])
def test_submission_modes(schema_errors: SchemaErrors, mode: Any) -> None:
    job = build_rayjob(gpu_plan(), ENTRYPOINT, submission_mode=mode)
    assert job["spec"]["submissionMode"] == mode
    assert schema_errors(job) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entrypoint": "  "}, "entrypoint"),
        ({"submission_mode": "JobMode"}, "submission_mode"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"active_deadline_seconds": 0}, "active_deadline_seconds"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"entrypoint": ENTRYPOINT} | kwargs
    with pytest.raises(ValueError, match=message):
        build_rayjob(gpu_plan(), **arguments)


def test_deterministic() -> None:
    runtime_env = {"env_vars": {"B": "2", "A": "1"}}
    first = build_rayjob(gpu_plan(), ENTRYPOINT, runtime_env=runtime_env)
    second = build_rayjob(gpu_plan(), ENTRYPOINT, runtime_env=dict(reversed(runtime_env.items())))
    assert first == second


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j["spec"].update(submissionMode="K8sMode"),
        lambda j: j["spec"].update(runtimeEnv={"pip": []}),  # the field is runtimeEnvYAML
        lambda j: j["spec"].update(runtimeEnvYAML={"pip": []}),
        lambda j: j["spec"].update(ttlSecondsAfterFinished=-5),
        lambda j: j["spec"].update(activeDeadlineSeconds=0),
        lambda j: j["spec"].update(shutdownAfterJobFinish=True),  # typo
        lambda j: j["spec"].pop("rayClusterSpec"),  # neither a cluster spec nor a selector
        lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"].update(rayStartParam={}),
    ],
)
def test_schema_catches_mistakes(
    schema_errors: SchemaErrors, mutate: Callable[[dict[str, Any]], None]
) -> None:
    job = build_rayjob(gpu_plan(), ENTRYPOINT)
    mutate(job)
    assert schema_errors(job) != []
