"""A tuning Workspace as a KubeRay RayJob, pure.

The job runs `python -m tuning.job` (see its module docstring for the arguments). Everything secret
reaches it as a mounted Secret volume (the output's imagePushSecret, the input's imagePullSecrets) or
an env reference (the model access token), never as a value in the manifest; the tuning ConfigMap and
the data volumes are mounted too. The Workspace itself holds no secret values (only Secret names), so
it travels inline in the entrypoint.

The RayJob name ends in a hash of the tuning spec and the Workspace's uid: KubeRay never re-runs a
RayJob whose spec changes, so a new input or output means a new RayJob, and a re-created Workspace
never adopts the finished job of its predecessor.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

from controller.settings import Settings
from controller.workloads.common import (
    DesiredState,
    cluster_plan,
    disk_gb,
    model_access_env,
    node_request,
)
from kairay.api.workspace import TuningSpec, Workspace
from kuberay.cluster import MAX_NAME_LENGTH
from kuberay.rayjob import build_rayjob
from presets.models import resolve_preset
from presets.sizing import TuningPlan, plan_tuning
from presets.skus import get_sku

CONFIG_DIR = "/mnt/config"
PUSH_SECRET_DIR = "/mnt/secrets/push"
PULL_SECRET_DIR = "/mnt/secrets/pull"
INPUT_DIR = "/mnt/data"
OUTPUT_DIR = "/mnt/results"
# The Ray containers run as a non-root user that is not in the files' group: Secret and ConfigMap
# files must be world-readable inside the pod to be readable at all.
_READABLE = 0o444
_HASH_LENGTH = 8


def spec_digest(ws: Workspace) -> str:
    """Short hash of the tuning spec and the Workspace's identity."""
    assert ws.tuning is not None
    identity = {"uid": ws.metadata.uid or "", "tuning": ws.tuning.model_dump(mode="json", by_alias=True)}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LENGTH]


def rayjob_name(ws: Workspace) -> str:
    """`<workspace>-<hash>`, the name cut so the whole fits KubeRay's limit."""
    stem = (ws.metadata.name or "tuning")[: MAX_NAME_LENGTH - _HASH_LENGTH - 1]
    return f"{stem}-{spec_digest(ws)}"


def tuning_state(ws: Workspace, settings: Settings) -> DesiredState:
    """The RayJob of a tuning Workspace, on one node, sized once."""
    if ws.tuning is None:
        raise ValueError("tuning_state needs a tuning Workspace")
    tuning = ws.tuning
    preset = resolve_preset(tuning.preset.name)
    plan: TuningPlan | None = None
    if ws.resource.instance_type:
        # Ray Train runs one worker per GPU of the node.
        plan = plan_tuning(preset, get_sku(ws.resource.instance_type), tuning.method)
    gpus = plan.workers if plan is not None else 0
    volumes, mounts, arguments = _mounts(tuning)
    arguments += ["--num-workers", str(max(gpus, 1))]
    if gpus:
        arguments.append("--gpu")
    # The plan is named after the RayJob: KubeRay's name rules apply to it.
    cluster = cluster_plan(
        ws,
        settings,
        gpus_per_worker=gpus,
        workers=1,
        env=model_access_env(tuning.preset.preset_options.model_access_secret),
        volumes=volumes,
        volume_mounts=mounts,
        name=rayjob_name(ws),
    )
    entrypoint = shlex.join(["python", "-m", "tuning.job", "--workspace", _workspace_json(ws), *arguments])
    rayjob = build_rayjob(cluster, entrypoint)
    # The head advertises no CPUs, so asking for one puts the driver on the worker pod, next to the
    # Train worker: the final checkpoint then sits on local storage the driver can read.
    rayjob["spec"]["entrypointNumCpus"] = 1
    nodes = node_request(
        ws,
        node_count=1,
        gpus_per_node=plan.workers if plan is not None else None,
        gpu_memory_gb=plan.sku.gpu_memory_gb if plan is not None else None,
        os_disk_gb=disk_gb(preset.disk_gb),
    )
    return DesiredState("tuning", [rayjob], plan, nodes)


def _mounts(tuning: TuningSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    arguments: list[str] = []

    def mount(name: str, source: dict[str, Any], path: str, flag: str, *, read_only: bool = True) -> None:
        volumes.append({"name": name, **source})
        mounts.append({"name": name, "mountPath": path, "readOnly": read_only})
        arguments.extend([flag, path])

    if tuning.config:
        mount(
            "tuning-config",
            {"configMap": {"name": tuning.config, "defaultMode": _READABLE}},
            CONFIG_DIR,
            "--config",
        )
    if tuning.output.image_push_secret:
        mount("push-secret", _secret(tuning.output.image_push_secret), PUSH_SECRET_DIR, "--push-secret")
    for index, secret in enumerate(tuning.input.image_pull_secrets):
        mount(f"pull-secret-{index}", _secret(secret), f"{PULL_SECRET_DIR}-{index}", "--pull-secret")
    if tuning.input.volume_source is not None:
        mount("input-data", dict(tuning.input.volume_source), INPUT_DIR, "--input-dir")
    if tuning.output.volume_source is not None:
        mount("output-data", dict(tuning.output.volume_source), OUTPUT_DIR, "--output-dir", read_only=False)
    return volumes, mounts, arguments


def _secret(name: str) -> dict[str, Any]:
    return {"secret": {"secretName": name, "defaultMode": _READABLE}}


def _workspace_json(ws: Workspace) -> str:
    """The part of the Workspace the job reads, as compact JSON (no status, no controller annotations)."""
    assert ws.tuning is not None
    document = {
        "apiVersion": ws.api_version,
        "kind": "Workspace",
        "metadata": {"name": ws.metadata.name, "namespace": ws.metadata.namespace},
        "resource": ws.resource.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "tuning": ws.tuning.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
