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
from kairay.api.errors import FieldError, WorkspaceError
from kairay.api.workspace import Workspace, parse_workspace
from presets.sizing import SizingError
from presets.validation import INSTANCE_TYPE, check_workspace

_VERDICTS: Memo[None] = Memo()


class InvalidWorkspace(WorkspaceError):
    """What validation found, every problem in the message; `reason` is the first problem's condition
    reason, as the check that found it gave it (`FieldError.condition`)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)
        self.reason = errors[0].condition


def validated(obj: Mapping[str, Any]) -> Workspace:
    """The Workspace, parsed once; InvalidWorkspace when it fails the CRD, the models or the catalogs."""
    parsed: list[Workspace] = []

    def check() -> None:
        workspace, errors = check_workspace(dict(obj), fit=False)
        if errors:
            raise InvalidWorkspace(errors)
        assert workspace is not None
        parsed.append(workspace)

    _VERDICTS.get(editable(obj), check)
    return parsed[0] if parsed else parse_workspace(dict(obj))


def misfit(error: SizingError, ws: Workspace) -> InvalidWorkspace:
    """A model that does not fit the instance type, as validation reports it."""
    return InvalidWorkspace([FieldError(INSTANCE_TYPE, str(error), error.reason)])
