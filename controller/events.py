"""Kubernetes Events about a Workspace, posted through kopf's queue (in a handler's context)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import kopf

EventType = Literal["Normal", "Warning"]


def event(obj: Mapping[str, Any], kind: EventType, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, obj), type=kind, reason=reason, message=message)
