"""`kairay manifests`: the CRD, least-privilege RBAC and the controller Deployment; deploy/kairay.yaml
is exactly its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.manifests import HEALTH_PORT, manifests
from controller.settings import AksTarget
from kairay.api.crds import load_crd
from kairay.cli import main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kairay.yaml"


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents}


def test_deploy_yaml_is_the_output_of_kairay_manifests(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZURE_CLUSTER_NAME"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["manifests"]) == 0
    printed = capsys.readouterr().out
    assert DEPLOY.read_text() == printed, (
        "regenerate with: python -m kairay.cli manifests > deploy/kairay.yaml"
    )
    assert list(yaml.safe_load_all(printed)) == manifests()


def test_objects_in_apply_order() -> None:
    documents = manifests(namespace="ops")
    assert [d["kind"] for d in documents] == [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ]
    assert documents[0] == load_crd()
    kinds = by_kind(documents)
    assert kinds["Namespace"]["metadata"]["name"] == "ops"
    subject = kinds["ClusterRoleBinding"]["subjects"][0]
    assert subject == {
        "kind": "ServiceAccount",
        "name": kinds["ServiceAccount"]["metadata"]["name"],
        "namespace": "ops",
    }
    assert kinds["ClusterRoleBinding"]["roleRef"]["name"] == kinds["ClusterRole"]["metadata"]["name"]


def test_rbac_is_least_privilege() -> None:
    rules = by_kind(manifests())["ClusterRole"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in entry for entry in granted)
    assert not any(resource == "secrets" for _, resource, _ in granted)
    assert not any(resource in ("pods", "rayclusters") for _, resource, _ in granted)
    # Leader election: its one Lease, nothing more (no delete, list or watch).
    assert {(g, v) for g, resource, v in granted if resource == "leases"} == {
        ("coordination.k8s.io", verb) for verb in ("get", "create", "update")
    }
    assert {
        ("kaito.sh", "workspaces/status", "patch"),
        ("kaito.sh", "workspaces/finalizers", "update"),
        ("ray.io", "rayservices", "create"),
        ("ray.io", "rayjobs", "delete"),
        ("", "services", "patch"),
        ("", "configmaps", "get"),
        ("", "nodes", "list"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    } <= granted
    assert {verb for group, resource, verb in granted if resource == "configmaps"} == {"get"}


def test_the_deployment_runs_one_non_root_controller_with_a_liveness_probe() -> None:
    deployment = by_kind(manifests(image="registry.test/controller:2", runtime_image="registry.test/rt:2"))[
        "Deployment"
    ]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "registry.test/controller:2"
    assert container["args"][0] == "controller"
    assert f"http://0.0.0.0:{HEALTH_PORT}/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"][0]["containerPort"] == HEALTH_PORT
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in container["env"]}
    assert env == {
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "KAIRAY_RUNTIME_IMAGE": "registry.test/rt:2",
        "KAIRAY_NODE_PROVISIONER": "byo",
    }


def test_aks_settings_reach_the_controller_environment() -> None:
    target = AksTarget("sub-1", "rg-1", "aks-1")
    deployment = by_kind(manifests(node_provisioner="aks", aks=target))["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KAIRAY_NODE_PROVISIONER"] == "aks"
    assert (env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"], env["AZURE_CLUSTER_NAME"]) == (
        "sub-1",
        "rg-1",
        "aks-1",
    )
