"""The validation step: a Workspace dict → the typed Workspace, parsed once, or `InvalidWorkspace`
with the condition reason Kaito gives the first problem.

The verdict depends only on what a user can edit, so it is memoised on that. Whether the model fits
the instance type is left to the sizing in `controller.workloads` (one sizing per reconcile), whose
SizingError `misfit` turns into the same verdict validation would have given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.memo import Memo, editable
from kairay.api.errors import FieldError
from kairay.api.workspace import Workspace, parse_workspace
from presets.sizing import SizingError
from presets.skus import UnknownInstanceTypeError, get_sku
from presets.validation import INSTANCE_TYPE, check_workspace

REASON_INVALID_PRESET = "InvalidPreset"
REASON_INVALID_INSTANCE_TYPE = "InvalidInstanceType"
REASON_INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
REASON_UNSUPPORTED_TUNING_METHOD = "UnsupportedTuningMethod"
REASON_INVALID_WORKSPACE = "InvalidWorkspace"

_VERDICTS: Memo[None] = Memo()


class InvalidWorkspace(ValueError):
    """What validation found, every problem in the message; `reason` is the condition reason."""

    def __init__(self, errors: list[FieldError], instance_type: str) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.reason = _reason(errors[0], instance_type)


def validated(obj: Mapping[str, Any]) -> Workspace:
    """The Workspace, parsed once; InvalidWorkspace when it fails the CRD, the models or the catalogs."""
    parsed: list[Workspace] = []

    def check() -> None:
        workspace, errors = check_workspace(dict(obj), fit=False)
        if errors:
            raise InvalidWorkspace(errors, str((obj.get("resource") or {}).get("instanceType") or ""))
        assert workspace is not None
        parsed.append(workspace)

    _VERDICTS.get(editable(obj), check)
    return parsed[0] if parsed else parse_workspace(dict(obj))


def misfit(error: SizingError, ws: Workspace) -> InvalidWorkspace:
    """A model that does not fit the instance type, as validation reports it."""
    return InvalidWorkspace([FieldError(INSTANCE_TYPE, str(error))], ws.resource.instance_type)


def _reason(first: FieldError, instance_type: str) -> str:
    if first.field.endswith("preset.name"):
        return REASON_INVALID_PRESET
    if first.field == INSTANCE_TYPE:
        try:
            get_sku(instance_type)
        except UnknownInstanceTypeError:
            return REASON_INVALID_INSTANCE_TYPE
        return REASON_INSUFFICIENT_GPU_MEMORY
    if first.field == "tuning.method":
        return REASON_UNSUPPORTED_TUNING_METHOD
    return REASON_INVALID_WORKSPACE
