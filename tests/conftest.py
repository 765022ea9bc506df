"""Shared fixtures. Servers the tests start live in harness/ and tests/harness/; they bind 127.0.0.1 only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No hub, no telemetry, caches inside the work tree.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness.kairay_up import KairayUp, kairay_up, make_lora_adapter, workspace  # noqa: E402

pytest_plugins = [
    "tests.harness.fixtures",
    "tests.harness.fixtures_kubectl",
    "tests.harness.fixtures_registry",
]


@pytest.fixture(scope="session")
def local_model_dir() -> Path:
    from presets.local_model import prepare

    return prepare("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def lora_adapters(tmp_path_factory: pytest.TempPathFactory, local_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_lora_adapter(local_model_dir, root / name, seed=seed)
        for name, seed in (("adapter-a", 1), ("adapter-b", 2))
    }


# Small limits so the overload test can fill them; the other tests send one request at a time.
SERVED_LIMITS = {"kairay.io/max-ongoing-requests": "4", "kairay.io/max-queued-requests": "4"}


@pytest.fixture(scope="session", params=["vllm", "transformers"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, lora_adapters: dict[str, Path]
) -> Iterator[KairayUp]:
    """`kairay up` of the local model with two adapters: adapter-a, and the same weights at strength 0.

    Both topologies serve the same contract, so each engine takes one: vLLM the one-replica app
    (the replica answers HTTP), transformers an autoscaled app (1 to 1 replicas), which has the
    adapter-aware ingress in front.
    """
    runtime = request.param
    annotations = dict(SERVED_LIMITS)
    if runtime == "transformers":
        annotations.update({"kairay.io/min-replicas": "1", "kairay.io/max-replicas": "1"})
    ws = workspace(
        f"smol-{runtime}",
        runtime=runtime,
        adapters=[
            {"name": "adapter-a", "path": lora_adapters["adapter-a"], "strength": "1.0"},
            {"name": "adapter-zero", "path": lora_adapters["adapter-a"], "strength": "0"},
        ],
        annotations=annotations,
    )
    with kairay_up(tmp_path_factory.mktemp(f"up-{runtime}"), ws) as up:
        yield up
