"""LoRA adapter directories in Kaito's layout: what an adapter image holds under `/data`.

An adapter is `adapter_config.json` (peft's, with `peft_type: LORA` and the base model) plus
`adapter_model.safetensors`. `check_adapter_dir` checks a directory before it is pushed or served.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from kairay.api.errors import KairayError
from presets.models import UnknownPresetError, resolve_preset

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES: tuple[str, ...] = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


class AdapterError(KairayError):
    """A directory is not a usable LoRA adapter (missing files, wrong base model)."""

    reason = "AdapterInvalid"
    http_status = HTTPStatus.BAD_REQUEST


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    base_model: str | None
    peft_type: str
    rank: int | None
    target_modules: tuple[str, ...]


def adapter_base_names(preset_name_or_id: str) -> frozenset[str]:
    """The names a base model may go by in an adapter: the preset's short name and its model id."""
    names = {preset_name_or_id}
    try:
        preset = resolve_preset(preset_name_or_id)
    except UnknownPresetError:
        return frozenset(n.lower() for n in names if n)
    names.update({preset.name, preset.model_id})
    return frozenset(n.lower() for n in names if n)


def check_adapter_dir(path: str | os.PathLike[str], expected_base: str | None = None) -> AdapterInfo:
    """Check that `path` holds a LoRA adapter (and, with `expected_base`, one trained on that base).

    `expected_base` is a preset name or model id; the adapter's `base_model_name_or_path` must be one
    of the preset's names. A base recorded as a filesystem path (Kaito's trainer writes its image's
    weight directory, /workspace/tfs/weights) carries no identity and is accepted.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist")
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise AdapterError(f"{path} is not a LoRA adapter: missing {', '.join(missing)}")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path / ADAPTER_CONFIG} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path / ADAPTER_CONFIG} is not a JSON object")
    peft_type = str(config.get("peft_type") or "")
    if peft_type.upper() != "LORA":
        raise AdapterError(
            f"{path} holds a {peft_type or 'unknown'} adapter; only LoRA adapters are supported"
        )
    base = config.get("base_model_name_or_path")
    base = str(base) if base else None
    if expected_base and base and not base.startswith(("/", "./", "../")):
        accepted = adapter_base_names(expected_base)
        if base.lower() not in accepted:
            raise AdapterError(
                f"adapter {path} was trained on {base!r}, not on {expected_base!r} "
                f"(accepted names: {', '.join(sorted(accepted))})"
            )
    with (path / ADAPTER_WEIGHTS).open("rb") as handle:
        header = handle.read(8)
    if len(header) < 8 or int.from_bytes(header, "little") <= 0:
        raise AdapterError(f"{path / ADAPTER_WEIGHTS} is not a safetensors file")
    target = config.get("target_modules") or []
    modules = (target,) if isinstance(target, str) else tuple(str(m) for m in target)
    rank = config.get("r")
    return AdapterInfo(
        path=path,
        base_model=base,
        peft_type=peft_type.upper(),
        rank=int(rank) if isinstance(rank, int) else None,
        target_modules=tuple(sorted(modules)),
    )
