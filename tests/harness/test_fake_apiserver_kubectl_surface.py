"""What the fake API server shows where kubectl looks: Table responses, OpenAPI v2/v3, one object
in every served CRD version, /scale, 415 for strategic merge on custom resources, fieldValidation
warnings, and the kinds `kairay manifests` installs. Plain HTTP, so headers and bodies are seen as
kubectl sees them; tests/kairay/test_kubectl_journey.py drives the same through kubectl itself."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from harness.apiserver.tables import human_duration, json_path
from harness.fake_apiserver import FakeApiServer
from tests.harness.raw_http import Http

GROUP, PLURAL = "test.kairay.io", "gadgets"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
MERGE = "application/merge-patch+json"
# Two served versions of one schema (conversion None), printer columns of both JSONPath forms, /scale.
GADGET_CRD = yaml.safe_load(
    """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.test.kairay.io}
spec:
  group: test.kairay.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1alpha1
    served: true
    storage: false
    subresources: &sub
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns: &columns
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema: &schema
        type: object
        properties:
          spec:
            type: object
            description: Spec of the gadget.
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, minimum: 0}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
  - name: v1beta1
    served: true
    storage: true
    subresources: *sub
    additionalPrinterColumns: *columns
    schema:
      openAPIV3Schema: *schema
