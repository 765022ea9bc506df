"""Everything `kubectl apply` needs to run the controller: the Workspace CRD, a namespace, least-privilege
RBAC and the controller Deployment. `kairay manifests` prints them; deploy/kairay.yaml is that output.

The RBAC grants only what the controller does:
- Workspaces: watch them, patch metadata (kopf's finalizer and annotations) and the status subresource;
  `update` on workspaces/finalizers lets it set `blockOwnerDeletion` on the children's owner references.
- RayServices and RayJobs: watch, create, patch, delete (it owns them). No RayClusters: KubeRay's job.
- Services: get, create, patch, delete its one `<workspace>` Service per inference Workspace.
- ConfigMaps: get the ones a Workspace names (re-read on every resync, so no watch is needed).
- Nodes: read, for the node provisioners' readiness checks.
- Events: create and patch (kopf aggregates repeated events by patching them).
- CustomResourceDefinitions: read, so kopf notices CRDs (KubeRay's) installed after it started.
- No Secrets at all: the controller only writes Secret names into pod specs, never reads a value.
- No leases: kopf runs standalone, one replica.
"""

from __future__ import annotations

from typing import Any, Literal

from controller.settings import DEFAULT_RUNTIME_IMAGE, AksTarget
from kairay.api.crds import load_crd

CONTROLLER_IMAGE = "ghcr.io/kairay/kairay-controller:0.1.0"
NAME = "kairay-controller"
HEALTH_PORT = 8080
# The non-root user of Dockerfile.controller.
CONTROLLER_UID = 10001
READ = ["get", "list", "watch"]
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "kairay"}


def manifests(
    image: str | None = None,
    namespace: str = "kairay-system",
    *,
    runtime_image: str | None = None,
    node_provisioner: Literal["byo", "aks"] = "byo",
    aks: AksTarget | None = None,
) -> list[dict[str, Any]]:
    """The objects in `kubectl apply` order: CRD, Namespace, ServiceAccount, ClusterRole,
    ClusterRoleBinding, Deployment."""
    return [
        load_crd(),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": dict(LABELS)}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": dict(LABELS)},
        },
        cluster_role(),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": dict(LABELS)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        deployment(
            image or CONTROLLER_IMAGE,
            namespace,
            runtime_image=runtime_image or DEFAULT_RUNTIME_IMAGE,
            node_provisioner=node_provisioner,
            aks=aks,
        ),
    ]


def cluster_role() -> dict[str, Any]:
    def rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
        # Copies: a list shared between rules would come out as a YAML anchor.
        return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}

    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": dict(LABELS)},
        "rules": [
            rule(["kaito.sh"], ["workspaces"], [*READ, "patch"]),
            rule(["kaito.sh"], ["workspaces/status"], ["get", "patch"]),
            rule(["kaito.sh"], ["workspaces/finalizers"], ["update"]),
            rule(["ray.io"], ["rayservices", "rayjobs"], [*READ, "create", "patch", "delete"]),
            # list + watch: the controller watches the Services it owns (kopf.on.event).
            rule([""], ["services"], [*READ, "create", "patch", "delete"]),
            # The Workspace's own /health (adapter states), read through the API server's service proxy.
            rule([""], ["services/proxy"], ["get"]),
            rule([""], ["configmaps"], ["get"]),
            rule([""], ["nodes"], READ),
            rule(["", "events.k8s.io"], ["events"], ["create", "patch"]),
            rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], READ),
            # Leader election among replicas (`controller.leader`).
            rule(["coordination.k8s.io"], ["leases"], ["get", "create", "update"]),
        ],
    }


def deployment(
    image: str,
    namespace: str,
    *,
    runtime_image: str,
    node_provisioner: Literal["byo", "aks"],
    aks: AksTarget | None,
) -> dict[str, Any]:
    env = [
        # The leader-election Lease lives in the controller's own namespace.
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "KAIRAY_RUNTIME_IMAGE", "value": runtime_image},
        {"name": "KAIRAY_NODE_PROVISIONER", "value": node_provisioner},
    ]
    if aks is not None:
        env += [
            {"name": "AZURE_SUBSCRIPTION_ID", "value": aks.subscription_id},
            {"name": "AZURE_RESOURCE_GROUP", "value": aks.resource_group},
            {"name": "AZURE_CLUSTER_NAME", "value": aks.cluster_name},
        ]
    pod_labels = dict(LABELS)
    if node_provisioner == "aks":
        # Azure Workload Identity injects the federated token DefaultAzureCredential uses.
        pod_labels["azure.workload.identity/use"] = "true"
    container = {
        "name": "controller",
        "image": image,
        "args": ["controller", "--liveness", f"http://0.0.0.0:{HEALTH_PORT}/healthz"],
        "env": env,
        "ports": [{"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "health"},
            "initialDelaySeconds": 15,
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {
            "replicas": 1,
            # kopf runs standalone: Recreate guarantees the old controller is gone before the new one starts.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": CONTROLLER_UID,
                        "runAsGroup": CONTROLLER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    # The root filesystem is read-only; Python and the kubernetes client write temp files.
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
