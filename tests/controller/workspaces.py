"""A Workspace manifest for the controller's unit tests."""

from __future__ import annotations

from typing import Any


def workspace(**changes: Any) -> dict[str, Any]:
    """An inference Workspace `team/ws` on two A100 nodes; `changes` merge into its top-level keys."""
    obj: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "count": 2,
            "labelSelector": {
                "matchLabels": {"apps": "ws"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["1"]}],
            },
            "preferredNodes": ["node-b"],
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }
    for key, value in changes.items():
        obj[key] = {**obj[key], **value}
    return obj
