"""Per-workload builders, pure: a Workspace → its `DesiredState` (children, plan, nodes).

`inference` builds a RayService and its Service, `tuning` a RayJob; `common` holds what both share.
"""

from __future__ import annotations

from typing import Any

from controller.settings import Settings
from controller.workloads.common import DesiredState
from controller.workloads.inference import inference_state
from controller.workloads.tuning import tuning_state
from kairay.api.workspace import Workspace


def desired_state(
    ws: Workspace, settings: Settings | None = None, engine_overrides: dict[str, Any] | None = None
) -> DesiredState:
    """What the Workspace asks of the cluster. `engine_overrides` are the extra engine args of an
    inference Workspace's ConfigMap. Raises ValueError (RenderError, SizingError) for a Workspace that
    cannot be built."""
    settings = settings or Settings()
    if ws.inference is not None:
        return inference_state(ws, settings, engine_overrides)
    return tuning_state(ws, settings)


def render_objects(
    ws: Workspace, settings: Settings | None = None, engine_overrides: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every cluster object of the Workspace, for `kairay render` and tests."""
    return desired_state(ws, settings, engine_overrides).objects
