"""Build a KubeRay `RayService` (ray.io/v1) from a `RayClusterPlan` and a Serve config."""

from __future__ import annotations

from typing import Any, Literal

from kuberay.cluster import API_VERSION, RayClusterPlan, build_cluster_spec, canonical_yaml, object_metadata

# KubeRay also has "NewClusterWithIncrementalUpgrade", which needs Gateway API options and a feature gate;
# kairay does not offer it.
UpgradeStrategy = Literal["NewCluster", "None"]
UPGRADE_STRATEGIES: tuple[UpgradeStrategy, ...] = ("NewCluster", "None")


def serve_config_yaml(serve_config: dict[str, Any]) -> str:
    """The `serveConfigV2` string: equal configs give byte-identical strings, so a RayService is only
    patched when the Serve config really changed."""
    return canonical_yaml(serve_config)


def build_rayservice(
    plan: RayClusterPlan,
    serve_config: dict[str, Any],
    *,
    upgrade_strategy: UpgradeStrategy = "NewCluster",
) -> dict[str, Any]:
    """A RayService manifest. Same inputs give an identical dict; a change to `serve_config` alone changes
    only `spec.serveConfigV2`, which KubeRay applies in place on the running cluster (no new cluster).

    `upgrade_strategy` is what KubeRay does when `rayClusterConfig` changes: `NewCluster` starts a second
    cluster and switches traffic once it serves (zero downtime, twice the GPUs for a while); `None`
    keeps the old cluster and ignores cluster changes.
    """
    if upgrade_strategy not in UPGRADE_STRATEGIES:
        raise ValueError(f"upgrade_strategy must be one of {UPGRADE_STRATEGIES}, got {upgrade_strategy!r}")
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": object_metadata(plan),
        "spec": {
            "serveConfigV2": serve_config_yaml(serve_config),
            "upgradeStrategy": {"type": upgrade_strategy},
            "rayClusterConfig": build_cluster_spec(plan),
        },
    }
