"""A Workspace's status from what the controller observed, pure.

The controller gathers an `Observation` (is the Workspace valid, what the node provisioner reported,
what KubeRay says about the RayService or RayJob) and this module turns it into the whole `status`:
Kaito's conditions, `state`, `workerNodes` and `targetNodeCount`. Nothing here talks to a cluster, so
every rule about honesty is a unit test away:

- `InferenceReady` is True only when KubeRay reports the RayService Ready and every Serve application
  RUNNING (`kuberay.status.rayservice_health`); failures carry KubeRay's own reason and message. A
  running application whose own `/health` reports an adapter not ready (`AdapterPullFailed`,
  `AdapterInvalid`: it serves the base model and the other adapters) is not ready either.
- `ResourceReady` is the node provisioner's verdict.
- `WorkspaceSucceeded` is ResourceReady and InferenceReady for inference, the RayJob's outcome for
  tuning; `WorkspaceReady` mirrors it for v1alpha1 readers.
- A condition's `lastTransitionTime` moves only when its status does.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from controller.nodes.base import NodeReport
from kairay.api.workspace import (
    CONDITION_INFERENCE_READY,
    CONDITION_JOB_STARTED,
    CONDITION_RESOURCE_READY,
    CONDITION_WORKSPACE_READY,
    CONDITION_WORKSPACE_SUCCEEDED,
    STATE_FAILED,
    STATE_NOT_READY,
    STATE_PENDING,
    STATE_READY,
    STATE_RUNNING,
    STATE_SUCCEEDED,
)
from kuberay.status import JobProgress, ServiceHealth

ConditionStatus = Literal["True", "False", "Unknown"]
WorkloadKind = Literal["inference", "tuning"]

# The CRD's limits on condition fields (metav1.Condition's).
_REASON_ALLOWED = re.compile(r"[^A-Za-z0-9_,:]")
_REASON_MAX = 1024
_MESSAGE_MAX = 32768

REASON_SUCCEEDED = "Succeeded"
REASON_PENDING = "Pending"
REASON_RESOURCE_NOT_READY = "ResourceNotReady"
REASON_UNHEALTHY = "Unhealthy"
REASON_ADAPTER_NOT_READY = "AdapterNotReady"
REASON_RESOURCE_CONFLICT = "ResourceConflict"
REASON_ADAPTER_STATUS_UNKNOWN = "AdapterStatusUnknown"

_JOB_STATES = {
    "Pending": STATE_PENDING,
    "Running": STATE_RUNNING,
    "Succeeded": STATE_SUCCEEDED,
    "Failed": STATE_FAILED,
}


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, the form Kubernetes writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition_reason(text: str) -> str:
    """`text` as a valid condition reason (CamelCase identifier): KubeRay and Azure reasons are
    passed through, anything with other characters is squeezed into the CRD's pattern."""
    squeezed = _REASON_ALLOWED.sub("", text).lstrip("0123456789_,:").rstrip(",:")
    return squeezed[:_REASON_MAX] or "Unknown"


@dataclass(frozen=True)
class Verdict:
    """What one condition should say, before timestamps are applied."""

    status: ConditionStatus
    reason: str
    message: str

    @classmethod
    def of(cls, ok: bool, reason: str, message: str) -> Verdict:
        return cls("True" if ok else "False", reason, message)


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
        }
        if self.observed_generation is not None:
            data["observedGeneration"] = self.observed_generation
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition | None:
        """A stored condition, or None when it is not one (someone else's malformed entry)."""
        status = data.get("status")
        if not data.get("type") or status not in ("True", "False", "Unknown"):
            return None
        generation = data.get("observedGeneration")
        return cls(
            type=str(data["type"]),
            status=status,
            reason=str(data.get("reason") or ""),
            message=str(data.get("message") or ""),
            last_transition_time=str(data.get("lastTransitionTime") or ""),
            observed_generation=int(generation) if isinstance(generation, int) else None,
        )


