"""Pure planning of the AKS agent pool for a Workspace: the name and the body sent to ARM."""

from __future__ import annotations

import re

import pytest

from controller.nodes.base import (
    GPU_TAINT,
    MIN_OS_DISK_GB,
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
    LabelRequirement,
    NodeRequest,
    backoff_seconds,
    desired_agent_pool,
    pool_name,
    pool_node_labels,
)

AKS_LINUX_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def request(**overrides: object) -> NodeRequest:
    fields: dict[str, object] = {
        "namespace": "default",
        "name": "workspace-phi-3",
        "uid": "6f1c0d1e-0000-4000-8000-000000000001",
        "instance_type": "Standard_NC24ads_A100_v4",
        "node_count": 2,
        "match_labels": {"apps": "phi-3"},
        "os_disk_gb": 200,
    }
    fields.update(overrides)
    return NodeRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        ("default", "workspace-phi-3"),
        ("default", "a"),
        ("kube-system", "9lives"),
        ("ns", "---"),
        ("a-very-long-namespace-name-that-goes-on", "a-very-long-workspace-name-" + "x" * 200),
        ("default", "UPPER.case.Name"),
    ],
)
def test_pool_name_follows_aks_rules(namespace: str, name: str) -> None:
    pool = pool_name(namespace, name)
    assert AKS_LINUX_POOL_NAME.match(pool), pool
    assert len(pool) == 12
    assert pool_name(namespace, name) == pool


def test_pool_name_hints_at_the_workspace_and_separates_namespaces() -> None:
    assert pool_name("default", "workspace-phi-3").startswith("work")
    assert pool_name("default", "9lives").startswith("live")
    assert pool_name("default", "---").startswith("ws")
    assert pool_name("team-a", "llama") != pool_name("team-b", "llama")
    # The separator keeps "a/bc" and "ab/c" apart.
    assert pool_name("a", "bc") != pool_name("ab", "c")


def test_pool_names_do_not_collide_across_many_workspaces() -> None:
    names = {pool_name(f"ns{i % 17}", f"workspace-{i}") for i in range(5000)}
    assert len(names) == 5000


def test_agent_pool_body() -> None:
    body = desired_agent_pool(request())
    props = body["properties"]
    assert props["vmSize"] == "Standard_NC24ads_A100_v4"
    assert props["count"] == 2
    assert props["mode"] == "User"
    assert props["osType"] == "Linux"
    assert props["type"] == "VirtualMachineScaleSets"
    assert props["enableAutoScaling"] is False
    assert props["osDiskSizeGB"] == 200
    assert props["nodeTaints"] == [GPU_TAINT] == ["sku=gpu:NoSchedule"]
    assert props["nodeLabels"] == {
        "apps": "phi-3",
        WORKSPACE_LABEL: "workspace-phi-3",
        WORKSPACE_NAMESPACE_LABEL: "default",
    }
    assert props["tags"] == {
        "kairay-workspace-namespace": "default",
        "kairay-workspace-name": "workspace-phi-3",
    }
    # The SDK model reads the same data through its attributes.
    assert body.vm_size == "Standard_NC24ads_A100_v4"
    assert body.count == 2


def test_os_disk_defaults_and_floor() -> None:
    assert "osDiskSizeGB" not in desired_agent_pool(request(os_disk_gb=None))["properties"]
    assert desired_agent_pool(request(os_disk_gb=10))["properties"]["osDiskSizeGB"] == MIN_OS_DISK_GB


def test_node_labels_satisfy_the_whole_selector() -> None:
    req = request(
        match_labels={"apps": "phi-3"},
        match_expressions=(
            LabelRequirement("tier", "In", ("gpu", "gpu-large")),
            LabelRequirement("dedicated", "Exists"),
            LabelRequirement("spot", "DoesNotExist"),
            LabelRequirement("zone", "NotIn", ("z9",)),
        ),
    )
    labels = pool_node_labels(req)
    assert labels["tier"] == "gpu"
    assert labels["dedicated"] == "true"
    assert "spot" not in labels and "zone" not in labels
    assert all(labels[k] == v for k, v in req.match_labels.items())
    # The Workspace's own labels win over whatever a user put into matchLabels under the same keys.
    assert pool_node_labels(request(match_labels={WORKSPACE_LABEL: "other"}))[WORKSPACE_LABEL] == (
        "workspace-phi-3"
    )


def test_label_selector_string() -> None:
    req = request(
        match_labels={"b": "2", "a": "1"},
        match_expressions=(
            LabelRequirement("tier", "In", ("gpu", "big")),
            LabelRequirement("zone", "NotIn", ("z1",)),
            LabelRequirement("dedicated", "Exists"),
            LabelRequirement("spot", "DoesNotExist"),
        ),
    )
    assert req.label_selector() == "a=1,b=2,tier in (gpu,big),zone notin (z1),dedicated,!spot"
    with pytest.raises(ValueError, match="operator"):
        LabelRequirement("x", "Gt", ("1",)).to_selector()


def test_node_request_rejects_zero_nodes() -> None:
    with pytest.raises(ValueError, match="node_count"):
        request(node_count=0)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 10, 60) for n in range(1, 6)] == [10, 20, 40, 60, 60]
