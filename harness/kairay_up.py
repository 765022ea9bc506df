"""`kairay up` in a subprocess: the real product path (render → Ray → Serve → engine) under test.

Each instance has its own Ray (own dashboard port) and Serve port, and is stopped with SIGINT the
way a user stops it, so teardown is exercised too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def workspace(
    name: str,
    *,
    runtime: str = "vllm",
    adapters: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Workspace for the local model, with adapters as hostPath volumes (local directories)."""
    notes = {"kaito.sh/runtime": runtime, **(annotations or {})}
    inference: dict[str, Any] = {"preset": {"name": "smollm2-135m-instruct"}}
    if adapters:
        inference["adapters"] = [
            {
                "source": {"name": a["name"], "volumeSource": {"hostPath": {"path": str(a["path"])}}},
                "strength": str(a.get("strength", "1.0")),
            }
            for a in adapters
        ]
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "annotations": notes},
        "resource": {"instanceType": "Standard_NC4as_T4_v3", "labelSelector": {"matchLabels": {"app": name}}},
        "inference": inference,
    }


@dataclass
class KairayUp:
    file: Path
    port: int
    dashboard_port: int
    workspace: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def runtime(self) -> str:
        return str(self.workspace["metadata"]["annotations"].get("kaito.sh/runtime", "vllm"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def write(self, ws: dict[str, Any]) -> None:
        self.workspace = ws
        # Write then rename so the watcher never reads a half-written file.
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(ws, sort_keys=False))
        tmp.replace(self.file)

    def start(self, timeout: float = 600) -> None:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kairay.cli",
                "up",
                str(self.file),
                "--port",
                str(self.port),
                "--dashboard-port",
                str(self.dashboard_port),
                "--num-cpus",
                "4",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kairay up exited {self.process.returncode}:\n{self.log()}")
            if any(line.startswith("ready in") for line in self.output):
                return
            time.sleep(0.5)
        raise TimeoutError(f"kairay up not ready after {timeout}s:\n{self.log()}")

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))

    def log(self, last: int = 80) -> str:
        return "\n".join(self.output[-last:])

    def wait_for_line(self, prefix: str, timeout: float = 120, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output[after:]:
                if line.startswith(prefix):
                    return line
            time.sleep(0.2)
        raise TimeoutError(f"no line starting {prefix!r}:\n{self.log()}")

    def stop(self, timeout: float = 90) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def kairay_up(tmp_dir: Path, ws: dict[str, Any], timeout: float = 600) -> Iterator[KairayUp]:
    up = KairayUp(
        file=tmp_dir / f"{ws['metadata']['name']}.yaml", port=free_port(), dashboard_port=free_port()
    )
    up.write(ws)
    try:
        up.start(timeout)
        yield up
    finally:
        if up.process is not None:
            up.stop()


def make_lora_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out_dir))
    return out_dir
