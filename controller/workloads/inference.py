"""An inference Workspace as a KubeRay RayService and its Service, pure.

The RayService's `serveConfigV2` is `controller.render`'s Serve config, the same document
`kairay up` deploys. Secrets are referenced (env `valueFrom`, mounted volumes), never inlined.
"""

from __future__ import annotations

from typing import Any

from controller.render import PULL_SECRETS_DIR, RenderError, render
from controller.settings import Settings
from controller.workloads.common import (
    SERVICE_PORT,
    WORKSPACE_LABEL,
    DesiredState,
    cluster_plan,
    disk_gb,
    labels,
    model_access_env,
    node_request,
    owner_reference,
)
from kairay.api.workspace import Workspace
from kuberay.cluster import SERVE_PORT
from kuberay.rayservice import build_rayservice


def inference_state(
    ws: Workspace, settings: Settings, engine_overrides: dict[str, Any] | None = None
) -> DesiredState:
    """The RayService + Service of an inference Workspace, sized once (by `render`)."""
    assert ws.inference is not None
    if ws.inference.preset is None:
        raise RenderError("inference.template Workspaces are not supported by kairay yet")
    rendered = render(ws, "cluster", engine_overrides=engine_overrides)
    plan, app = rendered.plan, rendered.app
    replicas = app.num_replicas
    low = high = None
    if app.autoscaling is not None:
        replicas = max(app.autoscaling.min_replicas, 1)
        low, high = app.autoscaling.min_replicas * plan.nodes, app.autoscaling.max_replicas * plan.nodes
    env, volumes, mounts = _secret_wiring(ws)
    cluster = cluster_plan(
        ws,
        settings,
        gpus_per_worker=plan.gpus_per_node,
        workers=replicas * plan.nodes,
        min_workers=low,
        max_workers=high,
        env=env,
        volumes=volumes,
        volume_mounts=mounts,
    )
    nodes = node_request(
        ws,
        node_count=cluster.replicas,
        gpus_per_node=plan.gpus_per_node or None,
        gpu_memory_gb=plan.sku.gpu_memory_gb if plan.sku is not None else None,
        os_disk_gb=disk_gb(plan.preset.disk_gb),
    )
    objects = [build_rayservice(cluster, rendered.serve_config), build_service(ws)]
    return DesiredState("inference", objects, plan, nodes)


def build_service(ws: Workspace) -> dict[str, Any]:
    """`<workspace>` port 80 → the Serve proxies (8000) of whichever Ray cluster currently serves.

    It selects on our own workspace label plus KubeRay's `ray.io/serve`, not on the cluster name,
    which changes when KubeRay rolls to a new cluster.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": ws.metadata.name,
            "namespace": ws.metadata.namespace or "default",
            "labels": labels(ws),
            "ownerReferences": [owner_reference(ws)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {WORKSPACE_LABEL: ws.metadata.name or "", "ray.io/serve": "true"},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}],
        },
    }


def _secret_wiring(ws: Workspace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Env and volumes that reference Secrets: the model access token and adapter pull secrets."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    assert ws.inference is not None
    preset = ws.inference.preset
    env = model_access_env(preset.preset_options.model_access_secret if preset is not None else None)
    secrets = sorted({s for a in ws.inference.adapters for s in a.source.image_pull_secrets})
    for index, secret in enumerate(secrets):
        name = f"pull-secret-{index}"
        volumes.append({"name": name, "secret": {"secretName": secret, "defaultMode": 0o444}})
        mounts.append({"name": name, "mountPath": f"{PULL_SECRETS_DIR}/{secret}", "readOnly": True})
    return env, volumes, mounts