@dataclass(frozen=True)
class Problem:
    """Why the controller cannot act on the Workspace. `final` problems last until the user changes
    something (state Failed); others may resolve on their own, e.g. a ConfigMap applied a moment after
    its Workspace (state Pending)."""

    reason: str
    message: str
    final: bool = True


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile saw. `invalid` means the Workspace itself cannot be served or tuned
    (catalog errors, unsupported fields): nothing else was looked at. `config` is a problem with a
    referenced ConfigMap. `service` / `job` are KubeRay's verdicts, None while the object does not exist.
    `adapters` is what the running application's `/health` says is wrong with its adapters.
    `conflict`: an object under a child's name that this Workspace does not own (left untouched)."""

    generation: int | None
    invalid: Problem | None = None
    nodes: NodeReport | None = None
    config: Problem | None = None
    service: ServiceHealth | None = None
    job: JobProgress | None = None
    adapters: Problem | None = None
    conflict: Problem | None = None


def adapter_problem(health: Any, wanted: Collection[str]) -> Problem | None:
    """The adapters among `wanted` that a `/health` answer (`{"adapters": {name: {"ready", "reason",
    "message"}}}`) reports as not ready; the reason is the first one's, the message names each."""
    adapters = health.get("adapters") if isinstance(health, Mapping) else None
    if not isinstance(adapters, Mapping):
        return None
    failing = [
        (str(name), state)
        for name, state in sorted(adapters.items())
        if name in wanted and isinstance(state, Mapping) and state.get("ready") is False
    ]
    if not failing:
        return None
    reason = str(failing[0][1].get("reason") or REASON_ADAPTER_NOT_READY)
    message = "; ".join(
        f"adapter {name}: {state.get('message') or state.get('reason')}" for name, state in failing
    )
    # A registry that was down or a Secret created late can heal without a spec change.
    return Problem(reason, message, final=False)


def parse_conditions(status: Mapping[str, Any] | None) -> list[Condition]:
    found = (Condition.from_dict(c) for c in (status or {}).get("conditions") or [] if isinstance(c, Mapping))
    return [c for c in found if c is not None]


def merge_conditions(
    old: Sequence[Condition], verdicts: Sequence[tuple[str, Verdict]], generation: int | None, now: datetime
) -> list[Condition]:
    """The conditions for `verdicts`, in their order. A condition keeps its old `lastTransitionTime`
    while its status stays the same; reason, message and observedGeneration always follow the verdict."""
    previous = {c.type: c for c in old}
    merged = []
    for kind, verdict in verdicts:
        before = previous.get(kind)
        kept = before is not None and before.status == verdict.status and before.last_transition_time
        merged.append(
            Condition(
                type=kind,
                status=verdict.status,
                reason=condition_reason(verdict.reason),
                message=verdict.message[:_MESSAGE_MAX],
                last_transition_time=before.last_transition_time if before and kept else timestamp(now),
                observed_generation=generation,
            )
        )
    return merged


