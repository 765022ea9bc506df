"""The servers under test, each a subprocess this harness starts and stops itself.

- raw vLLM: `python -m vllm.entrypoints.openai.api_server` with `settings.ENGINE_FLAGS`;
- kairay: `kairay up` of a Workspace, through the test harness's `KairayUp`;
- a Serve config (the routing variant): `python -m benchmarks.serve_runner`, which deploys it the
  way `kairay up` does.

Every server runs in its own process group so that stopping it never touches anything else on the
machine; its CPU time (the whole process tree: Ray, replicas, engine processes) is what `cpu_seconds`
adds up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.settings import ENGINE_ENV, ENGINE_FLAGS, MODEL, REPO
from harness.kairay_up import KairayUp, free_port

# What each process of a server is, from its command line (Ray and vLLM retitle their processes).
ROLES = (
    ("VLLM::EngineCore", "vLLM engine core"),
    ("VLLM::Worker", "vLLM worker (model)"),
    (":LLMServer", "Serve LLM replica (AsyncLLM + OpenAI serving)"),
    (":Ingress", "Serve ingress"),
    ("ProxyActor", "Serve HTTP proxy"),
    ("ServeController", "Serve controller"),
    ("vllm.entrypoints.openai.api_server", "vLLM API server (AsyncLLM + OpenAI serving)"),
    ("kairay.cli", "kairay up (driver)"),
    ("benchmarks.serve_runner", "serve runner (driver)"),
    ("raylet", "Ray system"),
    ("gcs_server", "Ray system"),
    ("dashboard", "Ray system"),
    ("monitor.py", "Ray system"),
    ("runtime_env", "Ray system"),
    ("ray::", "Ray system"),
)


def _role(cmdline: str) -> str:
    return next((role for needle, role in ROLES if needle in cmdline), "other")


def cpu_by_role(pid: int) -> dict[str, float]:
    """User + system CPU seconds of `pid` and its live descendants, by what each process is."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    totals: dict[str, float] = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            role = _role(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def cpu_seconds(pid: int) -> float:
    return sum(cpu_by_role(pid).values())


def wait_http(url: str, alive: Any, timeout: float) -> None:
    """Poll `url` until it answers 200; `alive()` False means the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server exited before {url} answered")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not answering after {timeout:.0f}s")


def first_token_s(base_url: str, model: str = MODEL, timeout: float = 120) -> float:
    """Seconds from sending a streaming chat request to its first content chunk."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_completion_tokens": 4,
        "stream": True,
    }
    started = time.monotonic()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=timeout) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    return time.monotonic() - started
    raise RuntimeError("stream ended without a token")


@dataclass
class Launched:
    """A subprocess in its own process group whose output lines are kept with their arrival time."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    launched_at: float = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.launched_at = time.time()
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                self.lines.append((time.time(), line.rstrip("\n")))
                log.write(line)
                log.flush()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_line(self, prefix: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, line in list(self.lines):
                if line.startswith(prefix):
                    return stamp, line
            if not self.alive():
                raise RuntimeError(f"{self.argv[:4]} exited; see {self.log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"no line starting {prefix!r} after {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 60) -> None:
        """SIGINT (a graceful shutdown), then SIGKILL to the process group if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # Engine processes that outlived their parent belong to our process group; nothing else does.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


class _OnLoopback:
    """A server this process launched on a loopback port."""

    port: int
    launched: Launched | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.launched is not None
        return self.launched.pid

    def stop(self) -> None:
        if self.launched is not None:
            self.launched.stop()


@dataclass
class RawVLLM(_OnLoopback):
    """vLLM's own OpenAI server with the same engine flags kairay renders."""

    model_dir: Path
    log_path: Path
    lora_modules: dict[str, Path] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    launched: Launched | None = None
    ready_at: float = 0.0

    name = "raw"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            MODEL,
            *ENGINE_FLAGS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.lora_modules:
            argv += ["--lora-modules", *(f"{name}={path}" for name, path in self.lora_modules.items())]
        return argv

    def start(self, timeout: float = 600) -> None:
        self.launched = Launched(self.argv(), self.log_path, env=dict(ENGINE_ENV))
        self.launched.start()
        wait_http(f"{self.url}/v1/models", self.launched.alive, timeout)
        self.ready_at = time.time()


@dataclass
class TimedKairayUp(KairayUp):
    """`KairayUp` that also keeps each output line's arrival time (wall clock), for the cold-start split."""

    stamps: list[float] = field(default_factory=list)
    launched_at: float = 0.0

    def start(self, timeout: float = 600) -> None:
        self.launched_at = time.time()
        super().start(timeout)

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            # The stamp goes first so that every line a reader sees already has one.
            self.stamps.append(time.time())
            self.output.append(line.rstrip("\n"))

    def stamped(self) -> list[tuple[float, str]]:
        return list(zip(self.stamps, self.output, strict=False))


@dataclass
class Kairay:
    """kairay serving a Workspace through `kairay up`, the product's local path."""

    workspace: dict[str, Any]
    workdir: Path
    up: TimedKairayUp | None = None
    ready_at: float = 0.0

    name = "kairay"

    @property
    def url(self) -> str:
        assert self.up is not None
        return self.up.url

    @property
    def pid(self) -> int:
        assert self.up is not None and self.up.process is not None
        return self.up.process.pid

    def start(self, timeout: float = 600) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.up = TimedKairayUp(
            file=self.workdir / f"{self.workspace['metadata']['name']}.yaml",
            port=free_port(),
            dashboard_port=free_port(),
        )
        self.up.write(self.workspace)
        self.up.start(timeout)
        self.ready_at = time.time()

    def log(self) -> str:
        return self.up.log(last=10_000) if self.up else ""

    def stop(self) -> None:
        if self.up is not None and self.up.process is not None:
            self.up.stop()


@dataclass
class ServeConfigServer(_OnLoopback):
    """A Serve config deployed by `benchmarks.serve_runner` (for apps `kairay up` cannot name)."""

    config_path: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    launched: Launched | None = None
    metrics_url: str = ""
    ready_at: float = 0.0

    name = "serve-config"

    def start(self, timeout: float = 900) -> None:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.serve_runner",
            str(self.config_path),
            "--port",
            str(self.port),
            "--dashboard-port",
            str(self.dashboard_port),
        ]
        # Replicas import the variant app from `benchmarks`, which is not an installed package; Ray's
        # workers inherit the environment of the raylet this process starts.
        self.launched = Launched(argv, self.log_path, env={"PYTHONPATH": str(REPO)})
        self.launched.start()
        _, line = self.launched.wait_line("metrics ", timeout)
        self.metrics_url = line.split()[1]
        self.launched.wait_line("ready", timeout)
        self.ready_at = time.time()


def session_dir(temp_dir: Path, driver_pid: int) -> Path | None:
    """The Ray session directory of the Ray that `driver_pid` started (Ray names it after the pid)."""
    matches = sorted(temp_dir.glob(f"session_*_{driver_pid}"))
    return matches[-1] if matches else None
