"""Controller settings: flags and environment, decided once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ControllerOptions:
    """How the reconcile loop runs: the settings of what it renders, and its timing."""

    settings: Settings = field(default_factory=Settings)
    # How often every Workspace is reconciled even without events (nodes, ConfigMaps, agent pools).
    resync_seconds: float = 30.0
    # Re-reads after a 409 before giving the retry back to kopf.
    conflict_attempts: int = 5
    # kopf's delay before retrying a handler that failed on an API error or is waiting for deletion.
    retry_delay_seconds: float = 5.0
    # Where the replicas' leader-election Lease lives (`controller.leader`), and how long it lasts.
    lease_namespace: str = "default"
    lease_seconds: float = 15.0
