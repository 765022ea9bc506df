"""`python -m benchmarks.run [--quick] [--sections serving,lora,...]` (what `make bench` runs).

Writes `benchmarks/results/<section>.json`, the PNG plots next to them and `BENCHMARKS.md`.
`--quick` is a 2-3 minute version with everything under `benchmarks/results/raw/quick/` (ignored
by git), so it never overwrites the published figures; by default it skips the routing section,
which needs two more engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import machine, report, routing, serving
from benchmarks.context import Context
from benchmarks.fixtures import bench_workspace
from benchmarks.settings import (
    ALL_SECTIONS,
    ENGINE_ENV,
    ENGINE_FLAGS,
    FULL,
    QUICK,
    RAW_DIR,
    REPO,
    REPORT,
    RESULTS_DIR,
)
from controller.render import render
from kairay.api.workspace import parse_workspace

SERVING_SECTIONS = {"serving", "lora", "cold_start"}
# Two engines start for the routing section (~2-3 min here) before it sends a request.
ROUTING_MIN_S = 5 * 60


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 2-3 minute run into results/raw/quick/")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report and plots again from the saved results/*.json, measure nothing",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_SECTIONS)} (default: all; --quick: all but routing)",
    )
    args = parser.parse_args(argv)
    chosen = args.sections.split(",") if args.sections else None
    args.explicit = chosen is not None
    unknown = set(chosen or ()) - set(ALL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if chosen is None:
        chosen = [s for s in ALL_SECTIONS if not (args.quick and s == "routing")]
    args.sections = [s for s in ALL_SECTIONS if s in chosen]
    return args


def kairay_engine_args() -> tuple[dict[str, Any], bool]:
    """The engine args `kairay up` renders for the benchmark Workspace, and whether they are the raw
    server's flags (tensor/pipeline parallel 1 are vLLM's defaults)."""
    # Imported here: it loads vLLM, which `--help` and the controller-only runs do without.
    from serve_apps.engines.vllm import cli_flags

    engine_args = render(parse_workspace(bench_workspace("bench-kairay", {})), "local").app.engine_args
    defaults = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1}
    kairay = cli_flags({k: v for k, v in engine_args.items() if defaults.get(k) != v})
    return engine_args, _flag_pairs(kairay) == _flag_pairs(list(ENGINE_FLAGS))


def _flag_pairs(flags: list[str]) -> set[tuple[str, str]]:
    pairs, flag = set(), ""
    for token in [*flags, "--"]:
        if token.startswith("--"):
            if flag:
                pairs.add((flag, ""))
            flag = token
        else:
            pairs.add((flag, token))
            flag = ""
    return pairs


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def _guarded(ctx: Context, name: str, fn: Any, *args: Any) -> dict[str, Any]:
    """A section that fails is reported as not measured; the others still run."""
    try:
        result: dict[str, Any] = fn(*args)
        return result
    except Exception as exc:
        ctx.log(f"{name} failed: {exc!r}")
        traceback.print_exc()
        return {"skipped": f"failed: {exc!r}"}


def write_report(results: dict[str, Any], out_dir: Path, report_path: Path) -> None:
    report.plot(results, out_dir)
    image_prefix = os.path.relpath(out_dir, report_path.parent)
    report_path.write_text(report.render(results, image_prefix=image_prefix))
    for target in report.targets(results):
        print(f"  {target.status:4}  {target.name}: {report.num(target.value, 3)}{target.unit}")


def load_results(out_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in ("machine", "run", *ALL_SECTIONS):
        path = out_dir / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    results["notes"] = results.get("run", {}).get("notes", [])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = RAW_DIR / "quick" if args.quick else RESULTS_DIR
    report_path = out_dir / "BENCHMARKS.md" if args.quick else REPORT
    if args.report_only:
        write_report(load_results(out_dir), out_dir, report_path)
        return 0
    # Engines and `kairay up` inherit these; unbuffered so that output lines get honest timestamps.
    for key, value in {
        **ENGINE_ENV,
        "PYTHONUNBUFFERED": "1",
        "VLLM_CACHE_ROOT": str(REPO / ".cache" / "vllm"),
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(key, value)
    sizes = QUICK if args.quick else FULL
    ctx = Context(sizes, RAW_DIR / "quick" / "raw" if args.quick else RAW_DIR)
    ctx.raw_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    ctx.log(f"benchmarks ({'quick' if args.quick else 'full'}): {', '.join(args.sections)}")

    engine_args, same_flags = kairay_engine_args()
    results: dict[str, Any] = {"machine": machine.describe(), "notes": []}
    if not same_flags:
        results["notes"].append(
            f"kairay's engine args {engine_args} differ from the raw flags {ENGINE_FLAGS}"
        )
    wanted = set(args.sections)

    if wanted & SERVING_SECTIONS:
        measured = _guarded(ctx, "serving", serving.run, ctx, wanted)
        for name in wanted & SERVING_SECTIONS:
            results[name] = measured.get(name, {"skipped": measured.get("skipped", "not run")})
    if "controller" in wanted:
        # Imported here: the fake API server and the Kubernetes client take ~1.5 s, for this section only.
        from benchmarks import controller_scale

        results["controller"] = _guarded(ctx, "controller", controller_scale.run, ctx)
    if "routing" in wanted:
        # A section asked for by name runs whatever the budget says.
        if ctx.remaining() < ROUTING_MIN_S and not args.explicit:
            results["routing"] = {
                "skipped": f"time budget: {ctx.remaining():.0f} s left of {sizes.budget_s:.0f}"
            }
        else:
            results["routing"] = _guarded(ctx, "routing", routing.run, ctx)

    results["run"] = {
        "mode": "quick" if args.quick else "full",
        "sections": args.sections,
        "started": started,
        "duration_s": ctx.elapsed(),
        "load_average_end": list(os.getloadavg()),
        "sizes": sizes.as_dict(),
        "engine_flags": list(ENGINE_FLAGS),
        "engine_env": ENGINE_ENV,
        "kairay_engine_args": engine_args,
        "notes": results["notes"],
    }
    for name in ("machine", "run", *args.sections):
        write_json(out_dir / f"{name}.json", results[name])
    report.plot(results, out_dir)
    image_prefix = os.path.relpath(out_dir, report_path.parent)
    report_path.write_text(report.render(results, image_prefix=image_prefix))
    ctx.log(
        f"wrote {report_path} and {out_dir}/*.json in {time.strftime('%M:%S', time.gmtime(ctx.elapsed()))}"
    )
    for target in report.targets(results):
        print(f"  {target.status:4}  {target.name}: {report.num(target.value, 3)}{target.unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
