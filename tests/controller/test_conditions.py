"""Status from observations: honest conditions, stable transition times, Kaito's states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.conditions import (
    Observation,
    Problem,
    condition_reason,
    transitions,
    workspace_status,
)
from controller.nodes.base import NodeReport
from kuberay.status import JobProgress, ServiceHealth, rayjob_progress, rayservice_health

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
NODES_READY = NodeReport(True, "Ready", "1 nodes Ready", ["gpu-0"], 1)
NODES_WAITING = NodeReport(False, "NodesNotReady", "0 of 2 nodes are Ready", [], 2)


def rayservice(
    apps: dict[str, dict[str, Any]], ready: bool = True, reason: str = "RayServiceReady"
) -> ServiceHealth:
    return rayservice_health(
        {
            "metadata": {"generation": 1},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": reason,
                        "message": "" if ready else "RayService is initializing",
                    }
                ],
                "activeServiceStatus": {"rayClusterName": "ws-abcde", "applicationStatuses": apps},
            },
        }
    )


SERVING = rayservice({"ws": {"status": "RUNNING"}})


def by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_only_when_kuberay_is_ready_and_every_app_runs() -> None:
    status = workspace_status("inference", Observation(3, nodes=NODES_READY, service=SERVING), None, T0)
    found = by_type(status)
    assert [c["type"] for c in status["conditions"]] == [
        "ResourceReady",
        "InferenceReady",
        "WorkspaceSucceeded",
        "WorkspaceReady",
    ]
    assert all(c["status"] == "True" and c["observedGeneration"] == 3 for c in found.values())
    assert status["state"] == "Ready"
    assert status["workerNodes"] == ["gpu-0"] and status["targetNodeCount"] == 1

    deploying = rayservice({"ws": {"status": "DEPLOYING"}})
    status = workspace_status("inference", Observation(3, nodes=NODES_READY, service=deploying), None, T0)
    assert by_type(status)["InferenceReady"]["status"] == "False"
    assert by_type(status)["InferenceReady"]["reason"] == "Deploying"
    initializing = rayservice({"ws": {"status": "RUNNING"}}, ready=False, reason="Initializing")
    status = workspace_status("inference", Observation(3, nodes=NODES_READY, service=initializing), None, T0)
    assert by_type(status)["WorkspaceSucceeded"]["status"] == "False"
    assert status["state"] == "Pending"


def test_deploy_failure_carries_kuberay_message_and_fails_the_workspace() -> None:
    failed = rayservice({"ws": {"status": "DEPLOY_FAILED", "message": "CUDA out of memory"}}, ready=False)
    status = workspace_status("inference", Observation(1, nodes=NODES_READY, service=failed), None, T0)
    inference = by_type(status)["InferenceReady"]
    assert (inference["status"], inference["reason"]) == ("False", "DeployFailed")
    assert "CUDA out of memory" in inference["message"]
    assert by_type(status)["WorkspaceSucceeded"]["reason"] == "DeployFailed"
    assert by_type(status)["WorkspaceReady"] == {
        **by_type(status)["WorkspaceSucceeded"],
        "type": "WorkspaceReady",
    }
    assert status["state"] == "Failed"


def test_unhealthy_after_serving_is_not_ready() -> None:
    ready = workspace_status("inference", Observation(1, nodes=NODES_READY, service=SERVING), None, T0)
    sick = rayservice({"ws": {"status": "UNHEALTHY", "message": "replica died"}}, ready=False)
    status = workspace_status("inference", Observation(1, nodes=NODES_READY, service=sick), ready, T1)
    assert status["state"] == "NotReady"
    assert by_type(status)["InferenceReady"]["reason"] == "Unhealthy"


def test_transition_time_moves_only_when_the_status_does() -> None:
    waiting = workspace_status("inference", Observation(1, nodes=NODES_WAITING), None, T0)
    assert by_type(waiting)["ResourceReady"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert by_type(waiting)["InferenceReady"]["reason"] == "ResourceNotReady"
    assert waiting["state"] == "Pending" and waiting["targetNodeCount"] == 2

    # Same status, new reason and generation: the time stays.
    mismatch = NodeReport(False, "NodeMismatch", "gpu-0: 1 GPUs, needs 2", [], 2)
    later = workspace_status("inference", Observation(2, nodes=mismatch), waiting, T1)
    resource = by_type(later)["ResourceReady"]
    assert (resource["reason"], resource["observedGeneration"]) == ("NodeMismatch", 2)
    assert resource["lastTransitionTime"] == "2026-01-01T00:00:00Z"

    ready = workspace_status("inference", Observation(2, nodes=NODES_READY, service=SERVING), later, T1)
    assert by_type(ready)["ResourceReady"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert [c.type for c in transitions(later, ready)] == [
        "ResourceReady",
        "InferenceReady",
        "WorkspaceSucceeded",
    ]
    assert transitions(ready, ready) == []


def test_invalid_workspace_fails_every_condition_with_the_reason() -> None:
    problem = Problem("InvalidPreset", "inference.preset.name: unknown preset 'gpt-17'")
    status = workspace_status("inference", Observation(1, invalid=problem), None, T0)
    assert {(c["status"], c["reason"]) for c in status["conditions"]} == {("False", "InvalidPreset")}
    assert status["state"] == "Failed"
    assert "targetNodeCount" not in status and status["workerNodes"] == []


def test_configmap_problems() -> None:
    missing = Problem("ConfigMapNotFound", "inference.config: ConfigMap x not found", final=False)
    status = workspace_status("inference", Observation(1, nodes=NODES_READY, config=missing), None, T0)
    assert by_type(status)["InferenceReady"]["reason"] == "ConfigMapNotFound"
    assert by_type(status)["ResourceReady"]["status"] == "True"
    assert status["state"] == "Pending"
    broken = Problem("InvalidConfigMap", "inference.config: invalid YAML")
    assert (
        workspace_status("inference", Observation(1, nodes=NODES_READY, config=broken), None, T0)["state"]
        == "Failed"
    )


def job(deployment: str, job_status: str = "", reason: str = "", message: str = "") -> JobProgress:
    status = {
        "jobDeploymentStatus": deployment,
        "jobStatus": job_status,
        "reason": reason,
        "message": message,
    }
    return rayjob_progress({"status": {k: v for k, v in status.items() if v}})


def test_tuning_states_follow_the_rayjob() -> None:
    def status_for(progress: JobProgress | None, old: dict[str, Any] | None = None) -> dict[str, Any]:
        return workspace_status("tuning", Observation(1, nodes=NODES_READY, job=progress), old, T0)

    created = status_for(None)
    assert by_type(created)["JobStarted"]["status"] == "False" and created["state"] == "Pending"
    assert "InferenceReady" not in by_type(created)

    initializing = status_for(job("Initializing"))
    assert by_type(initializing)["JobStarted"]["status"] == "True"
    assert initializing["state"] == "Pending"

    running = status_for(job("Running", "RUNNING"))
    assert running["state"] == "Running"
    assert by_type(running)["WorkspaceSucceeded"]["status"] == "False"

    succeeded = status_for(job("Complete", "SUCCEEDED"))
    assert succeeded["state"] == "Succeeded"
    assert by_type(succeeded)["WorkspaceSucceeded"]["status"] == "True"
    assert by_type(succeeded)["WorkspaceReady"]["status"] == "True"

    failed = status_for(job("Failed", "FAILED", "AppFailed", "exit code 2: dataset has no text column"))
    assert failed["state"] == "Failed"
    assert by_type(failed)["WorkspaceSucceeded"]["reason"] == "AppFailed"
    assert "dataset has no text column" in by_type(failed)["WorkspaceSucceeded"]["message"]


def test_a_started_job_outranks_a_later_configmap_problem() -> None:
    missing = Problem("ConfigMapNotFound", "tuning.config: ConfigMap x not found", final=False)
    status = workspace_status(
        "tuning", Observation(1, nodes=NODES_READY, config=missing, job=job("Running", "RUNNING")), None, T0
    )
    assert status["state"] == "Running"
    assert by_type(status)["JobStarted"]["status"] == "True"


def test_reasons_fit_the_crd_pattern() -> None:
    assert condition_reason("DeployFailed") == "DeployFailed"
    assert condition_reason("Quota exceeded (cores)") == "Quotaexceededcores"
    assert condition_reason("42-bad") == "bad"
    assert condition_reason("!!!") == "Unknown"
