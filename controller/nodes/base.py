"""The node-provisioning contract shared by the AKS and BYO provisioners, plus the pure pool plan.

The controller never waits on Azure or on nodes: `ensure` looks at the current state, starts whatever
is missing, and returns a `NodeReport` saying how far along things are and when to look again.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from kubernetes.client import V1Node
from kubernetes.client.exceptions import ApiException

if TYPE_CHECKING:
    from azure.mgmt.containerservice import models as aks

# Kaito labels the nodes it provisions with the owning Workspace; kairay keeps the same keys so that
# tools written for Kaito find kairay's nodes too.
WORKSPACE_LABEL = "kaito.sh/workspace"
WORKSPACE_NAMESPACE_LABEL = "kaito.sh/workspacenamespace"

# The taint keeps ordinary pods off expensive GPU nodes; the RayService pods tolerate exactly this one.
GPU_TAINT_KEY = "sku"
GPU_TAINT_VALUE = "gpu"
GPU_TAINT_EFFECT = "NoSchedule"
GPU_TAINT = f"{GPU_TAINT_KEY}={GPU_TAINT_VALUE}:{GPU_TAINT_EFFECT}"

# NVIDIA GPU feature discovery labels (gpu.memory is per GPU, in MiB).
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# AKS: Linux user pool names are 1-12 lowercase alphanumerics starting with a letter.
POOL_NAME_MAX_LEN = 12
# AKS rejects managed OS disks below this size.
MIN_OS_DISK_GB = 30
# Enough of the pool name is hash that pools of different Workspaces don't collide in practice
# (8 base-36 characters is ~41 bits), the rest is a readable hint of the Workspace name.
_POOL_HASH_LEN = 8
_BASE36 = string.digits + string.ascii_lowercase


class Reason(StrEnum):
    """`ResourceReady` condition reasons a provisioner reports."""

    READY = "Ready"
    POOL_PROVISIONING = "PoolProvisioning"
    POOL_DELETING = "PoolDeleting"
    POOL_MISMATCH = "PoolMismatch"
    NODES_NOT_READY = "NodesNotReady"
    NODE_MISMATCH = "NodeMismatch"
    QUOTA_EXCEEDED = "QuotaExceeded"
    SKU_NOT_AVAILABLE = "SKUNotAvailable"
    AUTHORIZATION_FAILED = "AuthorizationFailed"
    POOL_PROVISIONING_FAILED = "PoolProvisioningFailed"
    AZURE_ERROR = "AzureError"
    KUBERNETES_ERROR = "KubernetesError"


@dataclass(frozen=True)
class LabelRequirement:
    """One `matchExpressions` entry of a Kubernetes label selector."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def to_selector(self) -> str:
        if self.operator == "In":
            return f"{self.key} in ({','.join(self.values)})"
        if self.operator == "NotIn":
            return f"{self.key} notin ({','.join(self.values)})"
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        raise ValueError(f"unsupported label selector operator {self.operator!r}")


