"""The status step: what one reconcile found → the Workspace's status (`controller.conditions`, pure),
written with the resourceVersion it was computed from, and Events for the transitions worth reading.

It is also the one place where a user error (a Workspace or ConfigMap kairay cannot act on) becomes a
condition: `observation` turns the errors the steps raised into `Problem`s, by their `reason`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.conditions import Observation, Problem, WorkloadKind, transitions, workspace_status
from controller.events import event
from controller.kube import Kube
from controller.nodes.base import NodeReport
from kairay.api.errors import KairayError
from kairay.api.workspace import CONDITION_RESOURCE_READY, STATE_FAILED, STATE_NOT_READY
from kuberay.client import merge_patch_diff
from kuberay.status import JobProgress, ServiceHealth

# The errors a reconcile reports in the status instead of raising: what a user must fix. Each carries
# its condition `reason` (and `final = False` when it may resolve on its own); one without is a
# Workspace kairay cannot build (a custom pod template, a name KubeRay cannot use).
USER_ERRORS: tuple[type[Exception], ...] = (KairayError,)
REASON_UNSUPPORTED_WORKSPACE = "UnsupportedWorkspace"


def problem(error: Exception) -> Problem:
    return Problem(
        getattr(error, "reason", REASON_UNSUPPORTED_WORKSPACE),
        str(error),
        final=getattr(error, "final", True),
    )


def observation(
    generation: int | None,
    *,
    invalid: Exception | None = None,
    config: Exception | None = None,
    nodes: NodeReport | None = None,
    service: ServiceHealth | None = None,
    job: JobProgress | None = None,
    adapters: Problem | None = None,
    conflict: Problem | None = None,
) -> Observation:
    """What one reconcile saw, its user errors as problems. `invalid`: the Workspace cannot be built
    (nothing else was looked at); `config`: a ConfigMap it names is missing or broken."""
    return Observation(
        generation,
        invalid=problem(invalid) if invalid is not None else None,
        nodes=nodes,
        config=problem(config) if config is not None else None,
        service=service,
        job=job,
        adapters=adapters,
        conflict=conflict,
    )


async def report(
    kube: Kube, obj: dict[str, Any], kind: WorkloadKind, seen: Observation, now: datetime
) -> dict[str, Any] | None:
    """Write the status `seen` calls for, if it differs; the Workspace as written."""
    old = obj.get("status") or {}
    new = workspace_status(kind, seen, old, now)
    if new == old:
        return None
    metadata = obj["metadata"]
    # The resourceVersion makes this write fail with 409 if the Workspace changed since it was read,
    # rather than overwrite a status computed from a newer spec.
    patch = {
        "metadata": {"resourceVersion": metadata["resourceVersion"]},
        "status": merge_patch_diff(old, new),
    }
    patched = await kube.patch_workspace_status(metadata["namespace"], metadata["name"], patch)
    failing = new.get("state") in (STATE_FAILED, STATE_NOT_READY)
    was_true = {c.get("type") for c in old.get("conditions") or [] if c.get("status") == "True"}
    for condition in transitions(old, new):
        warning = condition.status == "False" and failing
        # Events for failures, for every step of the node layer (a pool takes minutes), and for
        # conditions turning True or leaving True; the pending reasons the workload passes through
        # on its way up (ResourceNotReady, Initializing, ...) are only in the status.
        nodes = condition.type == CONDITION_RESOURCE_READY
        if warning or nodes or condition.status == "True" or condition.type in was_true:
            message = f"{condition.type} is {condition.status}: {condition.message}"
            event(obj, "Warning" if warning else "Normal", condition.reason, message)
    return patched
