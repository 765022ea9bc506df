"""KubeRayClient against an in-memory stand-in for CustomObjectsApi that defaults fields like the API server
does (so "unchanged" cannot be a plain equality) and applies RFC 7386 merge patches."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

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


def _default(obj: dict[str, Any]) -> None:
    for group in obj.get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", []):
        group.setdefault("numOfHosts", 1)
        group.setdefault("priority", 0)


class FakeCustomObjects:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self._version = 0

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.calls.append("get")
        found = self.objects.get((plural, namespace, name))
        if found is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(found)

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any:
        self.calls.append("create")
        key = (plural, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = "uid-1"
        _default(stored)
        self._bump(stored)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: dict[str, Any],
        _content_type: str | None = None,
    ) -> Any:
        assert _content_type == "application/merge-patch+json"
        self.calls.append("patch")
        stored = self.objects[(plural, namespace, name)]
        wanted_version = body.get("metadata", {}).get("resourceVersion")
        if wanted_version is not None and wanted_version != stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        merged = _merge(stored, body)
        _default(merged)
        self._bump(merged)
        self.objects[(plural, namespace, name)] = merged
        return copy.deepcopy(merged)

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any:
        self.calls.append("delete")
        if self.objects.pop((plural, namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")
        return {}


@pytest.fixture
def api() -> FakeCustomObjects:
    return FakeCustomObjects()


@pytest.fixture
def kuberay(api: FakeCustomObjects) -> KubeRayClient:
    kuberay_client = KubeRayClient()
    kuberay_client._api = api  # type: ignore[assignment]
    return kuberay_client


def test_get_returns_none_on_404_and_delete_reports_absence(kuberay: KubeRayClient) -> None:
    assert kuberay.get(RAYSERVICES, "kaito", "nope") is None
    assert kuberay.delete(RAYJOBS, "kaito", "nope") is False


def test_apply_creates_then_is_idempotent_despite_server_defaults(
    kuberay: KubeRayClient, api: FakeCustomObjects
) -> None:
    desired = build_rayservice(gpu_plan(), SERVE)
    created = kuberay.apply_rayservice(desired)
    assert created.action == "created"
    assert SPEC_HASH_ANNOTATION in created.object["metadata"]["annotations"]
    assert created.object["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] == 1
    again = kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    assert again.action == "unchanged"
    assert api.calls.count("patch") == 0
    assert "annotations" not in desired["metadata"]  # the caller's dict is not modified


def test_serve_config_change_patches_only_serve_config(
    kuberay: KubeRayClient, api: FakeCustomObjects
) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    before = copy.deepcopy(api.objects[(RAYSERVICES, "kaito", "workspace-phi-3")])
    with_adapter = copy.deepcopy(SERVE)
    with_adapter["applications"][0]["args"]["adapters"] = [{"name": "a"}]
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(), with_adapter))
    assert result.action == "patched"
    assert result.object["spec"]["serveConfigV2"] != before["spec"]["serveConfigV2"]
    assert result.object["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    assert kuberay.apply_rayservice(build_rayservice(gpu_plan(), with_adapter)).action == "unchanged"


def test_removed_fields_are_removed(kuberay: KubeRayClient, api: FakeCustomObjects) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(enable_autoscaling=True, max_replicas=4), SERVE))
    assert (
        "autoscalerOptions"
        in api.objects[(RAYSERVICES, "kaito", "workspace-phi-3")]["spec"]["rayClusterConfig"]
    )
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(head_node_selector={}), SERVE))
    assert result.action == "patched"
    cluster = result.object["spec"]["rayClusterConfig"]
    assert "autoscalerOptions" not in cluster
    assert cluster["enableInTreeAutoscaling"] is False


def test_out_of_band_edit_is_reverted(kuberay: KubeRayClient, api: FakeCustomObjects) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    stored = api.objects[(RAYSERVICES, "kaito", "workspace-phi-3")]
    stored["spec"]["serveConfigV2"] = "applications: []\n"
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    assert result.action == "patched"
    assert (
        result.object["spec"]["serveConfigV2"] == build_rayservice(gpu_plan(), SERVE)["spec"]["serveConfigV2"]
    )


def test_labels_set_by_others_are_kept(kuberay: KubeRayClient, api: FakeCustomObjects) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    api.objects[(RAYSERVICES, "kaito", "workspace-phi-3")]["metadata"]["labels"]["team"] = "ml"
    assert kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE)).action == "unchanged"
    result = kuberay.apply_rayservice(build_rayservice(gpu_plan(labels={"kaito.sh/workspace": "x"}), SERVE))
    assert result.action == "patched"
    assert result.object["metadata"]["labels"] == {"kaito.sh/workspace": "x", "team": "ml"}


def test_patch_is_guarded_by_resource_version(kuberay: KubeRayClient, api: FakeCustomObjects) -> None:
    kuberay.apply_rayservice(build_rayservice(gpu_plan(), SERVE))
    original_get = api.get_namespaced_custom_object

    def stale_get(*args: Any) -> Any:
        found = original_get(*args)
        found["metadata"]["resourceVersion"] = "0"
        return found

    api.get_namespaced_custom_object = stale_get  # type: ignore[method-assign,assignment]
    with pytest.raises(ApiException) as raised:
        kuberay.apply_rayservice(build_rayservice(gpu_plan(replicas=3, max_replicas=3), SERVE))
    assert raised.value.status == 409


def test_create_patch_delete_rayjob(kuberay: KubeRayClient) -> None:
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "tune", "namespace": "kaito"},
        "spec": {},
    }
    assert kuberay.create(RAYJOBS, body)["metadata"]["uid"] == "uid-1"
    patched = kuberay.patch(RAYJOBS, "kaito", "tune", {"spec": {"suspend": True}})
    assert patched["spec"] == {"suspend": True}
    assert kuberay.delete(RAYJOBS, "kaito", "tune") is True
    assert kuberay.get(RAYJOBS, "kaito", "tune") is None


def test_merge_patch_diff() -> None:
    current = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "gone": True}
    desired = {"a": 1, "b": {"c": 5}, "e": [1], "new": {"x": 1}}
    patch = merge_patch_diff(current, desired)
    assert patch == {"b": {"c": 5, "d": None}, "e": [1], "new": {"x": 1}, "gone": None}
    assert _merge(current, patch) == desired
    assert merge_patch_diff(desired, desired) == {}