@dataclass(frozen=True)
class NodeRequest:
    """What one Workspace needs from the node layer (plain data, built by the controller's planner)."""

    namespace: str
    name: str
    uid: str
    instance_type: str
    node_count: int
    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelRequirement, ...] = ()
    # Kaito's `resource.preferredNodes`: existing nodes to use first (BYO only).
    preferred_nodes: tuple[str, ...] = ()
    # None leaves the AKS default OS disk size.
    os_disk_gb: int | None = None
    # Memory of each GPU the plan assumed (GB = 1e9 bytes) and GPUs per node; None = not checked.
    gpu_memory_needed_gb: float | None = None
    gpus_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.node_count < 1:
            raise ValueError(f"node_count must be at least 1, got {self.node_count}")

    def label_selector(self) -> str:
        """The Workspace's labelSelector as a Kubernetes selector string."""
        return ",".join(
            [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
            + [req.to_selector() for req in self.match_expressions]
        )


@dataclass
class NodeReport:
    """The node layer's verdict for one Workspace; maps onto the `ResourceReady` condition."""

    ready: bool
    reason: str
    message: str
    worker_nodes: list[str] = field(default_factory=list)
    target_node_count: int = 0

    @classmethod
    def of(
        cls,
        req: NodeRequest,
        ready: bool,
        reason: str,
        message: str,
        *,
        nodes: list[str] | None = None,
    ) -> NodeReport:
        """The verdict on `req`, as every provisioner words it."""
        return cls(
            ready=ready,
            reason=reason,
            message=message,
            worker_nodes=nodes or [],
            target_node_count=req.node_count,
        )

    @classmethod
    def listing_failed(cls, req: NodeRequest, exc: ApiException) -> NodeReport:
        """The nodes could not be listed: nothing is known about them yet."""
        message = f"listing nodes failed: {exc.status} {exc.reason}"
        return cls.of(req, False, Reason.KUBERNETES_ERROR, message)


class NodeProvisioner(Protocol):
    async def ensure(self, req: NodeRequest) -> NodeReport:
        """Start or check the Workspace's nodes without waiting for long-running work; idempotent."""
        ...

    async def release(self, req: NodeRequest) -> bool:
        """Start removing what `ensure` created; True once it is gone."""
        ...

    async def close(self) -> None:
        """Release clients and credentials."""
        ...


def _base36(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    for _ in range(length):
        number, rem = divmod(number, 36)
        digits.append(_BASE36[rem])
    return "".join(digits)


def pool_name(namespace: str, name: str) -> str:
    """Deterministic AKS agent pool name for a Workspace: a letter-led hint of the name plus a hash."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    hint = "".join(c for c in name.lower() if c in _BASE36).lstrip(string.digits)
    hint = (hint or "ws")[: POOL_NAME_MAX_LEN - _POOL_HASH_LEN]
    return hint + _base36(digest, POOL_NAME_MAX_LEN - len(hint))


def pool_node_labels(req: NodeRequest) -> dict[str, str]:
    """Labels every node of the Workspace's pool carries: enough to satisfy its labelSelector."""
    labels: dict[str, str] = {}
    for expr in req.match_expressions:
        # NotIn / DoesNotExist hold for a node without the label; In and Exists need one.
        if expr.operator == "In" and expr.values:
            labels[expr.key] = expr.values[0]
        elif expr.operator == "Exists":
            labels[expr.key] = "true"
    labels.update(req.match_labels)
    labels[WORKSPACE_LABEL] = req.name
    labels[WORKSPACE_NAMESPACE_LABEL] = req.namespace
    return labels


def desired_agent_pool(req: NodeRequest) -> aks.AgentPool:
    """The agent pool a Workspace asks AKS for (a mapping in ARM wire format)."""
    # Imported here: the Azure SDK is large and only the aks provisioner needs it.
    from azure.mgmt.containerservice import models as aks

    props = aks.AgentPoolManagedClusterAgentPoolProfileProperties(
        vm_size=req.instance_type,
        count=req.node_count,
        mode="User",
        os_type="Linux",
        type_properties_type="VirtualMachineScaleSets",
        enable_auto_scaling=False,
        node_labels=pool_node_labels(req),
        node_taints=[GPU_TAINT],
        # Azure tag names may not contain '/', hence these keys rather than the node label keys.
        tags={"kairay-workspace-namespace": req.namespace, "kairay-workspace-name": req.name},
    )
    if req.os_disk_gb is not None:
        props.os_disk_size_gb = max(req.os_disk_gb, MIN_OS_DISK_GB)
    return aks.AgentPool(properties=props)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff: `base` after the first failure, doubling up to `cap`."""
    return float(min(cap, base * 2 ** max(attempt - 1, 0)))


def node_name(node: V1Node) -> str:
    return (node.metadata.name if node.metadata is not None else None) or ""


def node_labels(node: V1Node) -> dict[str, str]:
    return (node.metadata.labels if node.metadata is not None else None) or {}


def node_is_ready(node: V1Node) -> bool:
    """A node that can take pods: Ready=True, schedulable and not being deleted."""
    if node.metadata is not None and node.metadata.deletion_timestamp is not None:
        return False
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status is not None else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)
