"""What every object a Workspace turns into shares: its labels, its owner reference, and the Ray
cluster plan (image, pull secrets, head and worker sizes) from the controller settings."""

from __future__ import annotations

from typing import Any

from controller.settings import Settings
from kairay.api.workspace import Workspace
from kuberay.cluster import RayClusterPlan

WORKSPACE_LABEL = "kaito.sh/workspace"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kairay"}
# Kaito's modelAccessSecret holds the Hugging Face token under this key.
HF_TOKEN_KEY = "HF_TOKEN"


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
) -> RayClusterPlan:
    autoscaling = min_workers is not None and max_workers is not None and max_workers != min_workers
    return RayClusterPlan(
        name=ws.metadata.name or "",
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
