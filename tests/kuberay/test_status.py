"""Status readers on status blocks shaped like KubeRay 1.3+ (and 1.1 for the legacy fields) writes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kuberay import rayjob_progress, rayservice_health

SchemaErrors = Callable[[dict[str, Any]], list[str]]

T0 = "2025-06-01T10:00:00Z"
T1 = "2025-06-01T10:04:12Z"


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": T0,
        "observedGeneration": 1,
    }


def _app(status: str, message: str = "", **deployments: str) -> dict[str, Any]:
    app: dict[str, Any] = {"status": status}
    if message:
        app["message"] = message
    if deployments:
        app["serveDeploymentStatuses"] = {name: {"status": state} for name, state in deployments.items()}
    return app


def _service(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ws", "namespace": "default", "generation": generation},
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {
                    "template": {"spec": {"containers": [{"name": "ray-head", "image": "img:1"}]}}
                }
            }
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


INITIALIZING = {
    "conditions": [
        _condition("Ready", "False", "Initializing", "RayService is initializing"),
        _condition("UpgradeInProgress", "False", "Initializing", "RayService is initializing"),
    ],
    "pendingServiceStatus": {"rayClusterName": "ws-x7k2p"},
    "observedGeneration": 1,
    "lastUpdateTime": T0,
}

RUNNING = {
    "conditions": [
        _condition("Ready", "True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0"),
        _condition(
            "UpgradeInProgress",
            "False",
            "NoPendingCluster",
            "Active Ray cluster exists and no pending Ray cluster",
        ),
    ],
    "activeServiceStatus": {
        "rayClusterName": "ws-x7k2p",
        "applicationStatuses": {"llm": _app("RUNNING", LLMDeployment="HEALTHY", OpenAiIngress="HEALTHY")},
    },
    "serviceStatus": "Running",
    "numServeEndpoints": 3,
    "observedGeneration": 1,
    "lastUpdateTime": T1,
}

TRACEBACK = (
    "Deploying app 'llm' failed with exception:\nTraceback (most recent call last):\n"
    '  File "serve_apps/app.py", line 40, in build_app\nValueError: adapter "a" not found'
)


def test_service_statuses_used_here_are_schema_valid(schema_errors: SchemaErrors) -> None:
    for status in (INITIALIZING, RUNNING):
        assert schema_errors(_service(status)) == []


def test_no_status_is_pending() -> None:
    for obj in (_service(None), _service({})):
        health = rayservice_health(obj)
        assert (health.ready, health.reason) == (False, "Pending")
        assert not health.failed


def test_initializing() -> None:
    health = rayservice_health(_service(INITIALIZING))
    assert (health.ready, health.reason, health.message) == (
        False,
        "Initializing",
        "RayService is initializing",
    )
    assert health.app_statuses == {}
    assert not health.failed


def test_running_is_ready() -> None:
    health = rayservice_health(_service(RUNNING))
    assert health.ready
    assert health.reason == "Ready"
    assert health.app_statuses == {"llm": "RUNNING"}
    assert health.ray_cluster_name == "ws-x7k2p"
    assert not health.upgrading


def test_initial_deploy_failed_reports_kuberays_message() -> None:
    status = INITIALIZING | {
        "pendingServiceStatus": {
            "rayClusterName": "ws-x7k2p",
            "applicationStatuses": {"llm": _app("DEPLOY_FAILED", TRACEBACK)},
        }
    }
    health = rayservice_health(_service(status))
    assert not health.ready
    assert health.reason == "DeployFailed"
    assert health.failed
    assert 'adapter "a" not found' in health.message
    assert health.message.startswith("llm: ")


def test_deploy_failed_without_app_message_uses_deployment_messages() -> None:
    app = {
        "status": "DEPLOY_FAILED",
        "serveDeploymentStatuses": {
            "LLMDeployment": {
                "status": "UNHEALTHY",
                "message": "Replica failed to start: CUDA out of memory",
            },
            "OpenAiIngress": {"status": "HEALTHY"},
        },
    }
    status = RUNNING | {
        "activeServiceStatus": {"rayClusterName": "ws-x7k2p", "applicationStatuses": {"llm": app}}
    }
    health = rayservice_health(_service(status))
    assert health.reason == "DeployFailed"
    assert "CUDA out of memory" in health.message


def test_unhealthy_application_is_not_ready_even_though_kuberay_says_ready() -> None:
    message = "The deployment 'LLMDeployment' failed health checks 3 times in a row."
    status = RUNNING | {
        "activeServiceStatus": {
            "rayClusterName": "ws-x7k2p",
            "applicationStatuses": {"llm": _app("UNHEALTHY", message, LLMDeployment="UNHEALTHY")},
        }
    }
    health = rayservice_health(_service(status))
    assert (health.ready, health.reason) == (False, "Unhealthy")
    assert message in health.message
    assert not health.failed  # Serve may recover by itself
    assert health.app_statuses == {"llm": "UNHEALTHY"}


def test_in_place_serve_config_update_is_deploying() -> None:
    status = RUNNING | {
        "activeServiceStatus": {
            "rayClusterName": "ws-x7k2p",
            "applicationStatuses": {"llm": _app("DEPLOYING", LLMDeployment="UPDATING")},
        },
        "observedGeneration": 2,
    }
    health = rayservice_health(_service(status, generation=2))
    assert (health.ready, health.reason) == (False, "Deploying")
    assert "llm is DEPLOYING" in health.message


def test_every_application_must_run() -> None:
    apps = {"llm": _app("RUNNING"), "router": _app("NOT_STARTED")}
    status = RUNNING | {"activeServiceStatus": {"rayClusterName": "ws-x7k2p", "applicationStatuses": apps}}
    health = rayservice_health(_service(status))
    assert not health.ready
    assert "router is NOT_STARTED" in health.message


def test_zero_downtime_upgrade_keeps_serving() -> None:
    status = RUNNING | {
        "conditions": [
            _condition(
                "Ready", "True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0"
            ),
            _condition(
                "UpgradeInProgress",
                "True",
                "BothActivePendingClustersExist",
                "Both active and pending Ray clusters exist",
            ),
        ],
        "pendingServiceStatus": {
            "rayClusterName": "ws-9qq4z",
            "applicationStatuses": {"llm": _app("DEPLOYING")},
        },
    }
    health = rayservice_health(_service(status))
    assert health.ready
    assert health.upgrading
    assert health.ray_cluster_name == "ws-x7k2p"


def test_failed_upgrade_is_reported() -> None:
    status = RUNNING | {
        "pendingServiceStatus": {
            "rayClusterName": "ws-9qq4z",
            "applicationStatuses": {"llm": _app("DEPLOY_FAILED", TRACEBACK)},
        }
    }
    health = rayservice_health(_service(status))
    assert (health.ready, health.reason) == (False, "DeployFailed")
    assert health.message.startswith("new cluster: llm: ")
    assert health.upgrading


def test_status_of_an_older_generation_is_pending() -> None:
    health = rayservice_health(_service(RUNNING, generation=2))
    assert (health.ready, health.reason) == (False, "Pending")
    assert "generation 2" in health.message


@pytest.mark.parametrize(
    ("reason", "failed"),
    [("InitializingTimeout", True), ("ValidationFailed", True), ("ZeroServeEndpoints", False)],
)
def test_kuberay_reasons_pass_through(reason: str, failed: bool) -> None:
    status = RUNNING | {"conditions": [_condition("Ready", "False", reason, f"because {reason}")]}
    health = rayservice_health(_service(status))
    assert (health.ready, health.reason, health.message) == (False, reason, f"because {reason}")
    assert health.failed is failed


def test_legacy_service_status_without_conditions() -> None:
    legacy_running = {
        "serviceStatus": "Running",
        "activeServiceStatus": {
            "rayClusterName": "ws-x7k2p",
            "applicationStatuses": {"llm": _app("RUNNING")},
        },
    }
    assert rayservice_health(_service(legacy_running)).ready
    legacy_waiting = legacy_running | {"serviceStatus": "WaitForServeDeploymentReady"}
    health = rayservice_health(_service(legacy_waiting))
    assert (health.ready, health.reason) == (False, "Pending")
    assert "WaitForServeDeploymentReady" in health.message


# --- RayJob ---------------------------------------------------------------------------------------------


def _job(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "tune"}}
    if status is not None:
        obj["status"] = status
    return obj


BASE_JOB = {"jobId": "tune-8fj2k", "rayClusterName": "tune-q2w9e", "startTime": T0}


@pytest.mark.parametrize(
    ("status", "started", "state", "reason"),
    [
        (None, False, "Pending", "Pending"),
        ({}, False, "Pending", "Pending"),
        (BASE_JOB | {"jobDeploymentStatus": "Initializing"}, True, "Pending", "Initializing"),
        (BASE_JOB | {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, True, "Pending", "Pending"),
        (BASE_JOB | {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, True, "Running", "Running"),
        (
            BASE_JOB | {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
            True,
            "Succeeded",
            "Succeeded",
        ),
        (BASE_JOB | {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, True, "Failed", "Stopped"),
        # KubeRay before 1.2 completed failed jobs without a reason.
        (BASE_JOB | {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, True, "Failed", "AppFailed"),
        (
            BASE_JOB | {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"},
            True,
            "Failed",
            "AppFailed",
        ),
        (
            BASE_JOB
            | {"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded"},
            True,
            "Failed",
            "DeadlineExceeded",
        ),
        (
            BASE_JOB | {"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed"},
            True,
            "Failed",
            "SubmissionFailed",
        ),
        (
            {"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed"},
            True,
            "Failed",
            "ValidationFailed",
        ),
        ({"jobDeploymentStatus": "ValidationFailed"}, True, "Failed", "ValidationFailed"),
        # A retry keeps the failed attempt's job status until the new attempt runs.
        (
            BASE_JOB | {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1},
            True,
            "Pending",
            "Retrying",
        ),
        (BASE_JOB | {"jobDeploymentStatus": "Suspended"}, True, "Pending", "Suspended"),
    ],
)
def test_rayjob_progress(status: dict[str, Any] | None, started: bool, state: str, reason: str) -> None:
    progress = rayjob_progress(_job(status))
    assert (progress.started, progress.state, progress.reason) == (started, state, reason)
    assert progress.finished is (state in ("Succeeded", "Failed"))


def test_rayjob_failure_message_is_kuberays() -> None:
    message = (
        "Job entrypoint command failed with exit code 1, last available logs:\nRuntimeError: dataset empty"
    )
    status = BASE_JOB | {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": message,
        "endTime": T1,
    }
    progress = rayjob_progress(_job(status))
    assert progress.message == message
    assert (progress.job_status, progress.deployment_status) == ("FAILED", "Failed")


def test_rayjob_statuses_used_here_are_schema_valid(schema_errors: SchemaErrors) -> None:
    job = _job(BASE_JOB | {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"})
    job["spec"] = {"clusterSelector": {"ray.io/cluster": "c"}}
    assert schema_errors(job) == []
    job["status"]["reason"] = "Crashed"
    assert schema_errors(job) != []
