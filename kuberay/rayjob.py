"""Build a KubeRay `RayJob` (ray.io/v1) from a `RayClusterPlan` and an entrypoint."""

from __future__ import annotations

from typing import Any, Literal

from kuberay.cluster import API_VERSION, RayClusterPlan, build_cluster_spec, canonical_yaml, object_metadata

SubmissionMode = Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
SUBMISSION_MODES: tuple[SubmissionMode, ...] = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")


def build_rayjob(
    plan: RayClusterPlan,
    entrypoint: str,
    *,
    runtime_env: dict[str, Any] | None = None,
    shutdown_after_finishes: bool = True,
    ttl_seconds: int = 60,
    active_deadline_seconds: int | None = None,
    submission_mode: SubmissionMode = "K8sJobMode",
) -> dict[str, Any]:
    """A RayJob manifest that creates its own cluster from `plan` and runs `entrypoint` on it.

    With `shutdown_after_finishes` KubeRay deletes the cluster `ttl_seconds` after the job ends (the
    RayJob and its status stay); KubeRay only honours the TTL together with shutdown, so it is left out
    otherwise. `active_deadline_seconds` makes KubeRay fail the job (reason DeadlineExceeded) when it runs
    longer than that.
    """
    if not entrypoint.strip():
        raise ValueError("entrypoint must not be empty")
    if submission_mode not in SUBMISSION_MODES:
        raise ValueError(f"submission_mode must be one of {SUBMISSION_MODES}, got {submission_mode!r}")
    if ttl_seconds < 0:
        raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
    if active_deadline_seconds is not None and active_deadline_seconds <= 0:
        raise ValueError(f"active_deadline_seconds must be positive, got {active_deadline_seconds}")
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": submission_mode,
        "shutdownAfterJobFinishes": shutdown_after_finishes,
    }
    if shutdown_after_finishes:
        spec["ttlSecondsAfterFinished"] = ttl_seconds
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    if runtime_env:
        spec["runtimeEnvYAML"] = canonical_yaml(runtime_env)
    spec["rayClusterSpec"] = build_cluster_spec(plan)
    return {"apiVersion": API_VERSION, "kind": "RayJob", "metadata": object_metadata(plan), "spec": spec}
