"""Authentication and RBAC authorization in the fake API server: a ServiceAccount gets what its
bindings grant and a 403 worded like the real server's for anything else."""

from __future__ import annotations

from typing import Any

from harness.apiserver.rbac import granted
from harness.fake_apiserver import FakeApiServer
from tests.harness.raw_http import Http

RBAC = "/apis/rbac.authorization.k8s.io/v1"
USER = "system:serviceaccount:ops:robot"


def binding(kind: str, name: str, role_kind: str, role: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "ops"}],
    }


def role(kind: str, name: str, rules: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "rules": rules,
    }


def test_an_unknown_token_is_401_and_no_token_is_the_admin(fake_apiserver: FakeApiServer) -> None:
    code, _, status = Http(fake_apiserver, token="made-up")("GET", "/api/v1/namespaces")
    assert code == 401 and status["reason"] == "Unauthorized"
    # kubectl sends no bearer token over plain HTTP: without one, a request is the admin's.
    assert Http(fake_apiserver, token="")("GET", "/api/v1/namespaces")[0] == 200
    assert fake_apiserver.request_log[-1].user == "kubernetes-admin"


def test_a_service_account_gets_what_its_bindings_grant_and_nothing_else(
    fake_apiserver: FakeApiServer,
) -> None:
    admin = Http(fake_apiserver)
    admin("POST", "/api/v1/namespaces", {"metadata": {"name": "ops"}})
    admin("POST", "/api/v1/namespaces/ops/configmaps", {"metadata": {"name": "c"}, "data": {}})
    admin("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "c"}, "data": {}})
    robot = Http(fake_apiserver, token=fake_apiserver.service_account_token("ops", "robot"))

    code, _, status = robot("GET", "/api/v1/namespaces/ops/configmaps/c")
    assert code == 403 and status["reason"] == "Forbidden"
    assert status["message"] == (
        f'configmaps "c" is forbidden: User "{USER}" cannot get resource "configmaps" in API group "" '
        'in the namespace "ops"'
    )
    # A namespaced Role, bound in its namespace: that namespace only, those verbs only.
    admin(
        "POST",
        f"{RBAC}/namespaces/ops/roles",
        role(
            "Role",
            "read-c",
            [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
            namespace="ops",
        ),
    )
    admin(
        "POST",
        f"{RBAC}/namespaces/ops/rolebindings",
        binding("RoleBinding", "robot", "Role", "read-c", namespace="ops"),
    )
    assert robot("GET", "/api/v1/namespaces/ops/configmaps/c")[0] == 200
    assert robot("GET", "/api/v1/namespaces/ops/configmaps")[0] == 403
    assert robot("GET", "/api/v1/namespaces/default/configmaps/c")[0] == 403

    # A ClusterRole bound cluster-wide; a subresource is a resource of its own.
    rules = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["namespaces/status"], "verbs": ["get"]},
    ]
    admin("POST", f"{RBAC}/clusterroles", role("ClusterRole", "robot", rules))
    admin(
        "POST", f"{RBAC}/clusterrolebindings", binding("ClusterRoleBinding", "robot", "ClusterRole", "robot")
    )
    assert robot("GET", "/api/v1/nodes")[0] == 200
    code, _, status = robot("GET", "/api/v1/namespaces/ops")
    assert code == 403 and status["message"].endswith("at the cluster scope")
    assert robot("GET", "/api/v1/namespaces/ops/status")[0] == 200
    assert robot("DELETE", "/api/v1/nodes/x")[0] == 403
    # The service proxy is authorized as `get services/proxy` before it looks for the Service.
    assert robot("GET", "/api/v1/namespaces/ops/services/nothing:80/proxy/health")[0] == 404
    assert robot("POST", "/api/v1/namespaces/ops/services/nothing:80/proxy/health", {})[0] == 403

    # Who did what is in the request log, with the API group RBAC saw.
    mine = {
        (r.group, r.resource, r.verb) for r in fake_apiserver.request_log if r.user == USER and r.code < 400
    }
    assert mine == {("", "configmaps", "get"), ("", "nodes", "list"), ("", "namespaces/status", "get")}
    assert granted(rules) >= mine - {("", "configmaps", "get")}
