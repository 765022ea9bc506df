"""Run a rendered Serve config on a local Ray (or the one `RAY_ADDRESS` names).

The config goes through the Ray dashboard's Serve REST API (`PUT /api/serve/applications/`), which
is what KubeRay does with `serveConfigV2`: the laptop and the cluster deploy the same document the
same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairay.api.errors import KairayError

DEFAULT_TEMP_DIR = "/tmp/kairay-ray"
TERMINAL_FAILURES = {"DEPLOY_FAILED", "UNHEALTHY"}


class DeployError(KairayError):
    """The Serve application failed to deploy; the message is Serve's."""

    reason = "DeployFailed"


@dataclass(frozen=True)
class RayEndpoint:
    dashboard_url: str
    started_here: bool


def local_env() -> dict[str, str]:
    """Environment every local engine process needs: offline hub, no telemetry, caches kept local."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "RAY_SERVE_ENABLE_TASK_EVENTS": "0",
    }


@dataclass(frozen=True)
class CoreSplit:
    """Which cores the vLLM-CPU model worker gets, and which everything else shares."""

    engine: tuple[int, ...]
    system: tuple[int, ...]

    @property
    def engine_binding(self) -> str:
        """The value of vLLM's VLLM_CPU_OMP_THREADS_BIND for one worker."""
        return ",".join(str(core) for core in self.engine)


def split_cores(available: Collection[int]) -> CoreSplit | None:
    """The model worker alone on every core but the last; Ray, Serve and the engine's front end there.

    vLLM-CPU binds its worker to cores, but every other process floats: on a laptop-sized machine
    Ray's daemons, Serve's proxy and controller and the replica then preempt the worker mid-step.
    Measured on 2 cores (BENCHMARKS.md). None when there is a single core to share.
    """
    cores = sorted(available)
    if len(cores) < 2:
        return None
    return CoreSplit(engine=tuple(cores[:-1]), system=(cores[-1],))


def start_ray(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    temp_dir: str | None = None,
    dashboard_port: int = 8265,
    system_cores: Collection[int] | None = None,
) -> RayEndpoint:
    """Join `address` (or RAY_ADDRESS) if given, else start Ray in this process with a dashboard.

    `system_cores`: when Ray starts here, it and every process it starts run on these cores (they
    inherit this process's affinity); a vLLM-CPU worker still binds to its own.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        info = ray.init(ignore_reinit_error=True)
        return RayEndpoint(_with_scheme(info.dashboard_url or ""), started_here=False)
    if address:
        info = ray.init(address=address, log_to_driver=False)
        return RayEndpoint(_with_scheme(info.dashboard_url or ""), started_here=False)
    Path(temp_dir or DEFAULT_TEMP_DIR).mkdir(parents=True, exist_ok=True)
    if system_cores:
        os.sched_setaffinity(0, set(system_cores))
    info = ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _temp_dir=temp_dir or DEFAULT_TEMP_DIR,
        log_to_driver=False,
        runtime_env={"env_vars": local_env()},
    )
    return RayEndpoint(_with_scheme(info.dashboard_url or ""), started_here=True)


def _with_scheme(url: str) -> str:
    return url if url.startswith("http") else f"http://{url}"


def _client(dashboard_url: str) -> Any:
    # The client `serve deploy` uses: it adds Ray's token-auth header when the cluster wants one.
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(dashboard_url)


def deploy(dashboard_url: str, config: dict[str, Any], *, host: str, port: int) -> None:
    body = dict(config)
    body["http_options"] = {"host": host, "port": port}
    try:
        _client(dashboard_url).deploy_applications(body)
    except RuntimeError as exc:
        raise DeployError(f"Serve refused the config: {exc}") from exc


def application_status(dashboard_url: str, name: str) -> dict[str, Any] | None:
    details = _client(dashboard_url).get_serve_details()
    app: dict[str, Any] | None = details.get("applications", {}).get(name)
    return app


def wait_running(
    dashboard_url: str,
    name: str,
    *,
    timeout: float = 900,
    on_progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Poll until the application is RUNNING; raise DeployError with Serve's message on failure."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            app = application_status(dashboard_url, name)
        except (RuntimeError, OSError):
            app = None
        status = (app or {}).get("status", "NOT_STARTED")
        message = (app or {}).get("message", "")
        if on_progress and status != last:
            on_progress(status, message)
            last = status
        if status == "RUNNING":
            return app or {}
        if status in TERMINAL_FAILURES:
            raise DeployError(f"application {name!r} is {status}: {message or _deployment_messages(app)}")
        time.sleep(1.0)
    raise DeployError(f"application {name!r} not RUNNING after {timeout:.0f}s (last status {last})")


def _deployment_messages(app: dict[str, Any] | None) -> str:
    deployments = (app or {}).get("deployments", {})
    return (
        "; ".join(f"{name}: {d.get('message')}" for name, d in deployments.items() if d.get("message"))
        or "no message"
    )


def delete_all(dashboard_url: str) -> None:
    _client(dashboard_url).delete_applications()


def shutdown(endpoint: RayEndpoint) -> None:
    import ray
    from ray import serve

    if endpoint.started_here:
        serve.shutdown()
        ray.shutdown()
