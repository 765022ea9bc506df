"""What every section runs: the model, the engine flags shared by raw vLLM and kairay, and the sizes.

The sizes are scaled so that the whole run fits in 30 minutes on a 2-core CPU box that other work
shares: few prompts at low concurrency (each request takes seconds there), short outputs, and the
same workload (same seeds) for both sides of every comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
# Per-request vLLM bench files and server logs: large, and only for digging into one run.
RAW_DIR = RESULTS_DIR / "raw"
REPORT = REPO / "BENCHMARKS.md"
# Adapters are deterministic in their seed, so later runs reuse them instead of rebuilding (≈ 5 s each).
ADAPTER_CACHE = REPO / ".cache" / "bench" / "adapters"

MODEL = "smollm2-135m-instruct"
# The flags of the raw server; kairay's local render of the Workspace yields the same engine args
# (checked at run time against `kairay render`, see `servers.kairay_engine_args`). float32 is
# kairay's CPU dtype (presets/cpu.py); both sides serve it.
ENGINE_FLAGS = (
    "--enforce-eager",
    "--max-model-len",
    "2048",
    "--dtype",
    "float32",
    "--enable-lora",
    "--max-loras",
    "4",
    "--max-lora-rank",
    "16",
)
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
LORA_RANK = 8

# `model: "<adapter>@random"` asks the routing variant (benchmarks/routing_app.py) to route without
# the adapter as Serve's multiplexed model id.
RANDOM_SUFFIX = "@random"

ALL_SECTIONS = ("serving", "lora", "routing", "controller", "cold_start")


@dataclass(frozen=True)
class Sizes:
    """How much load each section sends; `FULL` is `make bench`, `QUICK` is `--quick`."""

    input_len: int = 128
    output_len: int = 32
    # Non-streaming answers arrive whole, so only their latency matters: a short answer keeps the
    # added latency (tens of ms) visible above the generation time.
    nostream_output_len: int = 16
    rounds: int = 2
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    # Prompts per (server, concurrency, round): more than one wave up to 16; one wave at 64, where two
    # would cost minutes per run here.
    prompts: dict[int, int] = field(default_factory=lambda: {1: 5, 4: 8, 16: 24, 64: 64})
    nostream_prompts: int = 10
    warmup_prompts: int = 8
    lora_concurrency: int = 16
    # LoRA requests run ~3x slower than base ones on this CPU: one wave per run.
    lora_prompts: int = 16
    lora_adapters: int = 4
    # Rounds of the raw vLLM reference for section 2 (0: none); kairay always gets `rounds`.
    lora_raw_rounds: int = 1
    routing_replicas: int = 2
    routing_adapters: int = 8
    routing_concurrency: int = 16
    routing_prompts: int = 32
    # Short answers: what routing changes is where adapters load, which prefill and loads dominate.
    routing_output_len: int = 16
    routing_rounds: int = 2
    workspaces: int = 1000
    # The whole run's budget; sections check it and skip their optional parts when it runs short.
    budget_s: float = 30 * 60

    def prompts_at(self, concurrency: int) -> int:
        return self.prompts.get(concurrency, 2 * concurrency)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["prompts"] = {str(k): v for k, v in self.prompts.items()}
        return values


FULL = Sizes()
QUICK = Sizes(
    output_len=16,
    rounds=1,
    concurrency=(1, 16),
    prompts={1: 3, 16: 16},
    nostream_prompts=4,
    nostream_output_len=8,
    warmup_prompts=4,
    lora_prompts=8,
    lora_raw_rounds=0,
    routing_prompts=16,
    routing_rounds=1,
    workspaces=50,
    budget_s=5 * 60,
)