"""
)


@pytest.fixture
def gadgets(fake_apiserver: FakeApiServer) -> Iterator[Http]:
    fake_apiserver.register_crd(GADGET_CRD)
    yield Http(fake_apiserver)


def gadget(name: str, version: str = "v1alpha1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{version}", "kind": "Gadget", "metadata": {"name": name}, "spec": spec}


def path(version: str, name: str = "", sub: str = "") -> str:
    return f"/apis/{GROUP}/{version}/namespaces/default/{PLURAL}" + (f"/{name}" if name else "") + sub


# --- tables ----------------------------------------------------------------------------------------


def test_list_as_table_evaluates_the_printer_columns(gadgets: Http, fake_apiserver: FakeApiServer) -> None:
    gadgets("POST", path("v1alpha1"), gadget("a", size="small", replicas=2))
    gadgets("POST", path("v1beta1"), gadget("b", "v1beta1", size="large"))
    ready = {
        "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}
    }
    fake_apiserver.patch(PLURAL, "default", "a", ready, subresource="status")

    code, _, table = gadgets("GET", path("v1beta1"), accept=TABLE)
    assert code == 200 and (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Replicas", "Ready", "Age"]
    assert table["columnDefinitions"][0]["format"] == "name"
    rows = {r["cells"][0]: r for r in table["rows"]}
    assert rows["a"]["cells"][1:4] == ["small", 2, "True"]
    assert rows["b"]["cells"][1:4] == ["large", None, None]
    assert rows["a"]["cells"][4].endswith("s")  # an age, not a timestamp
    # includeObject defaults to Metadata; Object carries the whole object in the requested version.
    assert rows["a"]["object"]["kind"] == "PartialObjectMetadata"
    _, _, full = gadgets("GET", path("v1alpha1") + "?includeObject=Object", accept=TABLE)
    assert {r["object"]["apiVersion"] for r in full["rows"]} == {f"{GROUP}/v1alpha1"}

    _, _, one = gadgets("GET", path("v1beta1", "a"), accept=TABLE)
    assert [r["cells"][0] for r in one["rows"]] == ["a"]
    # Without the Table media type, the plain list.
    _, _, plain = gadgets("GET", path("v1beta1"))
    assert plain["kind"] == "GadgetList"


def test_watch_as_table_sends_one_row_per_event_with_the_headers_once(gadgets: Http) -> None:
    gadgets("POST", path("v1beta1"), gadget("a", "v1beta1", size="small"))
    gadgets("POST", path("v1beta1"), gadget("b", "v1beta1", size="large"))
    request = urllib.request.Request(
        gadgets.url + path("v1alpha1") + "?watch=true&timeoutSeconds=1", headers=gadgets.headers(TABLE)
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        events = [json.loads(line) for line in answer.read().splitlines()]
    assert [(e["type"], e["object"]["kind"]) for e in events] == [("ADDED", "Table")] * 2
    first, second = (e["object"] for e in events)
    assert [c["name"] for c in first["columnDefinitions"]][:2] == ["Name", "Size"]
    assert second["columnDefinitions"] == []
    assert [r["cells"][:2] for r in (*first["rows"], *second["rows"])] == [["a", "small"], ["b", "large"]]


def test_kinds_without_printer_columns_show_name_and_age(fake_apiserver: FakeApiServer) -> None:
    http = Http(fake_apiserver)
    http("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}, "data": {}})
    _, _, table = http("GET", "/api/v1/namespaces/default/configmaps", accept=TABLE)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert [r["cells"][0] for r in table["rows"]] == ["c"]


def test_json_path_forms_and_human_durations() -> None:
    obj = {"a": [{"k": "x", "v": 1}, {"k": "y", "v": 2}], "b": {"c": "d"}}
    assert json_path(obj, ".b.c") == ["d"]
    assert json_path(obj, '.a[?(@.k=="y")].v') == [2]
    assert json_path(obj, ".a[*].v") == [1, 2]
    assert json_path(obj, ".a[1].k") == ["y"]
    assert json_path(obj, ".missing.field") == []
    assert [human_duration(s) for s in (5, 119, 150, 600, 3 * 3600 + 60, 30 * 3600, 3 * 86400)] == [
        "5s",
        "119s",
        "2m30s",
        "10m",
        "3h1m",
        "30h",
        "3d",
    ]


# --- OpenAPI ---------------------------------------------------------------------------------------


def test_openapi_v3_describes_each_served_group_version(gadgets: Http, fake_apiserver: FakeApiServer) -> None:
    _, _, discovery = gadgets("GET", "/openapi/v3")
    served = discovery["paths"]
    for key in ("api/v1", "apis/apps/v1", "apis/rbac.authorization.k8s.io/v1", f"apis/{GROUP}/v1alpha1"):
        assert served[key]["serverRelativeURL"].startswith(f"/openapi/v3/{key}?hash=")

    _, _, doc = gadgets("GET", served[f"apis/{GROUP}/v1beta1"]["serverRelativeURL"])
    item = doc["paths"][f"/apis/{GROUP}/v1beta1/namespaces/{{namespace}}/{PLURAL}/{{name}}"]
    patch = item["patch"]
    # What kubectl checks before it asks the server to validate (fieldValidation) and picks a patch type.
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": GROUP,
        "version": "v1beta1",
        "kind": "Gadget",
    }
    assert {"fieldValidation", "dryRun", "fieldManager"} <= {p["name"] for p in patch["parameters"]}
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    schema = doc["components"]["schemas"]["io.kairay.test.v1beta1.Gadget"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "version": "v1beta1", "kind": "Gadget"}
    ]
    assert schema["properties"]["spec"]["properties"]["size"]["enum"] == ["small", "large"]
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in doc["components"]["schemas"]

    _, _, core = gadgets("GET", "/openapi/v3/api/v1")
    cm_patch = core["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"]
    assert "application/strategic-merge-patch+json" in cm_patch["requestBody"]["content"]
    assert gadgets("GET", "/openapi/v3/apis/nothing.example/v1")[0] == 404

    # Clients cache documents by hash: a changed CRD is a new hash.
    changed = json.loads(json.dumps(GADGET_CRD))
    changed["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]["description"] = "New."
    fake_apiserver.register_crd(changed)
    _, _, again = gadgets("GET", "/openapi/v3")
    key = f"apis/{GROUP}/v1beta1"
    assert again["paths"][key] != served[key]
    assert again["paths"]["api/v1"] == served["api/v1"]


def test_openapi_v2_is_json_and_refuses_protobuf_only(gadgets: Http) -> None:
    code, _, doc = gadgets("GET", "/openapi/v2")
    assert code == 200 and doc["swagger"] == "2.0"
    assert "io.kairay.test.v1alpha1.Gadget" in doc["definitions"]
    patch = doc["paths"][f"/apis/{GROUP}/v1alpha1/namespaces/{{namespace}}/{PLURAL}/{{name}}"]["patch"]
    assert "application/strategic-merge-patch+json" not in patch["consumes"]
    protobuf = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    assert gadgets("GET", "/openapi/v2", accept=protobuf)[0] == 406


# --- one object, every served version ----------------------------------------------------------------


def test_an_object_is_read_patched_and_updated_through_every_served_version(gadgets: Http) -> None:
    code, _, created = gadgets("POST", path("v1alpha1"), gadget("g", size="small"))
    assert code == 201 and created["apiVersion"] == f"{GROUP}/v1alpha1"
    _, _, beta = gadgets("GET", path("v1beta1", "g"))
    assert beta["apiVersion"] == f"{GROUP}/v1beta1" and beta["spec"] == {"size": "small"}

    code, _, patched = gadgets("PATCH", path("v1beta1", "g"), {"spec": {"size": "large"}}, content_type=MERGE)
    assert code == 200 and patched["apiVersion"] == f"{GROUP}/v1beta1" and patched["spec"]["size"] == "large"

    _, _, alpha = gadgets("GET", path("v1alpha1", "g"))
    alpha["spec"]["replicas"] = 1
    code, _, updated = gadgets("PUT", path("v1alpha1", "g"), alpha)
    assert code == 200 and updated["apiVersion"] == f"{GROUP}/v1alpha1"

    applied = gadget("g", "v1beta1", size="large", replicas=3)
    code, _, answer = gadgets(
        "PATCH",
        path("v1beta1", "g") + "?fieldManager=me&force=true",
        applied,
        content_type="application/apply-patch+yaml",
    )
    assert code == 200 and answer["spec"] == {"size": "large", "replicas": 3}
    # A body must still name the version of the URL it is sent to.
    code, _, refused = gadgets("POST", path("v1beta1"), gadget("h", "v1alpha1"))
    assert code == 400 and "does not match the expected API version" in refused["message"]


def test_strategic_merge_patch_of_a_custom_resource_is_415(gadgets: Http) -> None:
    gadgets("POST", path("v1beta1"), gadget("g", "v1beta1", size="small"))
    code, _, status = gadgets(
        "PATCH",
        path("v1beta1", "g"),
        {"spec": {"size": "large"}},
        content_type="application/strategic-merge-patch+json",
    )
    assert code == 415 and status["reason"] == "UnsupportedMediaType"


# --- fieldValidation ----------------------------------------------------------------------------------


def test_field_validation_warns_by_default_refuses_when_strict_and_is_silent_when_ignored(
    gadgets: Http,
) -> None:
    unknown = gadget("warned", size="small", colour="red")
    code, headers, created = gadgets("POST", path("v1alpha1"), unknown)
    assert code == 201 and "colour" not in created["spec"]  # pruned, as the real server does
    assert headers.get_all("Warning") == ['299 - "unknown field \\"spec.colour\\""']

    code, _, status = gadgets(
        "POST", path("v1alpha1") + "?fieldValidation=Strict", {**unknown, "metadata": {"name": "s"}}
    )
    assert code == 400 and 'strict decoding error: unknown field "spec.colour"' in status["message"]

    code, headers, _ = gadgets(
        "POST", path("v1alpha1") + "?fieldValidation=Ignore", {**unknown, "metadata": {"name": "i"}}
    )
    assert code == 201 and headers.get_all("Warning") is None

    code, headers, _ = gadgets(
        "PATCH",
        path("v1beta1", "i") + "?fieldValidation=Warn",
        {"spec": {"shape": "round"}},
        content_type=MERGE,
    )
    assert code == 200 and headers.get_all("Warning") == ['299 - "unknown field \\"spec.shape\\""']
    assert gadgets("POST", path("v1alpha1") + "?fieldValidation=Loud", gadget("x"))[0] == 400


# --- /scale ---------------------------------------------------------------------------------------------


def test_scale_subresource_reads_and_writes_the_declared_replicas_paths(
    gadgets: Http, fake_apiserver: FakeApiServer
) -> None:
    _, _, resources = gadgets("GET", f"/apis/{GROUP}/v1beta1")
    assert {r["name"] for r in resources["resources"]} == {PLURAL, f"{PLURAL}/status", f"{PLURAL}/scale"}
    gadgets("POST", path("v1beta1"), gadget("g", "v1beta1", replicas=1))
    fake_apiserver.patch(PLURAL, "default", "g", {"status": {"replicas": 1}}, subresource="status")

    code, _, scale = gadgets("GET", path("v1alpha1", "g", "/scale"))
    assert code == 200 and (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (1, 1)

    code, _, scaled = gadgets(
        "PATCH", path("v1beta1", "g", "/scale"), {"spec": {"replicas": 4}}, content_type=MERGE
    )
    assert code == 200 and scaled["spec"]["replicas"] == 4
    stored = fake_apiserver.get(PLURAL, "default", "g")
    assert stored is not None and stored["spec"]["replicas"] == 4 and stored["metadata"]["generation"] == 2
    code, _, put = gadgets("PUT", path("v1beta1", "g", "/scale"), {**scaled, "spec": {"replicas": 0}})
    assert code == 200 and put["spec"]["replicas"] == 0
    assert gadgets("PUT", path("v1beta1", "g", "/scale"), {"spec": {"replicas": -1}})[0] == 422
    # Only where the CRD declares it.
    assert Http(fake_apiserver)("GET", "/api/v1/namespaces/default/configmaps/x/scale")[0] == 404


# --- what `kairay manifests` installs -------------------------------------------------------------------


def test_rbac_and_apps_kinds_are_served_with_their_scope(fake_apiserver: FakeApiServer) -> None:
    http = Http(fake_apiserver)
    _, _, rbac = http("GET", "/apis/rbac.authorization.k8s.io/v1")
    scopes = {r["name"]: r["namespaced"] for r in rbac["resources"]}
    assert scopes == {
        "roles": True,
        "rolebindings": True,
        "clusterroles": False,
        "clusterrolebindings": False,
    }
    _, _, apps = http("GET", "/apis/apps/v1")
    assert {r["name"] for r in apps["resources"]} == {"deployments", "deployments/status"}

    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "r"},
        "rules": [],
    }
    assert http("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role)[0] == 201
    assert http("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/r")[0] == 200
    assert http("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/clusterroles", role)[0] == 404
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1},
    }
    assert http("POST", "/apis/apps/v1/namespaces/default/deployments", deployment)[0] == 201
