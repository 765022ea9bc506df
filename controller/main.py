"""Start the controller: credentials, node provisioner, logging, then kopf until a signal stops it.

kopf runs standalone (no peering objects): the controller Deployment runs one replica with the
Recreate strategy, so two controllers never act on the same Workspace.

The `aks` provisioner talks to public Azure Resource Manager over https with
`DefaultAzureCredential`. `ArmConnection` describes the environment variables that point it at a
fake ARM on this machine instead (tests only) and that tune its backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import kopf
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration, CoreV1Api

from controller.leader import LEASE_SECONDS, lease_namespace
from controller.nodes.base import NodeProvisioner
from controller.nodes.byo import ByoProvisioner
from controller.settings import ControllerOptions, Settings
from controller.wiring import ProvisionerFactory, build_registry

LogLevel = Literal["DEBUG", "INFO", "WARNING"]

ARM_ENDPOINT_ENV = "KAIRAY_ARM_ENDPOINT"
ARM_TOKEN_ENV = "KAIRAY_ARM_TOKEN"
AZURE_BACKOFF_ENV = "KAIRAY_AZURE_BACKOFF_SECONDS"
DEFAULT_AZURE_BACKOFF_SECONDS = 15.0


class ConfigError(ValueError):
    """The controller cannot start with these flags; the message says which one to fix."""


@dataclass(frozen=True)
class AksTarget:
    """The AKS cluster whose agent pools the `aks` node provisioner manages."""

    subscription_id: str
    resource_group: str
    cluster_name: str


def aks_target(
    subscription_id: str | None, resource_group: str | None, cluster_name: str | None
) -> AksTarget | None:
    """The AKS cluster named by flags, None when none of them is set; ConfigError when only some are."""
    values = {
        "--subscription-id": subscription_id,
        "--resource-group": resource_group,
        "--cluster-name": cluster_name,
    }
    missing = [flag for flag, value in values.items() if not value]
    if len(missing) == len(values):
        return None
    if missing:
        raise ConfigError(f"the AKS cluster needs {', '.join(missing)} too")
    return AksTarget(subscription_id or "", resource_group or "", cluster_name or "")


def settings_from_flags(runtime_image: str | None, node_provisioner: str | None) -> Settings:
    """The KAIRAY_* environment with the flags that were given on top."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if runtime_image:
        settings = dataclasses.replace(settings, runtime_image=runtime_image)
    if node_provisioner:
        if node_provisioner not in ("aks", "byo"):
            raise ConfigError(f"--node-provisioner must be aks or byo, not {node_provisioner!r}")
        settings = dataclasses.replace(settings, node_provisioner=node_provisioner)  # type: ignore[arg-type]
    return settings


def load_configuration(kubeconfig: str | None) -> Configuration:
    """The API server and credentials: `kubeconfig` when given, else the in-cluster service account,
    else the default kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    configuration = Configuration()
    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        kube_config.load_kube_config(client_configuration=configuration)
    return configuration


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
        # Imported here: the Azure SDK is only needed with the aks provisioner.
        from controller.nodes.aks import is_loopback_url

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


def provisioner_factory(
    settings: Settings,
    aks: AksTarget | None,
    polling_seconds: float,
    environ: Mapping[str, str] | None = None,
) -> ProvisionerFactory:
    """The node provisioner the settings ask for; `environ` (default `os.environ`) holds the
    `ArmConnection` variables of the aks provisioner."""
    if settings.node_provisioner == "aks":
        if aks is None:
            raise ConfigError(
                "--node-provisioner=aks needs --subscription-id, --resource-group and --cluster-name "
                "(or AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_CLUSTER_NAME)"
            )
        target = aks
        arm = ArmConnection.from_env(os.environ if environ is None else environ)

        def make_aks(api: ApiClient) -> NodeProvisioner:
            # Imported here: the Azure SDK is only needed with this provisioner.
            from controller.nodes.aks import (
                ARM_SCOPE,
                AksProvisioner,
                LoopbackAuthenticationPolicy,
                StaticTokenCredential,
            )

            # None: AksProvisioner's DefaultAzureCredential and the SDK's https-only defaults.
            credential: StaticTokenCredential | None = None
            client_kwargs: dict[str, Any] = {}
            if arm.endpoint is not None and arm.token is not None:
                credential = StaticTokenCredential(arm.token)
                client_kwargs = {
                    "base_url": arm.endpoint,
                    "authentication_policy": LoopbackAuthenticationPolicy(credential, ARM_SCOPE),
                }
            return AksProvisioner(
                target.subscription_id,
                target.resource_group,
                target.cluster_name,
                credential,
                core_v1_api=CoreV1Api(api),
                polling_interval=polling_seconds,
                backoff_base_seconds=arm.backoff_seconds,
                **client_kwargs,
            )

        return make_aks

    def make_byo(api: ApiClient) -> NodeProvisioner:
        return ByoProvisioner(CoreV1Api(api), polling_interval=polling_seconds)

    return make_byo


def run(
    kubeconfig: str | None,
    namespace: str | None,
    settings: Settings,
    *,
    aks: AksTarget | None = None,
    resync_seconds: float = 30.0,
    liveness_endpoint: str | None = None,
    log_level: LogLevel = "INFO",
    lease_seconds: float = LEASE_SECONDS,
) -> None:
    """Run the controller until SIGINT/SIGTERM. `namespace=None` watches every namespace."""
    if resync_seconds <= 0:
        raise ConfigError(f"--resync-seconds must be positive, not {resync_seconds}")
    if lease_seconds < 1:
        raise ConfigError(f"--lease-seconds must be at least 1, not {lease_seconds}")
    make_provisioner = provisioner_factory(settings, aks, resync_seconds)
    # Fail at start, not at the first login, when there are no credentials at all.
    try:
        load_configuration(kubeconfig)
    except (kube_config.ConfigException, OSError) as exc:
        raise ConfigError(f"no Kubernetes credentials: {exc}") from None
    kopf.configure(debug=log_level == "DEBUG", quiet=log_level == "WARNING", log_prefix=True)
    if log_level == "INFO":
        # Every handler here is an event handler, and kopf logs "Handler ... succeeded" at INFO for
        # each watch event: several lines per Workspace change, and a good part of the CPU at scale.
        # Failures are warnings and stay; DEBUG shows everything.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger(__name__).info(
        "kairay controller: %s, node provisioner %s, runtime image %s",
        f"namespace {namespace}" if namespace else "all namespaces",
        settings.node_provisioner,
        settings.runtime_image,
    )
    registry = build_registry(
        ControllerOptions(
            settings=settings,
            resync_seconds=resync_seconds,
            lease_namespace=lease_namespace(os.environ),
            lease_seconds=lease_seconds,
        ),
        lambda: load_configuration(kubeconfig),
        make_provisioner,
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else (),
        liveness_endpoint=liveness_endpoint,
    )
