"""What every workload builder shares: the labels and owner reference of a Workspace's children, the
Ray cluster plan, the node request, and `DesiredState`, what a builder returns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from controller.conditions import WorkloadKind
from controller.nodes.base import LabelRequirement, NodeRequest
from controller.settings import Settings
from kairay.api.workspace import Workspace
from kuberay.cluster import RayClusterPlan
from presets.sizing import InferencePlan, TuningPlan

WORKSPACE_LABEL = "kaito.sh/workspace"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kairay"}
SERVICE_PORT = 80
# Kaito's modelAccessSecret holds the Hugging Face token under this key.
HF_TOKEN_KEY = "HF_TOKEN"
# AKS gives a node this much OS disk unless asked otherwise.
AKS_DEFAULT_OS_DISK_GB = 128
# The runtime image (CUDA, Ray, vLLM) and the OS, next to the model weights.
RUNTIME_DISK_GB = 50


@dataclass(frozen=True)
class DesiredState:
    """Everything a Workspace asks of the cluster, from one parse and one sizing: its children (a
    RayService and its Service, or a RayJob), the plan they were sized by (None for a tuning Workspace
    on nodes of the user's own, with no instance type to size against) and the nodes they need."""

    kind: WorkloadKind
    objects: list[dict[str, Any]]
    plan: InferencePlan | TuningPlan | None
    nodes: NodeRequest


def owner_reference(ws: Workspace) -> dict[str, Any]:
    return {
        "apiVersion": ws.api_version,
        "kind": "Workspace",
        "name": ws.metadata.name,
        "uid": ws.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(ws: Workspace) -> dict[str, str]:
    return {WORKSPACE_LABEL: ws.metadata.name or "", **MANAGED_BY}


def cluster_plan(
    ws: Workspace,
    settings: Settings,
    *,
    gpus_per_worker: int,
    workers: int,
    min_workers: int | None = None,
    max_workers: int | None = None,
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    volume_mounts: list[dict[str, Any]] | None = None,
    name: str | None = None,
) -> RayClusterPlan:
    """The Ray cluster of a Workspace's child, named `name` (default: the Workspace's), labelled and
    owned as the Workspace."""
    autoscaling = min_workers is not None and max_workers is not None and max_workers != min_workers
    return RayClusterPlan(
        name=name or ws.metadata.name or "",
        namespace=ws.metadata.namespace or "default",
        image=settings.runtime_image,
        labels=labels(ws),
        owner_references=[owner_reference(ws)],
        image_pull_secrets=list(settings.image_pull_secrets),
        head_cpu=settings.head_cpu,
        head_memory=settings.head_memory,
        replicas=workers,
        min_replicas=min_workers if autoscaling else None,
        max_replicas=max_workers if autoscaling else None,
        gpus_per_worker=gpus_per_worker,
        cpu_per_worker=settings.worker_cpu,
        memory_per_worker=settings.worker_memory,
        node_selector=ws.resource.label_selector.as_labels(),
        env=env or [],
        volumes=volumes or [],
        volume_mounts=volume_mounts or [],
        enable_autoscaling=autoscaling,
    )


def model_access_env(secret: str | None) -> list[dict[str, Any]]:
    """The Hugging Face token from Kaito's modelAccessSecret, as a reference to the Secret."""
    if not secret:
        return []
    return [{"name": HF_TOKEN_KEY, "valueFrom": {"secretKeyRef": {"name": secret, "key": HF_TOKEN_KEY}}}]


def node_request(
    ws: Workspace,
    *,
    node_count: int,
    gpus_per_node: int | None = None,
    gpu_memory_gb: float | None = None,
    os_disk_gb: int | None = None,
) -> NodeRequest:
    """The nodes a Workspace needs: `node_count` of its instance type, or of the user's own that match
    its label selector."""
    selector = ws.resource.label_selector
    return NodeRequest(
        namespace=ws.metadata.namespace or "default",
        name=ws.metadata.name or "",
        uid=ws.metadata.uid or "",
        instance_type=ws.resource.instance_type,
        node_count=max(node_count, 1),
        match_labels=dict(selector.match_labels),
        match_expressions=tuple(
            LabelRequirement(e.key, e.operator, tuple(e.values)) for e in selector.match_expressions
        ),
        preferred_nodes=tuple(ws.resource.preferred_nodes),
        os_disk_gb=os_disk_gb,
        gpu_memory_needed_gb=gpu_memory_gb,
        gpus_per_node=gpus_per_node,
    )


def disk_gb(weights_gb: float | None) -> int | None:
    """OS disk for a node: AKS's default unless the weights (in the Hugging Face cache) and the runtime
    image need more."""
    if weights_gb is None:
        return None
    needed = math.ceil(weights_gb) + RUNTIME_DISK_GB
    return needed if needed > AKS_DEFAULT_OS_DISK_GB else None
