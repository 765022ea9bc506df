"""`serve_apps.app:build_app`: the import path every Workspace's Serve config names."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from serve_apps.config import INGRESS_DEPLOYMENT, LLM_DEPLOYMENT, AdaptersConfig, AppConfig
from serve_apps.direct import DirectLLMServer
from serve_apps.ingress import Ingress
from serve_apps.llm_server import LLMServer

# The ingress only parses and forwards; it must never be the bottleneck nor hold a CPU the engine
# needs, so it gets no CPU reservation and a queue far deeper than the engine's.
INGRESS_MAX_ONGOING = 4096


def build_app(args: dict[str, Any]) -> serve.Application:
    """One replica: the engine's replica serves HTTP itself. More: an ingress routes by adapter."""
    config = AppConfig.model_validate(args)
    user_config = AdaptersConfig(adapters=config.adapters).model_dump(mode="json")
    runtime_env = {"env_vars": dict(config.env)} if config.env else {}
    actor_options: dict[str, Any] = {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus}
    if runtime_env:
        actor_options["runtime_env"] = runtime_env
    max_ongoing, max_queued = config.serve_limits()
    llm_options: dict[str, Any] = {
        "name": LLM_DEPLOYMENT,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": max_queued,
        "backpressure_config": BackpressureConfig(
            status_code=config.limits.backpressure_status, retry_after_s=1
        ),
        "user_config": user_config,
        # Engines take tens of seconds to start; a replica is healthy once __init__ returns.
        "health_check_timeout_s": 60,
        "graceful_shutdown_timeout_s": 30,
    }
    if config.placement_bundles:
        llm_options["placement_group_bundles"] = config.placement_bundles
        llm_options["placement_group_strategy"] = config.placement_strategy
    if config.autoscaling is not None:
        llm_options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        llm_options["num_replicas"] = config.num_replicas
    app_args = config.model_dump(mode="json")
    if config.direct:
        return serve.deployment(**llm_options)(DirectLLMServer).bind(app_args)
    llm = serve.deployment(**llm_options)(LLMServer).bind(app_args)
    ingress = serve.deployment(
        name=INGRESS_DEPLOYMENT,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        user_config=user_config,
    )(Ingress)
    return ingress.bind(app_args, llm)
