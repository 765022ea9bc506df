"""pytest fixtures for the fake Kubernetes API server; import them into a conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import kubernetes.config
import kubernetes.config.kube_config
import pytest

from harness.fake_apiserver import FakeApiServer


@pytest.fixture
def fake_apiserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """A started server (empty but for the default namespaces) with `KUBECONFIG` pointing at it,
    so code calling `kubernetes.config.load_kube_config()` or kopf's login finds it."""
    with FakeApiServer() as server:
        kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setenv("KUBECONFIG", kubeconfig)
        # kubernetes.config reads $KUBECONFIG once, at import time, into these constants.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        monkeypatch.setattr(kubernetes.config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        yield server


@pytest.fixture
def k8s_api_client(fake_apiserver: FakeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    """A `kubernetes` ApiClient bound to `fake_apiserver` (no global configuration touched)."""
    with fake_apiserver.api_client() as client:
        yield client
