"""Start the controller: credentials, node provisioner, logging, then kopf until a signal stops it.

kopf runs standalone (no peering objects): the controller Deployment runs one replica with the
Recreate strategy, so two controllers never act on the same Workspace.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal

import kopf
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration, CoreV1Api

from controller.handlers import ControllerOptions, ProvisionerFactory, build_registry
from controller.nodes.base import NodeProvisioner
from controller.nodes.byo import ByoProvisioner
from controller.settings import Settings

LogLevel = Literal["DEBUG", "INFO", "WARNING"]


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


def provisioner_factory(
    settings: Settings, aks: AksTarget | None, polling_seconds: float
) -> ProvisionerFactory:
    if settings.node_provisioner == "aks":
        if aks is None:
            raise ConfigError(
                "--node-provisioner=aks needs --subscription-id, --resource-group and --cluster-name "
                "(or AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_CLUSTER_NAME)"
            )
        target = aks

        def make_aks(api: ApiClient) -> NodeProvisioner:
            # Imported here: the Azure SDK is only needed with this provisioner.
            from controller.nodes.aks import AksProvisioner

            return AksProvisioner(
                target.subscription_id,
                target.resource_group,
                target.cluster_name,
                core_v1_api=CoreV1Api(api),
                polling_interval=polling_seconds,
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
) -> None:
    """Run the controller until SIGINT/SIGTERM. `namespace=None` watches every namespace."""
    if resync_seconds <= 0:
        raise ConfigError(f"--resync-seconds must be positive, not {resync_seconds}")
    make_provisioner = provisioner_factory(settings, aks, resync_seconds)
    # Fail at start, not at the first login, when there are no credentials at all.
    try:
        load_configuration(kubeconfig)
    except (kube_config.ConfigException, OSError) as exc:
        raise ConfigError(f"no Kubernetes credentials: {exc}") from None
    kopf.configure(debug=log_level == "DEBUG", quiet=log_level == "WARNING", log_prefix=True)
    logging.getLogger(__name__).info(
        "kairay controller: %s, node provisioner %s, runtime image %s",
        f"namespace {namespace}" if namespace else "all namespaces",
        settings.node_provisioner,
        settings.runtime_image,
    )
    registry = build_registry(
        ControllerOptions(settings=settings, resync_seconds=resync_seconds),
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
