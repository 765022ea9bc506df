"""Which objects a Workspace may touch: only those whose owner references name its uid.

Children are found by name (the Workspace's own), so an object that merely carries that name (a
Service someone else made, or a child of an earlier Workspace of the same name still being deleted)
must be neither adopted, nor updated, nor deleted with the Workspace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.conditions import REASON_RESOURCE_CONFLICT, Problem


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether `obj` names the Workspace of `uid` among its owners."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in references)


def conflict(kind: str, obj: Mapping[str, Any]) -> Problem:
    """The problem of a child's name held by `obj`, which the Workspace does not own."""
    metadata = obj.get("metadata") or {}
    name = f"{metadata.get('namespace')}/{metadata.get('name')}"
    if metadata.get("deletionTimestamp"):
        why = "is still being deleted and belongs to an earlier Workspace of this name; waiting for it to go"
    else:
        why = "exists and is not owned by this Workspace; kairay leaves it untouched (delete or rename it)"
    # Not final: it resolves once the object is gone.
    return Problem(REASON_RESOURCE_CONFLICT, f"{kind} {name} {why}", final=False)
