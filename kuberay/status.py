"""Read KubeRay's status of a RayService / RayJob into a small verdict the controller turns into conditions.

Pure functions over the object dicts as the API server returns them; nothing here talks to Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Serve application statuses (KubeRay copies them from Ray Serve's `ApplicationStatus`).
APP_RUNNING = "RUNNING"
APP_DEPLOY_FAILED = "DEPLOY_FAILED"
APP_UNHEALTHY = "UNHEALTHY"

# `reason` values of a ServiceHealth that mean "this will not get better without a spec change".
TERMINAL_SERVICE_REASONS = frozenset({"DeployFailed", "InitializingTimeout", "ValidationFailed"})

_APP_FAILURE_REASONS = {APP_DEPLOY_FAILED: "DeployFailed", APP_UNHEALTHY: "Unhealthy"}


@dataclass(frozen=True)
class ServiceHealth:
    """Whether a RayService serves its current spec.

    `reason` is one of: `Ready`; `Pending` (no status, or KubeRay has not seen the latest generation);
    `DeployFailed` / `Unhealthy` (a Serve application, `message` is KubeRay's); `Deploying` (the cluster
    serves but an application is not RUNNING yet); or KubeRay's own reason of a false `Ready` condition
    (`Initializing`, `InitializingTimeout`, `ZeroServeEndpoints`, `ValidationFailed`, ...).
    """

    ready: bool
    reason: str
    message: str
    app_statuses: dict[str, str] = field(default_factory=dict)
    upgrading: bool = False
    ray_cluster_name: str = ""

    @property
    def failed(self) -> bool:
        return self.reason in TERMINAL_SERVICE_REASONS


JobState = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobProgress:
    """Where a RayJob is. `started` means KubeRay has picked the job up (it is creating the cluster or
    beyond); `state` is Pending until the Ray job itself runs. `reason` is a CamelCase token: the KubeRay
    deployment status while pending (`Initializing`, `Waiting`, `Retrying`, ...), `Running`, `Succeeded`,
    or KubeRay's failure reason (`AppFailed`, `DeadlineExceeded`, `SubmissionFailed`, `ValidationFailed`,
    `Stopped`, ...)."""

    started: bool
    state: JobState
    reason: str
    message: str
    job_status: str = ""
    deployment_status: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("Succeeded", "Failed")


def rayservice_health(obj: dict[str, Any]) -> ServiceHealth:
    """Ready only when KubeRay says so (the `Ready` condition, or `serviceStatus: Running` on KubeRay
    releases older than 1.3 which have no conditions) AND every Serve application is RUNNING."""
    status = obj.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    active_apps = _app_statuses(active)
    cluster_name = str(active.get("rayClusterName") or "")
    upgrading = _condition_true(status, "UpgradeInProgress") or bool(pending.get("rayClusterName"))

    def verdict(ready: bool, reason: str, message: str) -> ServiceHealth:
        return ServiceHealth(ready, reason, message, active_apps, upgrading, cluster_name)

    if not status:
        return verdict(False, "Pending", "KubeRay has not reported a status yet")
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation and observed and observed < generation:
        text = f"KubeRay has not observed generation {generation} yet (it is at {observed})"
        return verdict(False, "Pending", text)

    # A failing application on the cluster being upgraded to means the desired spec does not deploy, even
    # while the old cluster keeps serving; report it rather than a stale "ready".
    upgrade_prefix = "new cluster: " if cluster_name else ""
    for where, service in (("", active), (upgrade_prefix, pending)):
        failure = _first_failure(service)
        if failure is not None:
            reason, message = failure
            return verdict(False, reason, where + message)

    ready_condition = _find_condition(status, "Ready")
    if ready_condition is not None:
        if ready_condition.get("status") != "True":
            reason = str(ready_condition.get("reason") or "NotReady")
            return verdict(False, reason, str(ready_condition.get("message") or "RayService is not ready"))
    elif status.get("serviceStatus") != "Running":
        return verdict(False, "Pending", f"serviceStatus is {status.get('serviceStatus') or 'empty'!r}")

    not_running = {name: state for name, state in active_apps.items() if state != APP_RUNNING}
    if not_running:
        listed = ", ".join(f"{name} is {state or 'unknown'}" for name, state in sorted(not_running.items()))
        return verdict(False, "Deploying", f"Serve applications not running: {listed}")
    return verdict(True, "Ready", "all Serve applications are RUNNING")


def rayjob_progress(obj: dict[str, Any]) -> JobProgress:
    status = obj.get("status") or {}
    job_status = str(status.get("jobStatus") or "")
    deployment = str(status.get("jobDeploymentStatus") or "")
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")

    def progress(state: JobState, why: str, text: str) -> JobProgress:
        return JobProgress(bool(deployment), state, why, text, job_status, deployment)

    if deployment in ("Failed", "ValidationFailed"):
        why = reason or deployment
        return progress("Failed", why, message or f"RayJob failed ({why})")
    if deployment not in ("Running", "Complete"):
        # New, Initializing, Waiting, Retrying, Suspending, Suspended: no Ray job runs now. While Retrying
        # the job status of the failed attempt is still there, so it must not be read as the outcome.
        if not deployment:
            return progress("Pending", "Pending", "KubeRay has not picked up the job yet")
        return progress("Pending", deployment, message or f"RayJob is {deployment}")
    if job_status == "SUCCEEDED":
        return progress("Succeeded", "Succeeded", message or "Ray job succeeded")
    if job_status == "FAILED":
        why = reason or "AppFailed"
        return progress("Failed", why, message or f"Ray job failed ({why})")
    if job_status == "STOPPED":
        return progress("Failed", "Stopped", message or "Ray job was stopped")
    if deployment == "Complete":
        # KubeRay only completes a RayJob whose Ray job is terminal; anything else is not a success.
        return progress("Failed", "Unknown", f"RayJob is Complete with job status {job_status or 'empty'!r}")
    if job_status == "RUNNING":
        return progress("Running", "Running", message or "Ray job is running")
    return progress("Pending", "Pending", message or "Ray job is submitted and waiting to run")


def _find_condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _condition_true(status: dict[str, Any], kind: str) -> bool:
    condition = _find_condition(status, kind)
    return condition is not None and condition.get("status") == "True"


def _app_statuses(service: dict[str, Any]) -> dict[str, str]:
    apps = service.get("applicationStatuses") or {}
    return {name: str((app or {}).get("status") or "") for name, app in sorted(apps.items())}


def _first_failure(service: dict[str, Any]) -> tuple[str, str] | None:
    apps = service.get("applicationStatuses") or {}
    for name, app in sorted(apps.items()):
        app = app or {}
        reason = _APP_FAILURE_REASONS.get(str(app.get("status") or ""))
        if reason is None:
            continue
        text = str(app.get("message") or "")
        if not text:
            deployments = app.get("serveDeploymentStatuses") or {}
            text = "; ".join(
                f"{deployment}: {info.get('message')}"
                for deployment, info in sorted(deployments.items())
                if (info or {}).get("message")
            )
        return reason, f"{name}: {text or app.get('status')}"
    return None
