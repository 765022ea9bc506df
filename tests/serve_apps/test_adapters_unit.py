"""Adapter materialization: checks and strength scaling (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_apps.adapters import AdapterError, materialize
from serve_apps.config import AdapterConfig


def adapter_dir(root: Path) -> Path:
    root.mkdir()
    (root / "adapter_config.json").write_text('{"r": 2, "lora_alpha": 4}')
    save_file(
        {"layer.lora_A.weight": torch.ones(2, 4), "layer.lora_B.weight": torch.full((4, 2), 2.0)},
        str(root / "adapter_model.safetensors"),
    )
    return root


def test_strength_scales_only_lora_b(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "a")
    loaded = materialize(
        AdapterConfig(name="a", path=str(source), strength=0.25),
        cache=tmp_path / "c",
        scale=True,
        base_model="m",
    )
    tensors = load_file(str(Path(loaded.path) / "adapter_model.safetensors"))
    assert torch.equal(tensors["layer.lora_A.weight"], torch.ones(2, 4))
    assert torch.equal(tensors["layer.lora_B.weight"], torch.full((4, 2), 0.5))
    again = materialize(
        AdapterConfig(name="a", path=str(source), strength=0.25),
        cache=tmp_path / "c",
        scale=True,
        base_model="m",
    )
    assert again.path == loaded.path


def test_full_strength_and_merge_engines_use_the_source(tmp_path: Path) -> None:
    source = adapter_dir(tmp_path / "a")
    full = materialize(
        AdapterConfig(name="a", path=str(source)), cache=tmp_path / "c", scale=True, base_model="m"
    )
    merged = materialize(
        AdapterConfig(name="a", path=str(source), strength=0.5),
        cache=tmp_path / "c",
        scale=False,
        base_model="m",
    )
    assert full.path == merged.path == str(source)


def test_missing_config_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError) as info:
        materialize(
            AdapterConfig(name="a", path=str(tmp_path / "empty")),
            cache=tmp_path / "c",
            scale=True,
            base_model="m",
        )
    assert info.value.reason == "AdapterInvalid"
