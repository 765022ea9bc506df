"""Controller settings: flags and environment, decided once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

DEFAULT_RUNTIME_IMAGE = "ghcr.io/kairay/kairay-runtime:0.1.0"


@dataclass(frozen=True)
class Settings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_secrets: tuple[str, ...] = ()
    node_provisioner: Literal["aks", "byo"] = "byo"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    worker_cpu: str | None = None
    worker_memory: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """KAIRAY_* environment variables (the controller Deployment sets them)."""
        secrets = os.environ.get("KAIRAY_IMAGE_PULL_SECRETS", "")
        provisioner = os.environ.get("KAIRAY_NODE_PROVISIONER", "byo")
        if provisioner not in ("aks", "byo"):
            raise ValueError(f"KAIRAY_NODE_PROVISIONER must be aks or byo, not {provisioner!r}")
        return cls(
            runtime_image=os.environ.get("KAIRAY_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
            image_pull_secrets=tuple(s for s in secrets.split(",") if s),
            node_provisioner=provisioner,  # type: ignore[arg-type]
        )
