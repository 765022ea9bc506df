"""Which docker config an adapter image is pulled with: a mounted Secret in a cluster, the user's own
docker config under `kairay up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_apps.adapters import docker_config_for
from serve_apps.config import AdapterConfig

ADAPTER = AdapterConfig(name="a", image="registry.test/adapters/a:1", image_pull_secrets=("pull",))


def test_local_pulls_use_the_docker_config_named_by_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_for(ADAPTER, None) is None  # no config.json there: anonymous
    (tmp_path / "config.json").write_text('{"auths": {}}')
    assert docker_config_for(ADAPTER, None) == tmp_path / "config.json"


def test_cluster_pulls_use_only_the_mounted_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"auths": {}}')
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    secrets = tmp_path / "pull-secrets"
    # The node's own docker config is never a fallback for a Workspace's pulls.
    assert docker_config_for(ADAPTER, str(secrets)) is None
    (secrets / "pull").mkdir(parents=True)
    (secrets / "pull" / ".dockerconfigjson").write_text('{"auths": {}}')
    assert docker_config_for(ADAPTER, str(secrets)) == secrets / "pull" / ".dockerconfigjson"
