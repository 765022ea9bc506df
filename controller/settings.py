"""Every setting of the controller process, decided once at start-up, in one place.

| setting                                   | from                                                   |
|-------------------------------------------|--------------------------------------------------------|
| `Settings`: runtime image, pull secrets,  | `KAIRAY_RUNTIME_IMAGE`, `KAIRAY_IMAGE_PULL_SECRETS`,   |
| node provisioner, Ray head/worker sizes   | `KAIRAY_NODE_PROVISIONER`; `--runtime-image`,          |
|                                           | `--node-provisioner` on top (`settings_from_flags`)    |
| `ControllerOptions`: resync, 409 retries, | `--resync-seconds`; the rest are fixed                 |
| retry delay (with the `Settings`)         |                                                        |
| `AksTarget`: the AKS cluster              | `--subscription-id`, `--resource-group`,               |
|                                           | `--cluster-name`, else `AZURE_*` (`aks_target`)        |
| `ArmConnection`: ARM endpoint and backoff | `KAIRAY_ARM_ENDPOINT`, `KAIRAY_ARM_TOKEN`,             |
|                                           | `KAIRAY_AZURE_BACKOFF_SECONDS`                         |

A bad value raises `ConfigError`, which the CLI prints without a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from kairay.api.errors import KairayError

DEFAULT_RUNTIME_IMAGE = "ghcr.io/kairay/kairay-runtime:0.1.0"
ARM_ENDPOINT_ENV = "KAIRAY_ARM_ENDPOINT"
ARM_TOKEN_ENV = "KAIRAY_ARM_TOKEN"
AZURE_BACKOFF_ENV = "KAIRAY_AZURE_BACKOFF_SECONDS"
DEFAULT_AZURE_BACKOFF_SECONDS = 15.0


class ConfigError(KairayError):
    """The controller cannot start with these flags; the message says which one to fix."""

    reason = "InvalidConfiguration"


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
            raise ConfigError(f"KAIRAY_NODE_PROVISIONER must be aks or byo, not {provisioner!r}")
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


@dataclass(frozen=True)
class AksTarget:
    """The AKS cluster whose agent pools the `aks` node provisioner manages."""

    subscription_id: str
    resource_group: str
    cluster_name: str


# Each AKS flag defaults to its variable (the controller Deployment sets them, `az` users often have them).
AKS_FLAG_ENV = {
    "--subscription-id": "AZURE_SUBSCRIPTION_ID",
    "--resource-group": "AZURE_RESOURCE_GROUP",
    "--cluster-name": "AZURE_CLUSTER_NAME",
}


def aks_target(
    subscription_id: str | None,
    resource_group: str | None,
    cluster_name: str | None,
    environ: Mapping[str, str] | None = None,
) -> AksTarget | None:
    """The AKS cluster named by flags or, for each flag not given, its `AZURE_*` variable in `environ`
    (default `os.environ`); None when none is set, ConfigError when only some are."""
    env = os.environ if environ is None else environ
    given = zip(AKS_FLAG_ENV.items(), (subscription_id, resource_group, cluster_name), strict=True)
    values = {flag: value or env.get(variable) for (flag, variable), value in given}
    missing = [flag for flag, value in values.items() if not value]
    if len(missing) == len(values):
        return None
    if missing:
        raise ConfigError(f"the AKS cluster needs {', '.join(missing)} too")
    return AksTarget(*(value or "" for value in values.values()))


def settings_from_flags(runtime_image: str | None, node_provisioner: str | None) -> Settings:
    """The KAIRAY_* environment with the flags that were given on top."""
    settings = Settings.from_env()
    if runtime_image:
        settings = dataclasses.replace(settings, runtime_image=runtime_image)
    if node_provisioner:
        if node_provisioner not in ("aks", "byo"):
            raise ConfigError(f"--node-provisioner must be aks or byo, not {node_provisioner!r}")
        settings = dataclasses.replace(settings, node_provisioner=node_provisioner)  # type: ignore[arg-type]
    return settings


@dataclass(frozen=True)
class ArmConnection:
    """How the `aks` provisioner reaches Azure Resource Manager, from the environment.

    Unset, it is public ARM over https, authenticated by `DefaultAzureCredential` (workload or
    managed identity, environment, Azure CLI). For tests against a fake ARM on this machine, both:

    - `KAIRAY_ARM_ENDPOINT=http://127.0.0.1:PORT`: the ARM base URL. Only loopback hosts are
      accepted, so plain http and the token below never leave the machine.
    - `KAIRAY_ARM_TOKEN=TOKEN`: a fixed bearer token instead of `DefaultAzureCredential`, sent over
      plain http to that endpoint (the SDK refuses bearer tokens over http otherwise).

    `KAIRAY_AZURE_BACKOFF_SECONDS` (default 15) is the first wait after an Azure failure, such as a
    quota error, before the pool is written again; it doubles on each failure up to 10 minutes.
    """

    endpoint: str | None = None
    token: str | None = None
    backoff_seconds: float = DEFAULT_AZURE_BACKOFF_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ArmConnection:
        endpoint = environ.get(ARM_ENDPOINT_ENV) or None
        token = environ.get(ARM_TOKEN_ENV) or None
        if (endpoint is None) != (token is None):
            raise ConfigError(f"{ARM_ENDPOINT_ENV} and {ARM_TOKEN_ENV} go together (a fake ARM for tests)")
        if endpoint is not None and not is_loopback_url(endpoint):
            raise ConfigError(
                f"{ARM_ENDPOINT_ENV} must be a loopback URL such as http://127.0.0.1:PORT (a fake ARM for "
                f"tests), not {endpoint!r}"
            )
        raw = environ.get(AZURE_BACKOFF_ENV) or str(DEFAULT_AZURE_BACKOFF_SECONDS)
        try:
            backoff = float(raw)
        except ValueError:
            backoff = 0.0
        if not backoff > 0:
            raise ConfigError(f"{AZURE_BACKOFF_ENV} must be a positive number of seconds, not {raw!r}")
        return cls(endpoint, token, backoff)


def is_loopback_url(url: str) -> bool:
    """True when `url` points at this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