def workspace_status(
    kind: WorkloadKind, observation: Observation, old_status: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The complete `status` of a Workspace for `observation`, given the status it has now."""
    old_status = old_status or {}
    resource = _resource_ready(observation)
    if kind == "inference":
        workload_type, workload = CONDITION_INFERENCE_READY, _inference_ready(observation)
        succeeded = _inference_succeeded(resource, workload)
        state = _inference_state(observation, succeeded.status == "True", old_status.get("state"))
    else:
        workload_type, workload = CONDITION_JOB_STARTED, _job_started(observation)
        succeeded = _tuning_succeeded(observation, workload)
        state = _tuning_state(observation)
    verdicts = [
        (CONDITION_RESOURCE_READY, resource),
        (workload_type, workload),
        (CONDITION_WORKSPACE_SUCCEEDED, succeeded),
        (CONDITION_WORKSPACE_READY, succeeded),
    ]
    conditions = merge_conditions(parse_conditions(old_status), verdicts, observation.generation, now)
    status: dict[str, Any] = {
        "conditions": [c.to_dict() for c in conditions],
        "state": state,
        "workerNodes": list(observation.nodes.worker_nodes) if observation.nodes else [],
    }
    if observation.nodes is not None:
        status["targetNodeCount"] = observation.nodes.target_node_count
    return status


def transitions(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> list[Condition]:
    """Conditions of `new_status` whose status or reason differs from `old_status`: what deserves a
    Kubernetes Event. WorkspaceReady only mirrors WorkspaceSucceeded, so it is left out."""
    before = {c.type: c for c in parse_conditions(old_status)}
    changed = []
    for condition in parse_conditions(new_status):
        if condition.type == CONDITION_WORKSPACE_READY:
            continue
        old = before.get(condition.type)
        if old is None or (old.status, old.reason) != (condition.status, condition.reason):
            changed.append(condition)
    return changed


# --- per-condition rules ----------------------------------------------------------------------------


def _problem(problem: Problem) -> Verdict:
    return Verdict("False", problem.reason, problem.message)


def _resource_ready(observation: Observation) -> Verdict:
    if observation.invalid is not None:
        return _problem(observation.invalid)
    nodes = observation.nodes
    if nodes is None:
        return Verdict("Unknown", REASON_PENDING, "the nodes have not been checked yet")
    return Verdict.of(nodes.ready, nodes.reason, nodes.message)


def _waiting_for_nodes(observation: Observation) -> Verdict | None:
    nodes = observation.nodes
    if nodes is not None and not nodes.ready:
        return Verdict("False", REASON_RESOURCE_NOT_READY, f"waiting for nodes: {nodes.message}")
    return None


def _inference_ready(observation: Observation) -> Verdict:
    if observation.invalid is not None:
        return _problem(observation.invalid)
    # A ConfigMap problem means the desired Serve config cannot be rendered, even if an older one runs.
    if observation.config is not None:
        return _problem(observation.config)
    if observation.conflict is not None:
        return _problem(observation.conflict)
    if observation.service is not None:
        health = observation.service
        if health.ready and observation.adapters is not None:
            return _problem(observation.adapters)
        return Verdict.of(health.ready, health.reason, health.message)
    creating = Verdict("False", REASON_PENDING, "the RayService is being created")
    return _waiting_for_nodes(observation) or creating


def _inference_succeeded(resource: Verdict, inference: Verdict) -> Verdict:
    if resource.status == "True" and inference.status == "True":
        return Verdict("True", REASON_SUCCEEDED, "the nodes are ready and the inference endpoint serves")
    failing = resource if resource.status != "True" else inference
    return Verdict("False", failing.reason, failing.message)


def _inference_state(observation: Observation, succeeded: bool, previous: Any) -> str:
    if observation.invalid is not None or (observation.config is not None and observation.config.final):
        return STATE_FAILED
    if succeeded:
        return STATE_READY
    health = observation.service
    if health is not None and health.failed:
        return STATE_FAILED
    # Once a Workspace has served, losing readiness is NotReady rather than a return to Pending; so is
    # serving without some of its adapters.
    unhealthy = health is not None and health.reason == REASON_UNHEALTHY
    adapters_failing = health is not None and health.ready and observation.adapters is not None
    if previous in (STATE_READY, STATE_NOT_READY) or unhealthy or adapters_failing:
        return STATE_NOT_READY
    return STATE_PENDING


def _job_started(observation: Observation) -> Verdict:
    if observation.invalid is not None:
        return _problem(observation.invalid)
    # A job that exists ran with the inputs it was created with; later ConfigMap problems only matter
    # to the next job.
    if observation.job is not None:
        job = observation.job
        return Verdict.of(job.started, job.reason, job.message)
    if observation.config is not None:
        return _problem(observation.config)
    creating = Verdict("False", REASON_PENDING, "the RayJob is being created")
    return _waiting_for_nodes(observation) or creating


def _tuning_succeeded(observation: Observation, started: Verdict) -> Verdict:
    job = observation.job
    if job is None or observation.invalid is not None:
        return Verdict("False", started.reason, started.message)
    return Verdict.of(job.state == "Succeeded", job.reason, job.message)


def _tuning_state(observation: Observation) -> str:
    if observation.invalid is not None:
        return STATE_FAILED
    if observation.job is not None:
        return _JOB_STATES[observation.job.state]
    if observation.config is not None and observation.config.final:
        return STATE_FAILED
    return STATE_PENDING
