"""Model presets, GPU instance types and the sizing estimator: pure data and arithmetic."""

from presets.models import (
    PRESETS,
    ModelPreset,
    UnknownPresetError,
    custom_preset,
    get_preset,
    preset_from_directory,
    resolve_preset,
)
from presets.sizing import (
    InferencePlan,
    SizingError,
    TuningPlan,
    format_plan,
    plan_inference,
    plan_local,
    plan_tuning,
)
from presets.skus import SKUS, GpuSku, UnknownInstanceTypeError, get_sku

__all__ = [
    "PRESETS",
    "SKUS",
    "GpuSku",
    "InferencePlan",
    "ModelPreset",
    "SizingError",
    "TuningPlan",
    "UnknownInstanceTypeError",
    "UnknownPresetError",
    "custom_preset",
    "format_plan",
    "get_preset",
    "get_sku",
    "plan_inference",
    "plan_local",
    "plan_tuning",
    "preset_from_directory",
    "resolve_preset",
]
