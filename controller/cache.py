"""The watch cache: the latest Workspaces, RayServices and Services the watches delivered (or the
controller wrote).

A reconcile reads these rather than the API server; a stale copy only costs a 409 on the write that
relied on it, after which the next attempt reads afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)


class WatchCache:
    def __init__(self) -> None:
        self._workspaces: dict[Key, dict[str, Any]] = {}
        self._rayservices: dict[Key, dict[str, Any]] = {}
        self._services: dict[Key, dict[str, Any]] = {}

    def observe_workspace(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Keep the copy; whether it tells anything new (not the echo of a write made here, which the
        reconcile that made it has already acted on)."""
        held = self._workspaces.get(key(body))
        _remember(self._workspaces, body, deleted)
        if held is None:
            return True
        return _resource_version(held) != _resource_version(body) and not _older(
            body.get("metadata") or {}, held.get("metadata") or {}
        )

    def observe_rayservice(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        _remember(self._rayservices, body, deleted)

    def observe_service(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        _remember(self._services, body, deleted)

    def correct_rayservice(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """What a read from the API server found (None: nothing): a watch that was down may have
        missed a deletion, which a re-list does not report."""
        _correct(self._rayservices, (namespace, name), body)

    def correct_service(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        _correct(self._services, (namespace, name), body)

    def forget_workspace(self, namespace: str, name: str) -> None:
        """The API server has no such Workspace (its deletion was missed while the watch was down)."""
        self._workspaces.pop((namespace, name), None)

    def workspace(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The latest copy of a Workspace, if the watch has reported it."""
        return self._workspaces.get((namespace, name))

    def workspaces(self) -> list[Key]:
        """Every Workspace the watch has reported and not seen deleted."""
        return list(self._workspaces)

    def rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        # Unseen by the watch means not there yet: a create that finds it after all gets a 409.
        return self._rayservices.get((namespace, name))

    def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._services.get((namespace, name))


def key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")


def _remember(cache: dict[Key, dict[str, Any]], body: Mapping[str, Any], deleted: bool) -> None:
    """Keep `body` as the latest copy of its object unless the cache holds a newer one (a watch
    event can overtake the answer to the write that caused it)."""
    metadata = body.get("metadata") or {}
    held_key = key(body)
    if deleted:
        cache.pop(held_key, None)
        return
    held = cache.get(held_key)
    if held is None or not _older(metadata, held.get("metadata") or {}):
        # Not copied: watch events and API answers are fresh objects, and nothing here modifies them.
        cache[held_key] = dict(body)


def _correct(cache: dict[Key, dict[str, Any]], held_key: Key, body: Mapping[str, Any] | None) -> None:
    if body is None:
        cache.pop(held_key, None)
    else:
        _remember(cache, body, deleted=False)


def _resource_version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _older(metadata: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether `metadata` describes an older version of the same object than `than`. resourceVersions
    are opaque to clients, but the API server's are etcd revisions: compare them when both are."""
    if metadata.get("uid") != than.get("uid"):
        return False
    mine, theirs = str(metadata.get("resourceVersion") or ""), str(than.get("resourceVersion") or "")
    return mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)
