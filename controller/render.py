"""Workspace + plan → the Serve application, pure.

`render_serve_config` is the one Serve config that both `kairay up` and the RayService's
`serveConfigV2` deploy. Nothing here talks to a cluster, a registry or an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

from kairay.api.errors import KairayError
from kairay.api.workspace import Workspace
from presets.cpu import CpuDtype
from presets.models import ModelPreset, resolve_preset
from presets.sizing import InferencePlan, plan_inference, plan_local
from presets.skus import get_sku
from serve_apps.config import AdapterConfig, AppConfig, Autoscaling, Limits, ModelSource, serve_config

Target = Literal["local", "cluster"]

# Kaito allows ten adapters; a replica keeps up to this many loaded at once (LRU beyond).
MAX_LORAS_PER_REPLICA = 4
MAX_LORA_RANK = 64
# Where the RayService pods mount adapter pull secrets (one subdirectory per Secret).
PULL_SECRETS_DIR = "/etc/kairay/pull-secrets"
DEFAULT_LIMITS = {
    # vLLM batches continuously: many requests in flight per replica is how it gets throughput.
    "vllm": Limits(max_ongoing_requests=64, max_queued_requests=256),
    # The transformers runtime generates one request at a time; a short queue fails fast instead.
    "transformers": Limits(max_ongoing_requests=4, max_queued_requests=32),
}


class RenderError(KairayError, ValueError):
    """The Workspace cannot be rendered (it is a tuning Workspace, or uses a custom template)."""

    reason = "UnsupportedWorkspace"
    http_status = HTTPStatus.BAD_REQUEST


@dataclass(frozen=True)
class Rendered:
    app: AppConfig
    plan: InferencePlan

    @property
    def serve_config(self) -> dict[str, Any]:
        return serve_config(self.app)


def inference_preset(ws: Workspace) -> ModelPreset:
    if ws.inference is None:
        raise RenderError("tuning Workspaces have no Serve application; use `kairay tune`")
    if ws.inference.preset is None:
        raise RenderError("inference.template Workspaces run their own pod template, not a Serve app")
    return resolve_preset(ws.inference.preset.name)


def plan_for(ws: Workspace, target: Target, cpu_dtype: CpuDtype | None = None) -> InferencePlan:
    """The plan on the Workspace's GPUs, or on this CPU (`cpu_dtype` overrides the CPU dtype policy)."""
    preset = inference_preset(ws)
    if target == "local" or not ws.resource.instance_type:
        return plan_local(preset, cpu_dtype)
    # The transformers runtime cannot span nodes: size it onto one.
    node_count = 1 if ws.runtime == "transformers" else None
    return plan_inference(preset, get_sku(ws.resource.instance_type), node_count=node_count)


def render(
    ws: Workspace,
    target: Target,
    *,
    engine_overrides: dict[str, Any] | None = None,
    cpu_dtype: CpuDtype | None = None,
) -> Rendered:
    """The Serve application for an inference Workspace.

    `engine_overrides` are the extra engine args from the Workspace's `inference.config` ConfigMap;
    they go on top of the plan's, which already carry the preset defaults.
    """
    preset = inference_preset(ws)
    plan = plan_for(ws, target, cpu_dtype)
    assert ws.inference is not None
    engine_args = plan.engine_args()
    if ws.runtime == "vllm":
        engine_args.update(enable_lora=True, max_loras=MAX_LORAS_PER_REPLICA, max_lora_rank=MAX_LORA_RANK)
        if target == "local":
            # Small ranks keep the LoRA buffers of the CPU engine small.
            engine_args["max_lora_rank"] = 16
        if plan.tensor_parallel * plan.pipeline_parallel > 1:
            engine_args["distributed_executor_backend"] = "ray"
    engine_args.update(engine_overrides or {})

    gpus = plan.tensor_parallel * plan.pipeline_parallel
    single_gpu = target == "cluster" and gpus == 1
    replicas = max(1, ws.resource.count // max(plan.nodes, 1)) if target == "cluster" else 1
    autoscaling = (
        Autoscaling(min_replicas=ws.autoscaling.min_replicas, max_replicas=ws.autoscaling.max_replicas)
        if ws.autoscaling is not None
        else None
    )
    app = AppConfig(
        name=ws.metadata.name or "workspace",
        model=ModelSource(
            name=preset.name,
            preset=ws.inference.preset.name if ws.inference.preset else preset.name,
            path=preset.model_id if Path(preset.model_id).is_dir() else None,
            local=preset.local,
            chat_template=preset.chat_template,
        ),
        runtime=ws.runtime,
        device="gpu" if target == "cluster" else "cpu",
        engine_args=engine_args,
        num_replicas=replicas,
        autoscaling=autoscaling,
        replica_cpus=1.0,
        replica_gpus=1.0 if single_gpu else 0.0,
        placement_bundles=_bundles(gpus) if target == "cluster" and gpus > 1 else None,
        placement_strategy="PACK" if plan.pipeline_parallel == 1 else "SPREAD",
        max_adapters_per_replica=MAX_LORAS_PER_REPLICA,
        limits=_limits(ws),
        docker_config_dir=PULL_SECRETS_DIR if target == "cluster" else None,
        env=_env(target),
        adapters=tuple(_adapter(a, target) for a in ws.inference.adapters),
    )
    return Rendered(app=app, plan=plan)


def render_serve_config(ws: Workspace, target: Target, **kwargs: Any) -> dict[str, Any]:
    return render(ws, target, **kwargs).serve_config


def _bundles(gpus: int) -> list[dict[str, float]]:
    # The replica itself takes the CPU bundle; vLLM's Ray executor places one worker per GPU bundle.
    return [{"CPU": 1.0}] + [{"GPU": 1.0} for _ in range(gpus)]


def _limits(ws: Workspace) -> Limits:
    default, options = DEFAULT_LIMITS[ws.runtime], ws.options
    ongoing, queued = options.max_ongoing_requests, options.max_queued_requests
    return Limits(
        max_ongoing_requests=default.max_ongoing_requests if ongoing is None else ongoing,
        max_queued_requests=default.max_queued_requests if queued is None else queued,
    )


def _env(target: Target) -> dict[str, str]:
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if target == "local":
        # A laptop run never reaches a model hub: local presets are prepared from a wheel.
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
    return env


def _adapter(spec: Any, target: Target) -> AdapterConfig:
    source = spec.source
    if source.image:
        return AdapterConfig(
            name=source.name,
            image=source.image,
            image_pull_secrets=tuple(source.image_pull_secrets),
            strength=spec.strength_value,
        )
    host_path = ((source.volume_source or {}).get("hostPath") or {}).get("path")
    if not host_path:
        raise RenderError(
            f"inference.adapters[{source.name}].source: only image and hostPath volume sources can be served"
        )
    return AdapterConfig(name=source.name, path=host_path, strength=spec.strength_value)
