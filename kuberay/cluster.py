"""`RayClusterPlan`: everything that describes one Ray cluster, and the KubeRay `RayClusterSpec` it maps to.

The plan is pure data chosen by the controller (image, sizes, scheduling, mounts). Both the RayService
(`rayClusterConfig`) and the RayJob (`rayClusterSpec`) embed the same cluster spec, so it is built once here.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

GROUP = "ray.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

# Ray's default ports. KubeRay reads the named container ports of the head to build `<name>-head-svc`.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
SERVE_PORT = 8000

# The Ray version the runtime image ships (pyproject pins ray[serve]==2.60.0). KubeRay uses it to pick the
# submitter command of a RayJob and the autoscaler flavour.
DEFAULT_RAY_VERSION = "2.60.0"

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"

# KubeRay rejects RayService/RayJob names that are not DNS-1035 labels or are longer than 47 characters
# (53 for the generated RayCluster minus the "-xxxxx" suffix it appends).
MAX_NAME_LENGTH = 47
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def default_gpu_tolerations() -> list[dict[str, Any]]:
    """Tolerations for AKS GPU pools: Kaito taints its pools `sku=gpu:NoSchedule` and the NVIDIA device
    plugin / GPU operator setups taint nodes with `nvidia.com/gpu`."""
    return [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    ]


@dataclass(frozen=True)
class RayClusterPlan:
    """What one Ray cluster looks like. Quantities are Kubernetes quantity strings ("4", "500m", "16Gi").

    One head (no Ray work scheduled on it) and one worker group. `min_replicas`/`max_replicas` default to
    `replicas` and only matter when `enable_autoscaling` is on.
    """

    name: str
    namespace: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner_references: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    ray_version: str = DEFAULT_RAY_VERSION
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    head_node_selector: dict[str, str] = field(default_factory=dict)
    worker_group_name: str = "workers"
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    gpus_per_worker: int = 0
    cpu_per_worker: str | None = None
    memory_per_worker: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=default_gpu_tolerations)
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    enable_autoscaling: bool = False
    autoscaler_idle_timeout_seconds: int = 60

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid RayClusterPlan: " + "; ".join(problems))

    @property
    def effective_min_replicas(self) -> int:
        return self.replicas if self.min_replicas is None else self.min_replicas

    @property
    def effective_max_replicas(self) -> int:
        return self.replicas if self.max_replicas is None else self.max_replicas

    def problems(self) -> list[str]:
        """Everything KubeRay (or the API server) would reject later, found while the data is still ours."""
        found: list[str] = []
        if len(self.name) > MAX_NAME_LENGTH or not _DNS_1035.match(self.name):
            found.append(
                f"name {self.name!r} must be a DNS-1035 label (lowercase letters, digits, '-', starting "
                f"with a letter) of at most {MAX_NAME_LENGTH} characters"
            )
        if not self.namespace:
            found.append("namespace must not be empty")
        if not self.image:
            found.append("image must not be empty")
        if not _DNS_1123_LABEL.match(self.worker_group_name):
            found.append(f"worker_group_name {self.worker_group_name!r} must be a DNS-1123 label")
        low, high = self.effective_min_replicas, self.effective_max_replicas
        if not 0 <= low <= self.replicas <= high:
            found.append(
                f"replicas must satisfy 0 <= min_replicas <= replicas <= max_replicas, "
                f"got {low} <= {self.replicas} <= {high}"
            )
        if self.gpus_per_worker < 0:
            found.append(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.autoscaler_idle_timeout_seconds < 0:
            found.append("autoscaler_idle_timeout_seconds must be >= 0")
        for index, var in enumerate(self.env):
            if not var.get("name"):
                found.append(f"env[{index}] has no name")
            elif ("value" in var) == ("valueFrom" in var):
                found.append(f"env[{index}] ({var['name']}) needs exactly one of value / valueFrom")
        volume_names = {volume.get("name") for volume in self.volumes}
        if SHM_VOLUME in volume_names:
            found.append(f"volume name {SHM_VOLUME!r} is reserved for the workers' /dev/shm")
        for mount in self.volume_mounts:
            if mount.get("name") not in volume_names:
                found.append(f"volume mount {mount.get('name')!r} has no matching volume")
        return found


def canonical_yaml(data: dict[str, Any]) -> str:
    """YAML with sorted keys and no line wrapping: equal data always gives the same string, so a change
    shows up in a manifest only when the content changed."""
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=1_000_000)


def object_metadata(plan: RayClusterPlan) -> dict[str, Any]:
    """Metadata of the RayService/RayJob itself."""
    metadata: dict[str, Any] = {"name": plan.name, "namespace": plan.namespace}
    if plan.labels:
        metadata["labels"] = dict(sorted(plan.labels.items()))
    if plan.annotations:
        metadata["annotations"] = dict(sorted(plan.annotations.items()))
    if plan.owner_references:
        metadata["ownerReferences"] = copy.deepcopy(plan.owner_references)
    return metadata


def build_cluster_spec(plan: RayClusterPlan) -> dict[str, Any]:
    """The KubeRay `RayClusterSpec` (a RayService's `rayClusterConfig`, a RayJob's `rayClusterSpec`)."""
    spec: dict[str, Any] = {
        "rayVersion": plan.ray_version,
        "enableInTreeAutoscaling": plan.enable_autoscaling,
        "headGroupSpec": _head_group(plan),
        "workerGroupSpecs": [_worker_group(plan)],
    }
    if plan.enable_autoscaling:
        spec["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": plan.autoscaler_idle_timeout_seconds,
        }
    return spec


def _head_group(plan: RayClusterPlan) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": HEAD_CONTAINER,
        "image": plan.image,
        "ports": [
            {"name": "gcs-server", "containerPort": GCS_PORT, "protocol": "TCP"},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(plan.head_cpu, plan.head_memory, 0),
    }
    _add_env_and_mounts(container, plan, extra_mounts=[])
    return {
        # The head only coordinates (GCS, dashboard, Serve controller and proxy): with zero CPUs and GPUs
        # advertised, Ray never places a replica or a training worker on it.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
        "template": _pod_template(plan, container, plan.head_node_selector, extra_volumes=[]),
    }


def _worker_group(plan: RayClusterPlan) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": plan.image,
        # Serve runs an HTTP proxy on every node; KubeRay's serve service targets this named port.
        "ports": [{"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"}],
        "resources": _resources(plan.cpu_per_worker, plan.memory_per_worker, plan.gpus_per_worker),
    }
    # vLLM's tensor parallel workers and Ray's object store exchange data through /dev/shm, whose
    # container default (64 MiB) is far too small.
    shm_mount = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}
    shm_volume = {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}
    _add_env_and_mounts(container, plan, extra_mounts=[shm_mount])
    return {
        "groupName": plan.worker_group_name,
        "replicas": plan.replicas,
        "minReplicas": plan.effective_min_replicas,
        "maxReplicas": plan.effective_max_replicas,
        # KubeRay infers num-cpus/num-gpus from the container limits, so no overrides are needed.
        "rayStartParams": {},
        "template": _pod_template(plan, container, plan.node_selector, extra_volumes=[shm_volume]),
    }


def _resources(cpu: str | None, memory: str | None, gpus: int) -> dict[str, Any]:
    # Requests equal limits: KubeRay advertises the limits to Ray, and Guaranteed QoS keeps the
    # model-serving pods from being evicted first under node pressure.
    amounts: dict[str, str] = {}
    if cpu is not None:
        amounts["cpu"] = str(cpu)
    if memory is not None:
        amounts["memory"] = str(memory)
    if gpus > 0:
        amounts[GPU_RESOURCE] = str(gpus)
    if not amounts:
        return {}
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _add_env_and_mounts(
    container: dict[str, Any], plan: RayClusterPlan, extra_mounts: list[dict[str, Any]]
) -> None:
    if plan.env:
        container["env"] = copy.deepcopy(plan.env)
    mounts = copy.deepcopy(plan.volume_mounts) + extra_mounts
    if mounts:
        container["volumeMounts"] = mounts


def _pod_template(
    plan: RayClusterPlan,
    container: dict[str, Any],
    node_selector: dict[str, str],
    extra_volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [container]}
    if plan.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in plan.image_pull_secrets]
    if node_selector:
        pod_spec["nodeSelector"] = dict(sorted(node_selector.items()))
    if plan.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(plan.tolerations)
    volumes = copy.deepcopy(plan.volumes) + extra_volumes
    if volumes:
        pod_spec["volumes"] = volumes
    template: dict[str, Any] = {}
    if plan.labels:
        template["metadata"] = {"labels": dict(sorted(plan.labels.items()))}
    template["spec"] = pod_spec
    return template
