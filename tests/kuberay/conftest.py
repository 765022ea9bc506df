from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness import fake_kuberay
from kuberay import RayClusterPlan


@pytest.fixture
def schema_errors() -> Callable[[dict[str, Any]], list[str]]:
    return fake_kuberay.schema_errors


def gpu_plan(**overrides: Any) -> RayClusterPlan:
    """A plan like the controller makes for a 2-node Standard_NC24ads_A100_v4 workspace."""
    values: dict[str, Any] = {
        "name": "workspace-phi-3",
        "namespace": "kaito",
        "image": "registry.example/kairay-runtime:0.1.0",
        "labels": {"kaito.sh/workspace": "workspace-phi-3"},
        "owner_references": [
            {
                "apiVersion": "kaito.sh/v1beta1",
                "kind": "Workspace",
                "name": "workspace-phi-3",
                "uid": "0b6f3c1e-1111-2222-3333-444455556666",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "image_pull_secrets": ["acr-pull"],
        "replicas": 2,
        "gpus_per_worker": 1,
        "cpu_per_worker": "20",
        "memory_per_worker": "200Gi",
        "node_selector": {"apps": "phi-3"},
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        ],
        "volumes": [{"name": "adapter-pull", "secret": {"secretName": "adapter-pull-secret"}}],
        "volume_mounts": [{"name": "adapter-pull", "mountPath": "/etc/kairay/docker", "readOnly": True}],
    }
    values.update(overrides)
    return RayClusterPlan(**values)
