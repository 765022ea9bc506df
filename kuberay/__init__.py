"""KubeRay manifests (pure builders), status readers and a thin client for ray.io/v1 objects."""

from kuberay.client import (
    RAYJOBS,
    RAYSERVICES,
    SPEC_HASH_ANNOTATION,
    ApplyResult,
    KubeRayClient,
    merge_patch_diff,
    spec_hash,
)
from kuberay.cluster import (
    API_VERSION,
    CLIENT_PORT,
    DASHBOARD_PORT,
    DEFAULT_RAY_VERSION,
    GCS_PORT,
    GPU_RESOURCE,
    GROUP,
    SERVE_PORT,
    VERSION,
    RayClusterPlan,
    build_cluster_spec,
    default_gpu_tolerations,
)
from kuberay.rayjob import SUBMISSION_MODES, build_rayjob
from kuberay.rayservice import UPGRADE_STRATEGIES, build_rayservice, serve_config_yaml
from kuberay.status import JobProgress, ServiceHealth, rayjob_progress, rayservice_health

__all__ = [
    "API_VERSION",
    "CLIENT_PORT",
    "DASHBOARD_PORT",
    "DEFAULT_RAY_VERSION",
    "GCS_PORT",
    "GPU_RESOURCE",
    "GROUP",
    "RAYJOBS",
    "RAYSERVICES",
    "SERVE_PORT",
    "SPEC_HASH_ANNOTATION",
    "SUBMISSION_MODES",
    "UPGRADE_STRATEGIES",
    "VERSION",
    "ApplyResult",
    "JobProgress",
    "KubeRayClient",
    "RayClusterPlan",
    "ServiceHealth",
    "build_cluster_spec",
    "build_rayjob",
    "build_rayservice",
    "default_gpu_tolerations",
    "merge_patch_diff",
    "rayjob_progress",
    "rayservice_health",
    "serve_config_yaml",
    "spec_hash",
]
