"""Authentication by bearer token and RBAC authorization, as kube-apiserver does them.

Every resource request is checked against the stored Roles, ClusterRoles and their bindings; the
test's admin token belongs to `system:masters` (allowed everything, like a cluster admin's
kubeconfig), and so does a request without a token (see `ApiServerApp.authenticate`); a
ServiceAccount's token is allowed what its bindings grant, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.apiserver.errors import ApiError, group_resource
from harness.apiserver.patches import JsonObj
from harness.apiserver.store import Store

RBAC = "rbac.authorization.k8s.io"
ROLES, CLUSTER_ROLES = (RBAC, "roles"), (RBAC, "clusterroles")
ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS = (RBAC, "rolebindings"), (RBAC, "clusterrolebindings")
MASTERS = "system:masters"


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]


ADMIN = Identity("kubernetes-admin", (MASTERS, "system:authenticated"))


def service_account(namespace: str, name: str) -> Identity:
    return Identity(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


@dataclass(frozen=True)
class Attributes:
    """What one request asks to do: RBAC's verb, API group, resource[/subresource], scope, name."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None


def _subject_is(subject: Mapping[str, Any], who: Identity) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == who.user
    if kind == "Group":
        return name in who.groups
    if kind == "ServiceAccount":
        return who.user == f"system:serviceaccount:{subject.get('namespace')}:{name}"
    return False


def rule_allows(rule: Mapping[str, Any], request: Attributes) -> bool:
    def has(key: str, value: str) -> bool:
        listed = rule.get(key) or ()
        return value in listed or "*" in listed

    if not (has("verbs", request.verb) and has("apiGroups", request.group)):
        return False
    base = request.resource.split("/")[0]
    resources = rule.get("resources") or ()
    if not (
        request.resource in resources
        or "*" in resources
        or ("/" in request.resource and f"{base}/*" in resources)
        or ("/" not in request.resource and "*/" + request.resource in resources)
    ):
        return False
    names = rule.get("resourceNames") or ()
    return not names or request.name in names


class Authorizer:
    """RBAC over the Roles, ClusterRoles and bindings in the store, read at each request (so a
    change to them applies at once, as the real server's informers make it apply within moments)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def rules_for(self, who: Identity, namespace: str | None) -> list[JsonObj]:
        """Every rule bound to `who`: cluster-wide, plus the namespace's when one is given."""
        rules: list[JsonObj] = []
        for binding in self._store.stored(CLUSTER_ROLE_BINDINGS, None):
            if any(_subject_is(s, who) for s in binding.get("subjects") or ()):
                rules += self._role_rules(binding, None)
        if namespace:
            for binding in self._store.stored(ROLE_BINDINGS, namespace):
                if any(_subject_is(s, who) for s in binding.get("subjects") or ()):
                    rules += self._role_rules(binding, namespace)
        return rules

    def _role_rules(self, binding: JsonObj, namespace: str | None) -> list[JsonObj]:
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            role = self._store.find(CLUSTER_ROLES, None, ref.get("name", ""))
        else:
            role = self._store.find(ROLES, namespace, ref.get("name", ""))
        return list((role or {}).get("rules") or ())

    def check(self, who: Identity, request: Attributes) -> None:
        """Raise the real server's 403 unless `who` may do `request`."""
        if MASTERS in who.groups:
            return
        if any(rule_allows(rule, request) for rule in self.rules_for(who, request.namespace)):
            return
        plural = request.resource.split("/")[0]
        target = (
            f'{group_resource(plural, request.group)} "{request.name}"'
            if request.name
            else (group_resource(plural, request.group))
        )
        where = f' in the namespace "{request.namespace}"' if request.namespace else " at the cluster scope"
        raise ApiError(
            403,
            f'{target} is forbidden: User "{who.user}" cannot {request.verb} resource "{request.resource}" '
            f'in API group "{request.group}"{where}',
            details={"name": request.name or "", "group": request.group, "kind": plural},
        )


def granted(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every combination the rules list (no wildcards expected)."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups") or ()
        for resource in rule.get("resources") or ()
        for verb in rule.get("verbs") or ()
    }
