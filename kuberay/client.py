"""A thin client for KubeRay's ray.io/v1 RayServices and RayJobs over `kubernetes.client.CustomObjectsApi`,
and the one translation of the API server's 404 and 409 answers that every kairay caller goes through."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kuberay.cluster import GROUP, VERSION

T = TypeVar("T")
Plural = Literal["rayservices", "rayjobs"]
RAYSERVICES: Plural = "rayservices"
RAYJOBS: Plural = "rayjobs"

# Hash of the spec kairay last applied. The API server adds defaulted fields to the stored spec, so the
# stored spec alone cannot tell "unchanged" from "a field we no longer set".
SPEC_HASH_ANNOTATION = "kairay.io/spec-hash"

ApplyAction = Literal["created", "patched", "unchanged"]

# Metadata kairay owns on a RayService; labels and annotations merge with what others set.
_APPLIED_METADATA = ("labels", "annotations", "ownerReferences")


class NotFound(ApiException):
    """The API answered 404: the object does not exist."""


class Conflict(ApiException):
    """The API answered 409: what was read is stale (or was created meanwhile); read again."""


def describe(exc: ApiException) -> str:
    # Status and reason only: response bodies and headers stay out of events, logs and status.
    return f"Kubernetes API error {exc.status} {exc.reason}"


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, a Kubernetes client call, with a 404 raised as `NotFound` and a 409 as
    `Conflict` (both still `ApiException`s, without the response body)."""
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        translated = {404: NotFound, 409: Conflict}.get(exc.status or 0)
        if translated is None:
            raise
        raise translated(status=exc.status, reason=exc.reason) from None


def found(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(fn, ...)`, or None when the object does not exist."""
    try:
        return call(fn, *args, **kwargs)
    except NotFound:
        return None


@dataclass(frozen=True)
class ApplyResult:
    action: ApplyAction
    object: dict[str, Any]


def spec_hash(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class KubeRayClient:
    """get / create / merge-patch / delete of RayServices and RayJobs, plus an idempotent
    `apply_rayservice`. Errors other than a 404 on get/delete propagate as `ApiException` (a 409 as
    `Conflict`)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api = client.CustomObjectsApi(api_client)

    def get(self, plural: Plural, namespace: str, name: str) -> dict[str, Any] | None:
        return cast(
            dict[str, Any] | None,
            found(self._api.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name),
        )

    def create(self, plural: Plural, body: dict[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        created = call(self._api.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body)
        return cast(dict[str, Any], created)

    def patch(self, plural: Plural, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): dicts merge, lists are replaced, `None` deletes a key."""
        patched = call(
            self._api.patch_namespaced_custom_object,
            *(GROUP, VERSION, namespace, plural, name, patch),
            _content_type="application/merge-patch+json",
        )
        return cast(dict[str, Any], patched)

    def delete(self, plural: Plural, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete; False when it was already gone. `uid`: only that object (a 409 if the name is now
        another's), not whatever holds the name by the time the request arrives."""
        options = (
            {"body": client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))} if uid else {}
        )
        try:
            call(
                self._api.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, **options
            )
        except NotFound:
            return False
        return True

    def apply_rayservice(
        self, desired: dict[str, Any], existing: dict[str, Any] | None = None, *, read: bool = True
    ) -> ApplyResult:
        """Create the RayService, or patch it when its spec, labels, annotations or owner references
        differ from `desired`; otherwise leave it alone. The patch carries the resourceVersion that was
        compared, so a concurrent writer makes it fail with 409 instead of being overwritten.

        `read=False` compares with `existing` (None: there is none) instead of reading the RayService,
        for a caller that watches RayServices; a stale `existing` costs a 409, never a lost write."""
        desired = copy.deepcopy(desired)
        metadata = desired["metadata"]
        metadata.setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(desired["spec"])
        if read:
            existing = self.get(RAYSERVICES, metadata["namespace"], metadata["name"])
        if existing is None:
            return ApplyResult("created", self.create(RAYSERVICES, desired))
        wanted = {
            "metadata": {key: metadata[key] for key in _APPLIED_METADATA if key in metadata},
            "spec": desired["spec"],
        }
        if is_subset(wanted, existing):
            return ApplyResult("unchanged", existing)
        patch = {
            "metadata": wanted["metadata"] | {"resourceVersion": existing["metadata"]["resourceVersion"]},
            "spec": merge_patch_diff(existing.get("spec") or {}, desired["spec"]),
        }
        return ApplyResult("patched", self.patch(RAYSERVICES, metadata["namespace"], metadata["name"], patch))


def merge_patch_diff(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` into `desired`: changed keys set, missing keys nulled."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            nested = merge_patch_diff(old, value)
            if nested:
                patch[key] = nested
        elif key not in current or old != value:
            patch[key] = copy.deepcopy(value)
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch


def is_subset(wanted: Any, actual: Any) -> bool:
    """Every value in `wanted` is in `actual`; `actual` may carry more (server defaults, others' labels)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and is_subset(value, actual[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(is_subset(item, other) for item, other in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)
