"""The checks the Workspace API itself makes, in the order a user meets them.

1. The CRD: structural schema and CEL rules, what `kubectl apply` enforces.
2. The pydantic models, the edge of the typed world (annotations included, see `options`).

What only kairay's catalogs know (the preset, the instance type, whether the model fits) is checked
one layer up, by `presets.validation.validate_workspace`, which runs these first.
"""

from __future__ import annotations

import functools
from typing import Any

from kairay.api.crds import load_crd, validate_object
from kairay.api.errors import WorkspaceError
from kairay.api.workspace import Workspace, parse_workspace


def parse_valid_workspace(obj: dict[str, Any], old: dict[str, Any] | None = None) -> Workspace:
    """The Workspace in `obj` (created, or updated from `old`) if the CRD and the models accept it.

    Raises WorkspaceError with every problem; the models run only when the CRD passed, since their
    errors would restate the CRD's.
    """
    errors = validate_object(_crd(), obj, old)
    if errors:
        raise WorkspaceError(errors)
    return parse_workspace(obj)


@functools.cache
def _crd() -> dict[str, Any]:
    return load_crd()
