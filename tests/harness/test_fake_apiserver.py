"""The fake API server against the real `kubernetes` client and a real kopf operator."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import pytest
import urllib3
import yaml
from kubernetes import client, config, watch

from harness.apiserver.http import ADMIN_TOKEN
from harness.fake_apiserver import FakeApiServer
from tests.harness.fixtures import fake_apiserver, k8s_api_client

__all__ = ["fake_apiserver", "k8s_api_client"]  # fixtures, re-exported so pytest finds them here

# The client's models declare every field Optional and its methods ask for models, not the JSON
# dicts these tests send (the client takes both); the tests hold the APIs untyped so that reading
# what the server filled in stays readable.
Api = Any

GROUP, VERSION, PLURAL = "test.kairay.io", "v1", "widgets"
NS = "default"

WIDGET_CRD_YAML = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.kairay.io
spec:
  group: test.kairay.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                replicas: {type: integer, default: 1}
              x-kubernetes-validations:
                - rule: "self.replicas <= 3"
                  message: "at most 3 replicas"
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""


@pytest.fixture
def core(k8s_api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api_client)


@pytest.fixture
def custom(k8s_api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api_client)


@pytest.fixture
def widgets(fake_apiserver: FakeApiServer) -> FakeApiServer:
    fake_apiserver.register_minimal_crd(GROUP, VERSION, "Widget", short_names=("wd",), versions=("v1beta1",))
    return fake_apiserver


@dataclass(frozen=True)
class Problem:
    """What a validator hook returns: anything with `field` and `reason`."""

    field: str
    reason: str


def widget(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, **fields}


def cm(name: str, labels: Mapping[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels or {}), **meta}, "data": {"k": "v"}}


def status_of(exc_info: pytest.ExceptionInfo[client.ApiException]) -> dict[str, Any]:
    assert exc_info.value.body is not None
    body: dict[str, Any] = json.loads(exc_info.value.body)
    return body


def names(items: list[Any]) -> list[str]:
    return sorted(i.metadata.name if hasattr(i, "metadata") else i["metadata"]["name"] for i in items)


class EventCollector:
    """A `watch.Watch().stream(...)` running in a thread, collecting (type, name) pairs; returns
    once the server has the watch open, so nothing the test does next can slip past it."""

    def __init__(self, server: FakeApiServer, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._stopped = False
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        watches = server.watch_count
        self._thread.start()
        server.wait_for(lambda: server.watch_count > watches)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            for event in self._watch.stream(fn, *args, timeout_seconds=10, **kwargs):
                raw = event["raw_object"]
                self.events.append((event["type"], raw["metadata"]["name"], raw))
        except urllib3.exceptions.ProtocolError:
            # `Watch.stop()` shuts the socket down under the reading thread; anything else is a failure.
            if not self._stopped:
                raise

    def pairs(self) -> list[tuple[str, str]]:
        return [(t, n) for t, n, _ in self.events]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pairs()

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def raw_watch_lines(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_lists_builtins_and_registered_crds(
    fake_apiserver: FakeApiServer, k8s_api_client: client.ApiClient
) -> None:
    version: Api = client.VersionApi(k8s_api_client)
    core: Api = client.CoreV1Api(k8s_api_client)
    apis: Api = client.ApisApi(k8s_api_client)
    custom: Api = client.CustomObjectsApi(k8s_api_client)
    extensions: Api = client.ApiextensionsV1Api(k8s_api_client)
    assert version.get_code().major == "1"
    core_resources = {r.name: r for r in core.get_api_resources().resources}
    assert {"namespaces", "nodes", "pods", "services", "endpoints", "secrets", "configmaps"} <= set(
        core_resources
    )
    assert {"serviceaccounts", "events", "pods/status", "namespaces/status"} <= set(core_resources)
    assert core_resources["pods"].short_names == ["po"] and core_resources["pods"].namespaced
    assert not core_resources["nodes"].namespaced and "watch" in core_resources["pods"].verbs
    assert core_resources["pods/status"].verbs == ["get", "patch", "update"]
    groups = {g.name for g in apis.get_api_versions().groups}
    assert {"apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= groups

    fake_apiserver.register_minimal_crd(GROUP, VERSION, "Widget", versions=("v1beta1",))
    group = next(g for g in apis.get_api_versions().groups if g.name == GROUP)
    assert [v.version for v in group.versions] == ["v1", "v1beta1"]
    assert group.preferred_version.version == "v1"
    listing = custom.get_api_resources(GROUP, VERSION)
    assert {r.name for r in listing.resources} == {"widgets", "widgets/status"}

    extensions.delete_custom_resource_definition(f"widgets.{GROUP}")
    with pytest.raises(client.ApiException) as err:
        custom.get_api_resources(GROUP, VERSION)
    assert err.value.status == 404


# --- create / get / list -------------------------------------------------------------------------


def test_create_assigns_identity_and_enforces_names(core: Api, custom: Api, widgets: FakeApiServer) -> None:
    first, code, _ = core.create_namespaced_config_map_with_http_info(NS, cm("a"))
    assert code == 201
    second = core.create_namespaced_config_map(NS, cm("b"))
    assert first.metadata.uid and first.metadata.uid != second.metadata.uid
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert first.metadata.creation_timestamp is not None
    assert first.metadata.generation is None  # no spec, not a custom resource
    assert (
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w"))["metadata"][
            "generation"
        ]
        == 1
    )

    core.create_namespaced_config_map(NS, cm("dry"), dry_run="All")
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_config_map("dry", NS)
    assert err.value.status == 404
    generated = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "gen-"}})
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == 9

    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map(NS, cm("a"))
    assert err.value.status == 409 and status_of(err)["reason"] == "AlreadyExists"
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map("nowhere", cm("a"))
    assert err.value.status == 404 and status_of(err)["message"] == 'namespaces "nowhere" not found'
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map(NS, cm("Not_A_Name"))
    assert err.value.status == 422 and status_of(err)["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map(NS, cm("c", {"model": "org/model"}))
    assert err.value.status == 422 and "metadata.labels" in status_of(err)["message"]
    assert {"default", "kube-system"} <= set(names(core.list_namespace().items))


def test_get_and_list_with_selectors_and_pages(core: Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_config_map(NS, cm("a1", {"app": "a", "tier": "web"}))
    core.create_namespaced_config_map(NS, cm("a2", {"app": "a"}))
    core.create_namespaced_config_map(NS, cm("b1", {"app": "b", "tier": "db"}))
    core.create_namespaced_config_map(NS, cm("n1"))
    core.create_namespaced_config_map("other", cm("a1", {"app": "a"}))
    assert core.read_namespaced_config_map("a1", NS).metadata.labels == {"app": "a", "tier": "web"}

    def select(labels: str | None = None, fields: str | None = None) -> list[str]:
        kwargs = {k: v for k, v in (("label_selector", labels), ("field_selector", fields)) if v}
        return names(core.list_namespaced_config_map(NS, **kwargs).items)

    assert select("app=a") == select("app==a") == ["a1", "a2"]
    assert select("app!=a") == ["b1", "n1"]
    assert select("app in (a, b)") == ["a1", "a2", "b1"]
    assert select("app notin (a)") == ["b1", "n1"]
    assert select("tier") == ["a1", "b1"]
    assert select("!tier") == ["a2", "n1"]
    assert select("app=a,tier=web") == ["a1"]
    assert select(fields="metadata.name=a2") == ["a2"]
    assert select(fields="metadata.name!=a2") == ["a1", "b1", "n1"]
    everywhere = core.list_config_map_for_all_namespaces(label_selector="app=a").items
    assert sorted((i.metadata.namespace, i.metadata.name) for i in everywhere) == [
        ("default", "a1"),
        ("default", "a2"),
        ("other", "a1"),
    ]
    assert names(
        core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=other").items
    ) == ["a1"]
    with pytest.raises(client.ApiException) as err:
        core.list_namespaced_config_map(NS, field_selector="data.k=v")
    assert err.value.status == 400

    page = core.list_namespaced_config_map(NS, limit=3)
    assert names(page.items) == ["a1", "a2", "b1"] and page.metadata.remaining_item_count == 1
    rest = core.list_namespaced_config_map(NS, limit=3, _continue=page.metadata._continue)
    assert names(rest.items) == ["n1"] and not rest.metadata._continue


# --- updates ------------------------------------------------------------------------------------


def test_replace_detects_stale_resource_versions(core: Api, custom: Api, widgets: FakeApiServer) -> None:
    original = core.create_namespaced_config_map(NS, cm("a"))
    original.data = {"k": "v2"}
    updated = core.replace_namespaced_config_map("a", NS, original)
    assert updated.data == {"k": "v2"}
    assert int(updated.metadata.resource_version) > int(original.metadata.resource_version)
    with pytest.raises(client.ApiException) as err:
        core.replace_namespaced_config_map("a", NS, original)  # still carries the old resourceVersion
    assert err.value.status == 409 and "the object has been modified" in status_of(err)["message"]
    unconditional = cm("a")
    assert core.replace_namespaced_config_map("a", NS, unconditional).data == {"k": "v"}

    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w", spec={"size": 1}))
    with pytest.raises(client.ApiException) as err:
        custom.replace_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "w", widget("w", spec={"size": 2})
        )
    assert err.value.status == 422 and "resourceVersion" in status_of(err)["message"]
    with pytest.raises(client.ApiException) as err:
        core.replace_namespaced_config_map("missing", NS, cm("missing"))
    assert err.value.status == 404


def test_patch_formats(core: Api, custom: Api, widgets: FakeApiServer) -> None:
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v", "drop": "me"}}
    )
    merged = core.patch_namespaced_config_map(
        "a",
        NS,
        {"metadata": {"labels": {"y": None, "z": "3"}}, "data": {"drop": None}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"x": "1", "z": "3"} and merged.data == {"k": "v"}

    patched = core.patch_namespaced_config_map(
        "a",
        NS,
        [
            {"op": "add", "path": "/data/new", "value": "n"},
            {"op": "replace", "path": "/metadata/labels/x", "value": "9"},
            {"op": "remove", "path": "/metadata/labels/z"},
        ],
    )
    assert patched.data == {"k": "v", "new": "n"} and patched.metadata.labels == {"x": "9"}
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_config_map("a", NS, [{"op": "test", "path": "/data/k", "value": "other"}])
    assert err.value.status == 422
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_config_map(
            "a", NS, {"metadata": {"resourceVersion": "1"}}, _content_type="application/merge-patch+json"
        )
    assert err.value.status == 409

    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "main", "image": "a:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "b:1"},
            ]
        },
    }
    core.create_namespaced_pod(NS, pod)
    strategic = core.patch_namespaced_pod(
        "p",
        NS,
        {
            "spec": {
                "containers": [
                    {"name": "main", "image": "a:2", "env": [{"name": "B", "value": "2"}]},
                ]
            }
        },
    )
    containers = {c.name: c for c in strategic.spec.containers}
    assert containers["main"].image == "a:2" and containers["side"].image == "b:1"
    assert [e.name for e in containers["main"].env] == ["A", "B"]
    removed = core.patch_namespaced_pod(
        "p", NS, {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}
    )
    assert [c.name for c in removed.spec.containers] == ["main"]

    # Server-side apply: creates when absent, drops what the manager stops applying, 409s on
    # another applier's fields unless forced.
    applied = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "s"},
        "data": {"a": "1", "b": "2"},
    }
    obj, code, _ = core.patch_namespaced_config_map_with_http_info(
        "s", NS, applied, field_manager="alice", _content_type="application/apply-patch+yaml"
    )
    assert code == 201 and obj.data == {"a": "1", "b": "2"}
    assert obj.metadata.managed_fields[0].manager == "alice"
    obj = core.patch_namespaced_config_map(
        "s",
        NS,
        {**applied, "data": {"a": "1"}},
        field_manager="alice",
        _content_type="application/apply-patch+yaml",
    )
    assert obj.data == {"a": "1"}
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_config_map(
            "s",
            NS,
            {**applied, "data": {"a": "bob"}},
            field_manager="bob",
            _content_type="application/apply-patch+yaml",
        )
    assert err.value.status == 409 and 'conflict with "alice"' in status_of(err)["message"]
    obj = core.patch_namespaced_config_map(
        "s",
        NS,
        {**applied, "data": {"a": "bob"}},
        field_manager="bob",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert obj.data == {"a": "bob"}

    # Custom resources carry no merge strategies: the real server refuses strategic merge on them.
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w", spec={"a": {"b": 1}}))
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            "w",
            {"spec": {"a": {"c": 2}}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert err.value.status == 415 and status_of(err)["reason"] == "UnsupportedMediaType"
    assert "application/merge-patch+json" in status_of(err)["message"]


def test_generation_and_status_subresource(custom: Api, widgets: FakeApiServer) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, widget("w", spec={"size": 1}, status={"phase": "ignored"})
    )
    assert "status" not in created and created["metadata"]["generation"] == 1

    def patch(body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w", body)
        return result

    assert patch({"spec": {"size": 2}})["metadata"]["generation"] == 2
    labelled = patch({"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 2
    unchanged = patch({"status": {"phase": "main-resource-write"}})
    assert "status" not in unchanged
    assert unchanged["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]  # a no-op

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "w", {"status": {"phase": "Ready"}, "spec": {"size": 99}}
    )
    assert with_status["status"] == {"phase": "Ready"} and with_status["spec"] == {"size": 2}
    assert with_status["metadata"]["generation"] == 2
    with_status["status"] = {"phase": "Replaced"}
    replaced = custom.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "w", with_status)
    assert replaced["status"] == {"phase": "Replaced"}
    # Another served version reads the same object.
    other = custom.get_namespaced_custom_object(GROUP, "v1beta1", NS, PLURAL, "w")
    assert other["apiVersion"] == f"{GROUP}/v1beta1" and other["status"] == {"phase": "Replaced"}


def test_secret_and_service_defaults(core: Api) -> None:
    secret = core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"user": "me"}})
    assert secret.data == {"user": "bWU="} and secret.type == "Opaque"
    service = core.create_namespaced_service(
        NS, {"metadata": {"name": "svc"}, "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}}
    )
    ip = service.spec.cluster_ip
    assert ip.startswith("10.96.") and service.spec.ports[0].target_port == 80
    service.spec.cluster_ip = None
    service.spec.cluster_ips = None
    assert core.replace_namespaced_service("svc", NS, service).spec.cluster_ip == ip


# --- deletion -----------------------------------------------------------------------------------


def test_finalizers_hold_deletion_and_watch_reports_it(fake_apiserver: FakeApiServer, core: Api) -> None:
    events = EventCollector(fake_apiserver, core.list_namespaced_config_map, NS)
    core.create_namespaced_config_map(NS, cm("f", finalizers=["test.kairay.io/hold"]))
    # The answer is the object, still there, not the Status the client expects (so it stays a dict).
    deleting = core.delete_namespaced_config_map("f", NS)
    assert isinstance(deleting, dict) and deleting["metadata"]["deletionTimestamp"]
    kept = core.read_namespaced_config_map("f", NS)
    assert kept.metadata.deletion_timestamp is not None and kept.metadata.deletion_grace_period_seconds == 0
    with pytest.raises(client.ApiException) as err:
        core.patch_namespaced_config_map(
            "f",
            NS,
            {"metadata": {"finalizers": ["test.kairay.io/hold", "test.kairay.io/new"]}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 422
    core.patch_namespaced_config_map(
        "f", NS, {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_config_map("f", NS)
    assert err.value.status == 404
    assert events.wait_for(3) == [("ADDED", "f"), ("MODIFIED", "f"), ("DELETED", "f")]
    events.stop()


def test_owner_references_are_garbage_collected(fake_apiserver: FakeApiServer, core: Api) -> None:
    def owned_by(*owners: Api) -> list[dict[str, Any]]:
        return [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": o.metadata.name, "uid": o.metadata.uid}
            for o in owners
        ]

    def exists(name: str) -> bool:
        return fake_apiserver.get("configmaps", NS, name) is not None

    root = core.create_namespaced_config_map(NS, cm("root"))
    child = core.create_namespaced_config_map(NS, cm("child", ownerReferences=owned_by(root)))
    core.create_namespaced_config_map(NS, cm("grandchild", ownerReferences=owned_by(child)))
    other = core.create_namespaced_config_map(NS, cm("other"))
    core.create_namespaced_config_map(NS, cm("shared", ownerReferences=owned_by(root, other)))
    core.delete_namespaced_config_map("root", NS)
    fake_apiserver.wait_for(lambda: not exists("child") and not exists("grandchild"))
    shared = fake_apiserver.get("configmaps", NS, "shared")
    assert shared is not None and [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["other"]

    # Orphan: dependents stay and lose the reference.
    core.delete_namespaced_config_map("other", NS, propagation_policy="Orphan")
    fake_apiserver.wait_for(
        lambda: (
            "ownerReferences"
            not in (fake_apiserver.get("configmaps", NS, "shared") or {"metadata": {"ownerReferences": 1}})[
                "metadata"
            ]
        )
    )

    # Foreground: the owner waits (with a deletionTimestamp) until its dependents are gone.
    owner = core.create_namespaced_config_map(NS, cm("owner"))
    core.create_namespaced_config_map(
        NS, cm("held", ownerReferences=owned_by(owner), finalizers=["x.io/hold"])
    )
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Foreground")
    fake_apiserver.wait_for(
        lambda: (
            (fake_apiserver.get("configmaps", NS, "held") or {}).get("metadata", {}).get("deletionTimestamp")
            is not None
        )
    )
    waiting = fake_apiserver.get("configmaps", NS, "owner")
    assert waiting is not None and "foregroundDeletion" in waiting["metadata"]["finalizers"]
    fake_apiserver.patch("configmaps", NS, "held", {"metadata": {"finalizers": None}})
    fake_apiserver.wait_for(lambda: not exists("owner") and not exists("held"))


def test_namespace_deletion_empties_the_namespace(fake_apiserver: FakeApiServer, core: Api) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", cm("plain"))
    core.create_namespaced_config_map("doomed", cm("held", finalizers=["x.io/hold"]))
    assert core.read_namespace("doomed").metadata.labels == {"kubernetes.io/metadata.name": "doomed"}
    core.delete_namespace("doomed")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_config_map("doomed", cm("late"))
    assert err.value.status == 403
    fake_apiserver.wait_for(lambda: fake_apiserver.get("configmaps", "doomed", "plain") is None)
    assert fake_apiserver.get("namespaces", None, "doomed") is not None
    fake_apiserver.patch("configmaps", "doomed", "held", {"metadata": {"finalizers": None}})
    fake_apiserver.wait_for(lambda: fake_apiserver.get("namespaces", None, "doomed") is None)


def test_delete_collection_and_delete_status(core: Api) -> None:
    for name in ("a", "b", "c"):
        core.create_namespaced_config_map(NS, cm(name, {"batch": "1" if name != "c" else "2"}))
    core.delete_collection_namespaced_config_map(NS, label_selector="batch=1")
    assert names(core.list_namespaced_config_map(NS).items) == ["c"]
    status = core.delete_namespaced_config_map("c", NS)
    assert status["status"] == "Success" and status["details"]["name"] == "c"


# --- watch --------------------------------------------------------------------------------------


def test_watch_resume_timeout_and_selector_transitions(fake_apiserver: FakeApiServer, core: Api) -> None:
    list_rv = core.list_namespaced_config_map(NS).metadata.resource_version
    for name in ("a", "b"):
        core.create_namespaced_config_map(NS, cm(name))
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}})
    started = time.monotonic()
    resumed = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, NS, resource_version=list_rv, timeout_seconds=1
        )
    ]
    assert resumed == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a")]
    assert 0.9 < time.monotonic() - started < 3

    fresh = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(core.list_namespaced_config_map, NS, timeout_seconds=1)
    ]
    assert sorted(fresh) == [("ADDED", "a"), ("ADDED", "b")]

    selected = EventCollector(fake_apiserver, core.list_namespaced_config_map, NS, label_selector="app=x")
    core.create_namespaced_config_map(NS, cm("sel", {"app": "x"}))
    core.patch_namespaced_config_map("sel", NS, {"metadata": {"labels": {"app": "y"}}})
    core.patch_namespaced_config_map("sel", NS, {"metadata": {"labels": {"app": "x"}}})
    core.create_namespaced_config_map(NS, cm("never", {"app": "z"}))
    core.delete_namespaced_config_map("sel", NS)
    assert selected.wait_for(4) == [
        ("ADDED", "sel"),
        ("DELETED", "sel"),
        ("ADDED", "sel"),
        ("DELETED", "sel"),
    ]
    selected.stop()


def test_watch_history_expiry_is_410(fake_apiserver: FakeApiServer, core: Api) -> None:
    old_rv = core.list_namespaced_config_map(NS).metadata.resource_version
    fake_apiserver.history_size = 2
    for i in range(4):
        core.create_namespaced_config_map(NS, cm(f"c{i}"))
    with pytest.raises(client.ApiException) as err:
        list(
            watch.Watch().stream(
                core.list_namespaced_config_map, NS, resource_version=old_rv, timeout_seconds=1
            )
        )
    assert err.value.status == 410
    recent = core.read_namespaced_config_map("c2", NS).metadata.resource_version
    tail = [
        e["object"].metadata.name
        for e in watch.Watch().stream(
            core.list_namespaced_config_map, NS, resource_version=recent, timeout_seconds=1
        )
    ]
    assert tail == ["c3"]


def test_watch_bookmarks_and_initial_events(tmp_path: Path) -> None:
    with FakeApiServer(bookmark_interval=0.2) as server:
        server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": NS}})
        base = f"{server.url}/api/v1/namespaces/{NS}/configmaps?watch=1&timeoutSeconds=1"
        lines = raw_watch_lines(f"{base}&allowWatchBookmarks=true&resourceVersion={server.resource_version}")
        assert lines and {line["type"] for line in lines} == {"BOOKMARK"}
        assert lines[0]["object"]["metadata"]["resourceVersion"] == str(server.resource_version)
        initial = raw_watch_lines(f"{base}&allowWatchBookmarks=true&sendInitialEvents=true")
        assert [line["type"] for line in initial[:2]] == ["ADDED", "BOOKMARK"]
        assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert (
            raw_watch_lines(f"{server.url}/api/v1/watch/namespaces/{NS}/configmaps/a?timeoutSeconds=0.3")[0][
                "type"
            ]
            == "ADDED"
        )


# --- CRDs and validation ------------------------------------------------------------------------


def test_crd_from_yaml_with_pluggable_validation(
    fake_apiserver: FakeApiServer, k8s_api_client: client.ApiClient
) -> None:
    crd = yaml.safe_load(WIDGET_CRD_YAML)
    extensions: Api = client.ApiextensionsV1Api(k8s_api_client)
    created = extensions.create_custom_resource_definition(crd)
    assert created.status.accepted_names.kind == "Gadget"
    assert {c.type: c.status for c in created.status.conditions}["Established"] == "True"
    custom: Api = client.CustomObjectsApi(k8s_api_client)

    def too_many(
        _crd: Mapping[str, Any], obj: Mapping[str, Any], _old: Mapping[str, Any] | None
    ) -> list[Any]:
        replicas = obj.get("spec", {}).get("replicas", 0)
        return [Problem("spec", "at most 3 replicas")] if replicas > 3 else []

    fake_apiserver.validator = too_many
    fake_apiserver.defaulter = None
    gadget = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {"replicas": 4},
    }
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, "v1", NS, "gadgets", gadget)
    status = status_of(err)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    assert status["message"] == 'Gadget.test.kairay.io "g" is invalid: spec: at most 3 replicas'
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": "at most 3 replicas", "field": "spec"}
    ]
    assert custom.create_namespaced_custom_object(
        GROUP, "v1", NS, "gadgets", {**gadget, "spec": {"replicas": 2}}
    )


def test_crd_validation_with_the_product_validator(fake_apiserver: FakeApiServer, custom: Api) -> None:
    pytest.importorskip("kairay.api.crds.schema")
    fake_apiserver.register_crd(yaml.safe_load(WIDGET_CRD_YAML))
    gadget = {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {}}
    stored = custom.create_namespaced_custom_object(GROUP, "v1", NS, "gadgets", {**gadget, "extra": 1})
    assert stored["spec"] == {"replicas": 1} and "extra" not in stored  # defaulted and pruned
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(GROUP, "v1", NS, "gadgets", "g", {"spec": {"replicas": 5}})
    assert err.value.status == 422 and "at most 3 replicas" in status_of(err)["message"]
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP,
            "v1",
            NS,
            "gadgets",
            {**gadget, "metadata": {"name": "h"}, "extra": 1},
            field_validation="Strict",
        )
    assert err.value.status == 400


# --- test knobs ---------------------------------------------------------------------------------


def test_error_injection_and_request_counts(fake_apiserver: FakeApiServer, core: Api) -> None:
    fake_apiserver.reset_request_stats()
    rule = fake_apiserver.inject_errors("configmaps", code=409, count=2)
    for _ in range(2):
        with pytest.raises(client.ApiException) as err:
            core.create_namespaced_config_map(NS, cm("a"))
        assert err.value.status == 409
    core.create_namespaced_config_map(NS, cm("a"))
    assert rule.hits == 2 and rule.remaining == 0

    fake_apiserver.inject_errors("ConfigMap", code=503, verbs=["get"], name="a")
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_config_map("a", NS)
    assert err.value.status == 503
    assert core.read_namespaced_config_map("a", NS).metadata.name == "a"
    fake_apiserver.inject_errors(code=500, count=5)
    fake_apiserver.clear_errors()
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "2"}})

    counts = fake_apiserver.request_counts
    assert counts[("create", "configmaps")] == 3 and counts[("get", "configmaps")] == 2
    assert fake_apiserver.count_requests(resource="configmaps") == 6
    assert [r.code for r in fake_apiserver.request_log if r.verb == "create"] == [409, 409, 201]


def test_concurrent_creates_reach_every_watcher(fake_apiserver: FakeApiServer, core: Api) -> None:
    total = 300
    watchers = [EventCollector(fake_apiserver, core.list_namespaced_config_map, NS) for _ in range(3)]
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: core.create_namespaced_config_map(NS, cm(f"c{i}")), range(total)))
    elapsed = time.monotonic() - started
    for collector in watchers:
        assert len(collector.wait_for(total)) == total
        collector.stop()
    assert elapsed < 5, f"{total} creates took {elapsed:.1f} s"


def test_standalone_cli(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "out.yaml"
    crds = tmp_path / "crds.yaml"
    crds.write_text(WIDGET_CRD_YAML)
    command = ["--port", "0", "--kubeconfig", str(kubeconfig), "--crd", str(crds)]
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.fake_apiserver", *command],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "listening on http://127.0.0.1:" in process.stdout.readline()
        assert "kubeconfig written" in process.stdout.readline()
        api_client = config.new_client_from_config(str(kubeconfig))
        core: Api = client.CoreV1Api(api_client)
        assert "default" in names(core.list_namespace().items)
        custom: Api = client.CustomObjectsApi(api_client)
        assert custom.list_namespaced_custom_object(GROUP, "v1", NS, "gadgets")["items"] == []
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_workspace_crd_and_examples_from_the_repository(
    k8s_api_client: client.ApiClient, custom: Api
) -> None:
    root = Path(__file__).resolve().parents[2]
    crd_file, example = root / "kairay/api/crds/workspace.yaml", root / "examples/phi-3-mini.yaml"
    assert crd_file.exists() and example.exists(), "the Workspace CRD and examples ship with the repository"
    extensions: Api = client.ApiextensionsV1Api(k8s_api_client)
    extensions.create_custom_resource_definition(yaml.safe_load(crd_file.read_text()))
    workspace = yaml.safe_load(example.read_text())
    name = workspace["metadata"]["name"]
    created = custom.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", workspace)
    assert created["metadata"]["generation"] == 1
    old_version = custom.get_namespaced_custom_object("kaito.sh", "v1alpha1", NS, "workspaces", name)
    assert old_version["apiVersion"] == "kaito.sh/v1alpha1" and old_version["resource"] == created["resource"]
    short_names = {r.name: r.short_names for r in custom.get_api_resources("kaito.sh", "v1beta1").resources}
    assert set(short_names["workspaces"]) >= {"wk", "wks"}


# --- kopf -----------------------------------------------------------------------------------------


@pytest.fixture
def kopf_operator(widgets: FakeApiServer) -> Iterator[tuple[kopf.OperatorRegistry, threading.Event]]:
    """A kopf registry to fill, and an event that starts the operator in a thread once set."""
    registry = kopf.OperatorRegistry()
    go, ready, stop = threading.Event(), threading.Event(), threading.Event()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A bare OperatorRegistry has none of kopf's default login handlers; reuse the kubeconfig one.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "test.kairay.io/kopf"
        settings.watching.server_timeout = 5
        settings.networking.request_timeout = 10

    def run() -> None:
        go.wait()
        asyncio.run(
            kopf.operator(
                registry=registry, standalone=True, clusterwide=True, ready_flag=ready, stop_flag=stop
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield registry, go
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert ready.is_set()


def test_kopf_operator_runs_against_the_fake(
    widgets: FakeApiServer,
    custom: Api,
    kopf_operator: tuple[kopf.OperatorRegistry, threading.Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kopf")
    registry, go = kopf_operator
    deleted: list[str] = []

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        kopf.info(body, reason="Created", message="widget is ready")
        patch.status["phase"] = "Ready"
        patch.status["size"] = spec.get("size")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    go.set()
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("k", spec={"size": 3}))

    def ready() -> bool:
        obj = widgets.get(PLURAL, NS, "k") or {}
        return obj.get("status", {}).get("phase") == "Ready"

    widgets.wait_for(ready, timeout=15)
    obj = widgets.get(PLURAL, NS, "k")
    assert obj is not None and obj["status"]["size"] == 3
    assert "test.kairay.io/kopf" in obj["metadata"]["finalizers"]
    deleting = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "k")
    assert deleting["metadata"].get("deletionTimestamp")
    widgets.wait_for(lambda: widgets.get(PLURAL, NS, "k") is None, timeout=15)
    assert deleted == ["k"]
    widgets.wait_for(
        lambda: any(e.get("involvedObject", {}).get("name") == "k" for e in widgets.list("events", NS)),
        timeout=10,
    )
    counts = widgets.request_counts
    assert counts[("watch", PLURAL)] >= 1 and counts[("patch", f"{PLURAL}/status")] >= 1
