"""Memoised results of the pure steps of a reconcile (validation, rendering), keyed on what a user can
edit in a Workspace: every pass runs them, and most passes find the Workspace unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

V = TypeVar("V")

# What kopf's change handlers recorded on Workspaces in earlier versions of the controller.
_KOPF_ANNOTATIONS = frozenset(
    f"kairay.io/{key}" for key in ("last-handled-configuration", "reconcile", "finalize")
)
# Memoised results are dropped all at once beyond this many.
MAX_ENTRIES = 10_000


def editable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a user can change in a Workspace: all but the status, the server's metadata and kopf's
    bookkeeping annotations."""
    metadata = obj.get("metadata") or {}
    kept = {key: value for key, value in obj.items() if key not in ("metadata", "status")}
    kept["metadata"] = {k: metadata.get(k) for k in ("name", "namespace", "labels")}
    kept["metadata"]["annotations"] = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in _KOPF_ANNOTATIONS
    }
    return kept


class Memo(Generic[V]):
    """`compute()`'s result per key, or the ValueError it raised (raised again on each lookup)."""

    def __init__(self) -> None:
        self._held: dict[str, V | ValueError] = {}

    def get(self, key: Any, compute: Callable[[], V]) -> V:
        text = json.dumps(key, sort_keys=True, default=repr)
        if text not in self._held:
            if len(self._held) >= MAX_ENTRIES:
                self._held.clear()
            try:
                self._held[text] = compute()
            except ValueError as exc:
                self._held[text] = exc
        held = self._held[text]
        if isinstance(held, ValueError):
            # A fresh traceback each time, not one that grows with every raise.
            raise held.with_traceback(None)
        return held
