"""The rendered inference arguments: the one JSON document `build_app` accepts.

`controller/render.py` produces it for both `kairay up` and the RayService's `serveConfigV2`. The
adapter list travels separately, as each deployment's `user_config`, because Serve applies a
`user_config` change to live replicas (`reconfigure`) while an `args` change redeploys them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LLM_DEPLOYMENT = "LLMServer"
INGRESS_DEPLOYMENT = "Ingress"
IMPORT_PATH = "serve_apps.app:build_app"
# Requests a one-replica app lets through beyond its admitted generations: probes, metrics scrapes.
CONTROL_HEADROOM = 16

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    """Where a replica finds the base model."""

    name: str = Field(description="Served model name: what clients pass as `model`.")
    preset: str = Field(description="Preset name, `org/model` id, or local directory.")
    path: str | None = Field(
        default=None, description="Local Hugging Face directory; None means prepare/resolve `preset`."
    )
    local: bool = Field(default=False, description="Prepare the model on the replica from a local package.")
    chat_template: str | None = None


class AdapterConfig(_Strict):
    name: str
    path: str | None = Field(default=None, description="Local adapter directory.")
    image: str | None = Field(default=None, description="OCI image holding the adapter under /data.")
    image_pull_secrets: tuple[str, ...] = ()
    strength: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS-1123 label (lowercase alphanumerics and '-', at most 63)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AdapterConfig:
        if (self.path is None) == (self.image is None):
            raise ValueError(f"adapter {self.name!r} needs exactly one of path or image")
        return self


class AdaptersConfig(_Strict):
    """The `user_config` both deployments receive; changing it reconfigures live replicas."""

    adapters: tuple[AdapterConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> AdaptersConfig:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate adapter names: {', '.join(dupes)}")
        return self


class Autoscaling(_Strict):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=16, gt=0)


class Limits(_Strict):
    """Backpressure: beyond ongoing + queued requests a replica answers 503 at once."""

    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=128, ge=0)
    backpressure_status: Literal[429, 503] = 503


class AppConfig(_Strict):
    name: str
    model: ModelSource
    runtime: Literal["vllm", "transformers"] = "vllm"
    device: Literal["cpu", "gpu"] = "cpu"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    num_replicas: int = Field(default=1, ge=1)
    autoscaling: Autoscaling | None = None
    replica_cpus: float = Field(default=1.0, ge=0)
    replica_gpus: float = Field(default=0.0, ge=0)
    placement_bundles: list[dict[str, float]] | None = Field(
        default=None,
        description="Multi-GPU engines: the replica's CPU bundle then one GPU bundle per worker.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_adapters_per_replica: int = Field(default=4, ge=1)
    limits: Limits = Limits()
    adapter_cache: str | None = Field(default=None, description="Where pulled/scaled adapters go.")
    docker_config_dir: str | None = Field(
        default=None, description="Directory of mounted dockerconfigjson Secrets, one subdir per Secret."
    )
    env: dict[str, str] = Field(default_factory=dict)
    adapters: tuple[AdapterConfig, ...] = Field(
        default=(), description="Initial adapters when built without a deployment user_config."
    )

    @property
    def direct(self) -> bool:
        """One fixed replica: nothing to route, so the replica serves HTTP without an ingress."""
        return self.autoscaling is None and self.num_replicas == 1

    def serve_limits(self) -> tuple[int, int]:
        """(max_ongoing_requests, max_queued_requests) of the LLM deployment in Serve.

        Without an ingress the replica admits requests itself (`serve_apps.direct`), so Serve's own
        limits sit above the admitted ongoing + queued: room for probes and scrapes, and a proxy
        queue deep enough that a burst reaches the replica (which refuses the excess at once)
        instead of being dropped in plain text by the proxy.
        """
        limits = self.limits
        if self.direct:
            admitted = limits.max_ongoing_requests + limits.max_queued_requests + CONTROL_HEADROOM
            return admitted, admitted
        return limits.max_ongoing_requests, limits.max_queued_requests

    @property
    def max_model_len(self) -> int | None:
        value = self.engine_args.get("max_model_len")
        return int(value) if value is not None else None


def serve_config(app: AppConfig, route_prefix: str = "/") -> dict[str, Any]:
    """The Serve config file (also RayService `serveConfigV2`) that deploys `app`."""
    args = app.model_dump(mode="json", exclude={"adapters"})

    def user_config() -> dict[str, Any]:
        # A fresh dict each time: shared objects would come out as YAML anchors in manifests.
        return AdaptersConfig(adapters=app.adapters).model_dump(mode="json")

    max_ongoing, max_queued = app.serve_limits()
    llm: dict[str, Any] = {
        "name": LLM_DEPLOYMENT,
        "user_config": user_config(),
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": max_queued,
    }
    if app.autoscaling is not None:
        llm["autoscaling_config"] = app.autoscaling.model_dump(mode="json")
    else:
        llm["num_replicas"] = app.num_replicas
    deployments = [llm]
    if not app.direct:
        deployments.append({"name": INGRESS_DEPLOYMENT, "user_config": user_config()})
    return {
        "applications": [
            {
                "name": app.name,
                "route_prefix": route_prefix,
                "import_path": IMPORT_PATH,
                "args": args,
                "deployments": deployments,
            }
        ]
    }
