"""Every check a Workspace must pass before kairay acts on it: the Workspace API's own checks (CRD,
models), then what only kairay's catalogs know: the preset, the instance type, and whether the model
fits.

The result depends on the Workspace alone, never on the machine running the check: `kairay up` on
a laptop accepts a Workspace that names a GPU instance type (it is checked against the SKU catalog,
then served on the local CPU), so the same file works locally and on a cluster.

Each FieldError carries the condition reason of the error that found it (`FieldError.condition`),
so the controller reports `InvalidPreset` or `InsufficientGPUMemory` without reading field paths.
"""

from __future__ import annotations

from typing import Any

from kairay.api.errors import FieldError, WorkspaceError
from kairay.api.options import Runtime
from kairay.api.validation import parse_valid_workspace
from kairay.api.workspace import InferenceSpec, TuningSpec, Workspace
from presets.models import ModelPreset, UnknownPresetError, resolve_preset
from presets.sizing import SizingError, plan_inference, plan_tuning
from presets.skus import GpuSku, UnknownInstanceTypeError, get_sku

INSTANCE_TYPE = "resource.instanceType"
REASON_UNSUPPORTED_TUNING_METHOD = "UnsupportedTuningMethod"


def validate_workspace(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """Every problem with creating ``obj`` (or updating ``old`` to it); empty when it is valid."""
    return check_workspace(obj, old)[1]


def check_workspace(
    obj: dict[str, Any], old: dict[str, Any] | None = None, *, fit: bool = True
) -> tuple[Workspace | None, list[FieldError]]:
    """The Workspace as parsed (None when it does not get that far) and every problem with it.

    Each stage runs only when the one before passed: its errors would restate the earlier ones.
    `fit=False` leaves out whether the model fits the instance type, for a caller that sizes the
    Workspace right after anyway (the controller, which then sizes it once).
    """
    try:
        workspace = parse_valid_workspace(obj, old)
    except WorkspaceError as exc:
        return None, exc.errors
    return workspace, catalog_errors(workspace, fit=fit)


def catalog_errors(workspace: Workspace, *, fit: bool = True) -> list[FieldError]:
    """The checks the CRD cannot make: known preset, known instance type, supported tuning, and (with
    `fit`) whether the model fits."""
    errors: list[FieldError] = []
    sku: GpuSku | None = None
    if workspace.resource.instance_type:
        try:
            sku = get_sku(workspace.resource.instance_type)
        except UnknownInstanceTypeError as exc:
            errors.append(FieldError(INSTANCE_TYPE, str(exc), exc.reason))
    sized = sku if fit else None
    if workspace.inference is not None:
        errors.extend(_inference_errors(workspace.inference, sized, workspace.runtime))
    if workspace.tuning is not None:
        errors.extend(_tuning_errors(workspace.tuning, sized))
    return errors


def _resolve(name: str, field: str) -> tuple[ModelPreset | None, list[FieldError]]:
    try:
        return resolve_preset(name), []
    except UnknownPresetError as exc:
        return None, [FieldError(field, str(exc), exc.reason)]


def _inference_errors(inference: InferenceSpec, sku: GpuSku | None, runtime: Runtime) -> list[FieldError]:
    if inference.preset is None:
        # A custom pod template brings its own model: there is nothing to size.
        return []
    preset, errors = _resolve(inference.preset.name, "inference.preset.name")
    # Without an instance type the nodes are the user's own (or the local machine's CPU): no
    # SKU to size against.
    if preset is not None and sku is not None:
        # vLLM spreads a model over several nodes; the transformers engine runs in one process.
        node_count = 1 if runtime == "transformers" else None
        try:
            plan_inference(preset, sku, node_count=node_count)
        except SizingError as exc:
            errors.append(FieldError(INSTANCE_TYPE, str(exc), exc.reason))
    return errors


def _tuning_errors(tuning: TuningSpec, sku: GpuSku | None) -> list[FieldError]:
    preset, errors = _resolve(tuning.preset.name, "tuning.preset.name")
    if preset is None:
        return errors
    if tuning.method not in preset.tuning:
        supported = ", ".join(sorted(preset.tuning))
        reason = (
            f"preset {preset.name} does not support {tuning.method} tuning (supported: {supported})"
            if supported
            else f"preset {preset.name} does not support tuning"
        )
        return [FieldError("tuning.method", reason, REASON_UNSUPPORTED_TUNING_METHOD)]
    if sku is not None:
        try:
            plan_tuning(preset, sku, tuning.method)
        except SizingError as exc:
            return [FieldError(INSTANCE_TYPE, str(exc), exc.reason)]
    return []
