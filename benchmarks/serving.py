"""Sections 1 (serving overhead), 2 (multi-LoRA) and 5 (cold start): one raw vLLM server and one
`kairay up`, started once and measured in alternation.

Both servers stay up for the whole comparison, so the one not under load idles next to the one
measured; its CPU use is recorded with every run (`idle_cpu_s`) so that the effect is visible. The
order alternates per round (raw, kairay, then kairay, raw: ABBA) so that a linear drift of the
machine's load cancels, and each (round, level) cell sends both servers the same prompts (same seed).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from benchmarks import fixtures
from benchmarks.context import Context
from benchmarks.loadgen import Load, RunResult, pooled, run_load
from benchmarks.servers import Kairay, RawVLLM, cpu_by_role, cpu_seconds, first_token_s, session_dir
from benchmarks.settings import MODEL
from serve_apps.local import DEFAULT_TEMP_DIR


class Server(Protocol):
    name: str
    ready_at: float

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...


@dataclass
class Bench:
    """The two servers and the run bookkeeping shared by the sections."""

    ctx: Context
    model_dir: Path
    raw: RawVLLM
    kairay: Kairay

    def servers(self, round_index: int) -> tuple[Server, Server]:
        return (self.raw, self.kairay) if round_index % 2 == 0 else (self.kairay, self.raw)

    def measure(self, server: Server, load: Load, label: str, **tags: Any) -> dict[str, Any]:
        """One load run on `server`, with the CPU time of both servers' process trees."""
        other: Server = self.kairay if server is self.raw else self.raw
        roles0, idle0 = cpu_by_role(server.pid), cpu_seconds(other.pid)
        result = run_load(server.url, self.model_dir, MODEL, load, result_dir=self.ctx.raw_dir, label=label)
        roles = {role: cpu - roles0.get(role, 0.0) for role, cpu in cpu_by_role(server.pid).items()}
        busy, idle = sum(roles.values()), cpu_seconds(other.pid) - idle0
        summary = pooled([result])
        self.ctx.log(
            f"{label}: {result.completed} ok, {result.failed} failed, "
            f"{summary['output_throughput']:.1f} tok/s, TTFT p50 {_fmt(summary['ttft_ms']['p50'])} ms"
        )
        return {
            "server": server.name,
            **tags,
            "concurrency": load.concurrency,
            "prompts": load.num_prompts,
            "stream": load.stream,
            "output_len": load.output_len,
            "cpu_s": busy,
            "cpu_s_by_role": roles,
            "idle_cpu_s": idle,
            "result": result,
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def cells(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Runs grouped by `keys` and pooled over rounds; per-request data stays out of the results."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    out = []
    for key, group in groups.items():
        results: list[RunResult] = [g["result"] for g in group]
        tokens = sum(r.output_tokens for r in results)
        cpu = sum(g["cpu_s"] for g in group)
        roles: dict[str, float] = {}
        for g in group:
            for role, seconds in g["cpu_s_by_role"].items():
                roles[role] = roles.get(role, 0.0) + seconds
        out.append(
            {
                **dict(zip(keys, key, strict=True)),
                **pooled(results),
                "cpu_s_per_1k_tokens": 1000 * cpu / tokens if tokens else None,
                "cpu_s_per_1k_tokens_by_role": {r: 1000 * c / tokens for r, c in roles.items()}
                if tokens
                else {},
                "idle_cpu_s_per_run": sum(g["idle_cpu_s"] for g in group) / len(group),
            }
        )
    return out


def strip(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs as JSON: the per-run summary instead of every request (those are in results/raw/)."""
    return [
        {k: v for k, v in run.items() if k != "result"} | {"summary": pooled([run["result"]])} for run in runs
    ]


# ---- section 1 ---------------------------------------------------------------------------------


def serving_overhead(bench: Bench) -> dict[str, Any]:
    sizes = bench.ctx.sizes
    runs: list[dict[str, Any]] = []
    for round_index in range(sizes.rounds):
        for concurrency in sizes.concurrency:
            seed = 1000 * round_index + concurrency
            load = Load(concurrency, sizes.prompts_at(concurrency), sizes.input_len, sizes.output_len, seed)
            for server in bench.servers(round_index):
                label = f"serving-{server.name}-c{concurrency}-r{round_index}"
                runs.append(bench.measure(server, load, label, mode="stream", round=round_index))
        load = Load(
            1,
            sizes.nostream_prompts,
            sizes.input_len,
            sizes.nostream_output_len,
            500 + round_index,
            stream=False,
        )
        for server in bench.servers(round_index):
            label = f"serving-{server.name}-nostream-c1-r{round_index}"
            runs.append(bench.measure(server, load, label, mode="nostream", round=round_index))
    return {"cells": cells(runs, ("server", "mode", "concurrency")), "runs": strip(runs)}


# ---- section 2 ---------------------------------------------------------------------------------


def multi_lora(bench: Bench, adapters: list[str]) -> dict[str, Any]:
    sizes = bench.ctx.sizes
    raw_rounds = sizes.lora_raw_rounds
    note = f"raw vLLM reference: {raw_rounds} round(s)" if raw_rounds else "no raw vLLM reference"
    if raw_rounds and bench.ctx.remaining() < 15 * 60:
        raw_rounds, note = 0, "raw vLLM reference skipped: time budget"
    runs: list[dict[str, Any]] = []
    for round_index in range(sizes.rounds):
        mixes = [("base", ()), (f"lora{len(adapters)}", tuple(adapters))]
        if round_index % 2:
            mixes.reverse()
        targets: list[Server] = [bench.kairay] + ([bench.raw] if round_index < raw_rounds else [])
        for server in targets:
            for mix, models in mixes:
                load = Load(
                    sizes.lora_concurrency,
                    sizes.lora_prompts,
                    sizes.input_len,
                    sizes.output_len,
                    seed=2000 + round_index,
                    models=models,
                )
                label = f"lora-{server.name}-{mix}-r{round_index}"
                runs.append(bench.measure(server, load, label, mix=mix, round=round_index))
    return {"adapters": adapters, "cells": cells(runs, ("server", "mix")), "runs": strip(runs), "note": note}


# ---- section 5 ---------------------------------------------------------------------------------

_SERVE_LOG_TIME = re.compile(r"^\w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_WEIGHTS = re.compile(r"Loading weights took ([\d.]+) seconds")
_INIT_ENGINE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s")


def _serve_log_time(line: str) -> float | None:
    match = _SERVE_LOG_TIME.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(pattern: re.Pattern[str], texts: list[str]) -> float | None:
    for text in texts:
        match = pattern.search(text)
        if match:
            return float(match.group(1))
    return None


def engine_log_figures(texts: list[str]) -> dict[str, float | None]:
    """vLLM's own start-up figures from its logs (the same lines in both servers' logs)."""
    return {"weights_load_s": _first(_WEIGHTS, texts), "init_engine_s": _first(_INIT_ENGINE, texts)}


def kairay_cold_start(
    stamped: list[tuple[float, str]], launched_at: float, session: Path | None, first_token_at: float
) -> dict[str, Any]:
    """`kairay up` → first token, split by kairay up's own output lines and the replica's log."""

    def at(prefix: str) -> float | None:
        return next((stamp for stamp, line in stamped if line.lstrip().startswith(prefix)), None)

    replica_started = engine_ready = None
    texts: list[str] = []
    if session is not None:
        # Serve writes the replica's log file until vLLM configures logging (its dictConfig closes
        # existing handlers); later lines, kairay's "engine ready" among them, reach only stderr.
        logs = sorted((session / "logs" / "serve").glob("replica_*_LLMServer_*.log"))
        logs += sorted((session / "logs").glob("worker-*.err")) + sorted(
            (session / "logs").glob("worker-*.out")
        )
        texts = [p.read_text(errors="replace") for p in logs]
        for line in (line for text in texts for line in text.splitlines()):
            if "Started initializing replica" in line and replica_started is None:
                replica_started = _serve_log_time(line)
            if " engine vllm ready in " in line and engine_ready is None:
                engine_ready = _serve_log_time(line)
    marks = [
        ("cli: imports, validate, render, prepare model (cached)", launched_at, at("starting Ray")),
        ("Ray start (in-process: GCS, raylet, dashboard)", at("starting Ray"), at("deploying ")),
        ("Serve deploy until the LLM replica starts", at("deploying "), replica_started),
        (
            "engine start in the replica (vLLM AsyncLLM, spawned engine processes)",
            replica_started,
            engine_ready,
        ),
        ("until kairay up sees RUNNING", engine_ready, at("ready in")),
        ("first token", at("ready in"), first_token_at),
    ]
    return {
        "total_s": first_token_at - launched_at,
        "phases": [
            {"phase": name, "seconds": (end - start) if start is not None and end is not None else None}
            for name, start, end in marks
        ],
        "vllm": engine_log_figures(texts),
    }


def raw_cold_start(raw: RawVLLM, first_token_at: float) -> dict[str, Any]:
    assert raw.launched is not None
    launched = raw.launched.launched_at
    return {
        "total_s": first_token_at - launched,
        "phases": [
            {"phase": "launch until /v1/models answers", "seconds": raw.ready_at - launched},
            {"phase": "first token", "seconds": first_token_at - raw.ready_at},
        ],
        "vllm": engine_log_figures([raw.log_path.read_text(errors="replace")]),
    }


def _first_token_at(url: str) -> float:
    sent = time.time()
    return sent + first_token_s(url)


# ---- the shared run ----------------------------------------------------------------------------


def run(ctx: Context, sections: set[str]) -> dict[str, dict[str, Any]]:
    """Start kairay (cold, measured) and raw vLLM, run the requested sections, stop both."""
    sizes = ctx.sizes
    model = fixtures.model_dir()
    ctx.log(f"model {model}; making {sizes.lora_adapters} LoRA adapters (cached after the first run)")
    lora = fixtures.adapters(model, sizes.lora_adapters)
    kairay = Kairay(fixtures.bench_workspace("bench-kairay", lora), ctx.raw_dir / "workspaces")
    raw = RawVLLM(model, ctx.raw_dir / "raw-vllm.log", lora_modules=lora)
    out: dict[str, dict[str, Any]] = {}
    try:
        ctx.log("starting kairay up (alone, for the cold-start figures)")
        kairay.start()
        kairay_first = _first_token_at(kairay.url)
        ctx.log(f"kairay ready; first token {kairay_first - kairay.up.launched_at:.1f}s after launch")  # type: ignore[union-attr]
        ctx.log("starting raw vLLM")
        raw.start()
        raw_first = _first_token_at(raw.url)
        ctx.log(f"raw vLLM ready; first token {raw_first - raw.launched.launched_at:.1f}s after launch")  # type: ignore[union-attr]
        bench = Bench(ctx, model, raw, kairay)
        for server in (raw, kairay):
            warm = Load(min(8, sizes.warmup_prompts), sizes.warmup_prompts, sizes.input_len, 16, seed=99)
            run_load(server.url, model, MODEL, warm, result_dir=ctx.raw_dir, label=f"warmup-{server.name}")
            if "lora" in sections:
                # Loads every adapter into the engine first: section 2 measures serving, not loading.
                warm = Load(len(lora), len(lora), sizes.input_len, 4, seed=98, models=tuple(sorted(lora)))
                run_load(
                    server.url, model, MODEL, warm, result_dir=ctx.raw_dir, label=f"warmup-lora-{server.name}"
                )
        if "serving" in sections:
            ctx.log("section 1: serving overhead")
            out["serving"] = serving_overhead(bench)
        if "lora" in sections:
            ctx.log("section 2: multi-LoRA")
            out["lora"] = multi_lora(bench, sorted(lora))
        if "cold_start" in sections:
            assert kairay.up is not None and kairay.up.process is not None
            session = session_dir(Path(DEFAULT_TEMP_DIR), kairay.up.process.pid)
            out["cold_start"] = {
                "kairay": kairay_cold_start(
                    kairay.up.stamped(), kairay.up.launched_at, session, kairay_first
                ),
                "raw": raw_cold_start(raw, raw_first),
                "note": "kairay up started alone on the box (raw vLLM started after it); "
                f"Workspace with {len(lora)} hostPath adapters, model already converted in the cache.",
            }
    finally:
        ctx.log("stopping raw vLLM and kairay")
        raw.stop()
        kairay.stop()
    return out
