"""Section 3: several LLM replicas, more adapters than one replica holds, LoRA-aware vs random routing.

The Workspace asks for N replicas through `kairay.io/min-replicas` / `max-replicas` and carries M
adapters; `controller.render` renders it as for `kairay up`, and the variant app of
`benchmarks.routing_app` is deployed in its place so that both routing modes run on the same
replicas, interleaved (ABBA over rounds), with the same prompts.

Per replica: requests served and adapter loads/unloads come from Serve's own per-replica counters
(Ray's Prometheus endpoint), because the app's `/health` and `replica_info` list the adapters a
replica *may* serve (all of them, materialized on disk), not the ones loaded in its engine. A probe
after each mode asks each adapter twice and records the `x-kairay-replica` response header.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import fixtures
from benchmarks.context import Context
from benchmarks.loadgen import Load, pooled, run_load
from benchmarks.servers import ServeConfigServer, session_dir
from benchmarks.serving import engine_log_figures
from benchmarks.settings import MODEL, RANDOM_SUFFIX
from controller.render import render
from kairay.api.workspace import parse_workspace
from serve_apps.config import LLM_DEPLOYMENT
from serve_apps.local import DEFAULT_TEMP_DIR

VARIANT_IMPORT_PATH = "benchmarks.routing_app:build_app"
# Requests of the load (the chat route), not the /metrics and /health calls that also reach the replicas.
LOAD_ROUTE = "/v1/chat/completions"
COUNTERS = {
    "ray_serve_deployment_request_counter_total": "requests",
    "ray_serve_multiplexed_models_load_counter_total": "adapter_loads",
    "ray_serve_multiplexed_models_unload_counter_total": "adapter_unloads",
    "ray_serve_multiplexed_model_load_latency_ms_sum": "load_ms_sum",
}


def scrape(metrics_url: str) -> dict[str, dict[str, float]]:
    """Serve's counters of the LLM deployment, by replica id."""
    text = httpx.get(metrics_url, timeout=10).text
    out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COUNTERS.values(), 0.0))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = COUNTERS.get(sample.name)
            if field == "requests" and sample.labels.get("route") != LOAD_ROUTE:
                continue
            if field and sample.labels.get("deployment") == LLM_DEPLOYMENT:
                out[sample.labels.get("replica", "?")][field] += sample.value
    return dict(out)


def delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    zero = dict.fromkeys(COUNTERS.values(), 0.0)
    return {
        replica: {k: v - before.get(replica, zero)[k] for k, v in values.items()}
        for replica, values in after.items()
    }


def settled(
    metrics_url: str, before: dict[str, dict[str, float]], requests: int, timeout: float = 45
) -> dict[str, dict[str, float]]:
    """Counters once every request of the run shows up (Ray exports metrics every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        after = scrape(metrics_url)
        seen = sum(v["requests"] for v in delta(before, after).values())
        if seen >= requests or time.monotonic() > deadline:
            return after
        time.sleep(1.0)


def probe(url: str, models: list[str]) -> dict[str, list[str]]:
    """Which replica answers each model, asked twice (one-token answers)."""
    placement: dict[str, list[str]] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for model in models:
            for _ in range(2):
                response = client.post(
                    "/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "Hi"}],
                        "max_completion_tokens": 1,
                    },
                )
                placement.setdefault(model, []).append(response.headers.get("x-kairay-replica", "?"))
    return placement


def engine_affinity(root_pid: int) -> list[list[int]]:
    """CPU sets of the vLLM worker processes under `root_pid` (vLLM CPU pins its OpenMP threads)."""
    sets = []
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            if "VLLM::Worker" in " ".join(proc.cmdline()):
                sets.append(sorted(proc.cpu_affinity() or []))
        except psutil.Error:
            continue
    return sets


def variant_config(lora: dict[str, Path], replicas: int) -> dict[str, Any]:
    ws = fixtures.bench_workspace(
        "bench-routing",
        lora,
        annotations={"kairay.io/min-replicas": str(replicas), "kairay.io/max-replicas": str(replicas)},
    )
    config = render(parse_workspace(ws), "local").serve_config
    config["applications"][0]["import_path"] = VARIANT_IMPORT_PATH
    return config


def run(ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    model = fixtures.model_dir()
    lora = fixtures.adapters(model, sizes.routing_adapters)
    names = sorted(lora)
    config = variant_config(lora, sizes.routing_replicas)
    config_path = ctx.raw_dir / "routing-serve-config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2))
    server = ServeConfigServer(config_path, ctx.raw_dir / "routing-server.log")
    ctx.log(f"section 3: starting {sizes.routing_replicas} replicas with {len(names)} adapters")
    runs: list[dict[str, Any]] = []
    try:
        server.start()
        assert server.launched is not None
        ctx.log(f"replicas ready in {server.ready_at - server.launched.launched_at:.0f}s")
        warm = Load(4, 8, sizes.input_len, 8, seed=98)
        run_load(server.url, model, MODEL, warm, result_dir=ctx.raw_dir, label="warmup-routing")
        modes = {"multiplexed": tuple(names), "random": tuple(n + RANDOM_SUFFIX for n in names)}
        for round_index in range(sizes.routing_rounds):
            order = list(modes) if round_index % 2 == 0 else list(reversed(modes))
            for mode in order:
                load = Load(
                    sizes.routing_concurrency,
                    sizes.routing_prompts,
                    sizes.input_len,
                    sizes.routing_output_len,
                    seed=3000 + round_index,
                    models=modes[mode],
                )
                before = scrape(server.metrics_url)
                label = f"routing-{mode}-r{round_index}"
                result = run_load(server.url, model, MODEL, load, result_dir=ctx.raw_dir, label=label)
                per_replica = delta(before, settled(server.metrics_url, before, load.num_prompts))
                summary = pooled([result])
                ctx.log(
                    f"{label}: {summary['output_throughput']:.1f} tok/s, "
                    f"adapter loads {sum(v['adapter_loads'] for v in per_replica.values()):.0f}"
                )
                runs.append({"mode": mode, "round": round_index, "result": result, "replicas": per_replica})
        placement = {mode: probe(server.url, list(models)) for mode, models in modes.items()}
        affinity = engine_affinity(server.pid)
        session = session_dir(Path(DEFAULT_TEMP_DIR), server.pid)
        worker_logs = (
            [p.read_text(errors="replace") for p in session.glob("logs/worker-*.out")] if session else []
        )
        start_s = server.ready_at - server.launched.launched_at
    finally:
        ctx.log("stopping the routing replicas")
        server.stop()
    cells = []
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        replicas: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COUNTERS.values(), 0.0))
        for r in mine:
            for replica, values in r["replicas"].items():
                for k, v in values.items():
                    replicas[replica][k] += v
        cells.append({"mode": mode, **pooled([r["result"] for r in mine]), "replicas": dict(replicas)})
    return {
        "replicas": sizes.routing_replicas,
        "adapters": names,
        "max_adapters_per_replica": config["applications"][0]["args"]["max_adapters_per_replica"],
        "cells": cells,
        "runs": [
            {k: v for k, v in r.items() if k != "result"} | {"summary": pooled([r["result"]])} for r in runs
        ],
        "placement": placement,
        "engine_cpu_affinity": affinity,
        "start_s": start_s,
        "vllm": engine_log_figures(worker_logs),
    }
