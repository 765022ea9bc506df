"""Controller settings: the AKS cluster from flags or AZURE_* variables, the environment under flags."""

from __future__ import annotations

import pytest

from controller.settings import AksTarget, ConfigError, aks_target, settings_from_flags

ENV = {"AZURE_SUBSCRIPTION_ID": "sub", "AZURE_RESOURCE_GROUP": "rg", "AZURE_CLUSTER_NAME": "aks"}


def test_the_aks_cluster_comes_from_flags_or_else_the_environment() -> None:
    assert aks_target(None, None, None, {}) is None
    assert aks_target(None, None, None, ENV) == AksTarget("sub", "rg", "aks")
    assert aks_target("other", None, "mine", ENV) == AksTarget("other", "rg", "mine")
    with pytest.raises(ConfigError, match="the AKS cluster needs --resource-group, --cluster-name too"):
        aks_target("sub", None, None, {})


def test_flags_go_on_top_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIRAY_RUNTIME_IMAGE", "registry/runtime:1")
    monkeypatch.setenv("KAIRAY_NODE_PROVISIONER", "aks")
    settings = settings_from_flags(None, "byo")
    assert (settings.runtime_image, settings.node_provisioner) == ("registry/runtime:1", "byo")
    monkeypatch.setenv("KAIRAY_NODE_PROVISIONER", "gke")
    with pytest.raises(ConfigError, match="KAIRAY_NODE_PROVISIONER must be aks or byo, not 'gke'"):
        settings_from_flags(None, None)
