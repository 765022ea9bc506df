"""KubeRayClient against the fake API server with KubeRay's released CRD schemas installed, so that the
server prunes and defaults fields like a real one (so "unchanged" cannot be a plain equality) and applies
RFC 7386 merge patches and resourceVersion preconditions itself."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import install_crds
from kuberay import (
    RAYJOBS,
    RAYSERVICES,
    SPEC_HASH_ANNOTATION,
    KubeRayClient,
    build_rayservice,
    merge_patch_diff,
)
from tests.kuberay.conftest import gpu_plan

SERVE: dict[str, Any] = {
    "applications": [{"name": "llm", "import_path": "serve_apps.app:build_app", "args": {"adapters": []}}]
}
NS = "kaito"


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


class Cluster:
    """The fake API server, seen through the raw client (for out-of-band edits) and counted by verb."""

    def __init__(self, server: FakeApiServer, api: client.ApiClient) -> None:
        self.server = server
        self.custom = client.CustomObjectsApi(api)

    def stored(self, name: str = "workspace-phi-3") -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object("ray.io", "v1", NS, RAYSERVICES, name)
        return cast(dict[str, Any], found)

    def edit(self, patch: dict[str, Any], name: str = "workspace-phi-3") -> None:
        """Someone else's write (kubectl edit, another controller)."""
        self.custom.patch_namespaced_custom_object(
            "ray.io", "v1", NS, RAYSERVICES, name, patch, _content_type="application/merge-patch+json"
        )

    def patches(self) -> int:
        return self.server.request_counts[("patch", RAYSERVICES)]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with FakeApiServer() as server, server.api_client() as api:
        install_crds(api, released_schemas=True)
        client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
        yield Cluster(server, api)


@pytest.fixture
def kuberay(cluster: Cluster) -> KubeRayClient:
    return KubeRayClient(cluster.custom.api_client)


def test_get_returns_none_on_404_and_delete_reports_absence(kuberay: KubeRayClient) -> None:
    assert kuberay.get(RAYSERVICES, NS, "nope") is None
    assert kuberay.delete(RAYJOBS, NS, "nope") is False


def test_apply_creates_then_is_idempotent_despite_server_defaults(
    kuberay: KubeRayClient, cluster: Cluster
) -> None:
    desired = build_rayservice(gpu_plan(), SERVE)
    created = kuberay.apply_rayservice(desired)
    assert created.action == "created"
    assert SPEC_HASH_ANNOTATION in created.object["metadata"]["annotations"]
    # Defaulted by the server from KubeRay's CRD: the desired object does not say it.
    assert "numOfHosts" not in desired["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert created.object["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] == 1
    again = kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    assert again.action == "unchanged"
    assert cluster.patches() == 0
    assert "annotations" not in desired["metadata"]  # the caller's dict is not modified


def test_serve_config_change_patches_only_serve_config(kuberay: KubeRayClient, cluster: Cluster) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    before = cluster.stored()
    with_adapter = copy.deepcopy(SERVE)
    with_adapter["applications"][0]["args"]["adapters"] = [{"name": "a"}]
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(), with_adapter))
    assert result.action == "patched"
    assert result.object["spec"]["serveConfigV2"] != before["spec"]["serveConfigV2"]
    assert result.object["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert kuberay.apply_rayservice(build_rayservice(gpu_plan(), with_adapter)).action == "unchanged"


def test_removed_fields_are_removed(kuberay: KubeRayClient, cluster: Cluster) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(enable_autoscaling=True, max_replicas=4), SERVE))
    assert "autoscalerOptions" in cluster.stored()["spec"]["rayClusterConfig"]
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(head_node_selector={}), SERVE))
    assert result.action == "patched"
    config = result.object["spec"]["rayClusterConfig"]
    assert "autoscalerOptions" not in config
    assert config["enableInTreeAutoscaling"] is False


def test_out_of_band_edit_is_reverted(kuberay: KubeRayClient, cluster: Cluster) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    cluster.edit({"spec": {"serveConfigV2": "applications: []\n"}})
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    assert result.action == "patched"
    assert (
        result.object["spec"]["serveConfigV2"] == build_rayservice(gpu_plan(), SERVE)["spec"]["serveConfigV2"]
    )


def test_labels_set_by_others_are_kept(kuberay: KubeRayClient, cluster: Cluster) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    cluster.edit({"metadata": {"labels": {"team": "ml"}}})
    assert kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE)).action == "unchanged"
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(labels={"kaito.sh/workspace": "x"}), SERVE))
    assert result.action == "patched"
    assert result.object["metadata"]["labels"] == {"kaito.sh/workspace": "x", "team": "ml"}


def test_patch_is_guarded_by_resource_version(kuberay: KubeRayClient, cluster: Cluster) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    read = cluster.stored()
    cluster.edit({"metadata": {"labels": {"team": "ml"}}})  # a write between our read and our patch
    with pytest.raises(ApiException) as raised:
        kuberay.apply_rayservice(
            build_rayservice(gpu_plan(replicas=3, max_replicas=3), SERVE), read, read=False
        )
    assert raised.value.status == 409
    assert cluster.stored()["metadata"]["labels"]["team"] == "ml"


def test_create_patch_delete_rayjob(kuberay: KubeRayClient) -> None:
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "tune", "namespace": NS},
        "spec": {"entrypoint": "python -m tuning.job", "clusterSelector": {"ray.io/cluster": "c"}},
    }
    assert kuberay.create(RAYJOBS, body)["metadata"]["uid"]
    patched = kuberay.patch(RAYJOBS, NS, "tune", {"spec": {"suspend": True}})
    assert patched["spec"]["suspend"] is True
    assert patched["spec"]["entrypoint"] == "python -m tuning.job"
    assert kuberay.delete(RAYJOBS, NS, "tune") is True
    assert kuberay.get(RAYJOBS, NS, "tune") is None


def test_merge_patch_diff() -> None:
    current = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "gone": True}
    desired = {"a": 1, "b": {"c": 5}, "e": [1], "new": {"x": 1}}
    patch = merge_patch_diff(current, desired)
    assert patch == {"b": {"c": 5, "d": None}, "e": [1], "new": {"x": 1}, "gone": None}
    assert _merge(current, patch) == desired
    assert merge_patch_diff(desired, desired) == {}
