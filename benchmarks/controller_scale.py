"""Section 4: the real controller (`kairay controller --kubeconfig`) against N Workspaces on the fake
API server, with the fake KubeRay answering for the RayServices it creates.

The Workspaces are written straight into the fake server's store (no HTTP), so the server's request
counts are those of the controller, the fake KubeRay and this harness's two watches; the latter two
go through counting API clients and are subtracted to get the controller's own requests. Event times
come from those watches (ms resolution; `creationTimestamp` has only seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
from kubernetes import client, watch

from benchmarks.context import Context
from benchmarks.servers import Launched
from benchmarks.settings import FULL, RAW_DIR, REPO
from harness.fake_apiserver import FakeApiServer
from harness.fake_kuberay import FakeKubeRay, install_crds
from kairay.api.crds import load_crd

NAMESPACE = "default"
NODE_LABELS = {"app": "kairay-bench"}
TARGETS = {"all_ready_s": 60.0, "rayservice_p99_s": 2.0, "peak_rss_mb": 250.0}


class CountingApiClient(client.ApiClient):
    """An ApiClient that counts the HTTP requests it makes (a watch is one request per connect)."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self._lock = threading.Lock()
        self.calls = 0

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
        return super().call_api(*args, **kwargs)


def controller_available() -> str | None:
    """None when `kairay controller` exists, else why not."""
    try:
        import controller.wiring  # noqa: F401
    except ImportError as exc:
        return f"controller not available: {exc}"
    probe = subprocess.run(
        [sys.executable, "-m", "kairay.cli", "controller", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return f"controller not available: `kairay controller --help` exited {probe.returncode}"
    return None


def bench_workspace(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": f"ws-{index:04d}", "namespace": NAMESPACE},
        "resource": {"instanceType": "Standard_NC4as_T4_v3", "labelSelector": {"matchLabels": NODE_LABELS}},
        "inference": {"preset": {"name": "smollm2-135m-instruct"}},
    }


def add_gpu_node(server: FakeApiServer, name: str) -> None:
    """A Ready node that the BYO provisioner accepts for any of the Workspaces (one T4)."""
    labels = {
        **NODE_LABELS,
        "nvidia.com/gpu.count": "1",
        "nvidia.com/gpu.memory": "16384",
        "nvidia.com/gpu.product": "Tesla-T4",
    }
    server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    # Node status is a subresource: a create drops it, as a real API server does.
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is ready"}
    server.patch("nodes", None, name, {"status": {"conditions": [ready]}}, subresource="status")


def _is_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "InferenceReady" and c.get("status") == "True" for c in conditions)


def _owner(obj: dict[str, Any]) -> str:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Workspace":
            return str(ref["name"])
    return str(obj["metadata"]["name"])


class Observer:
    """Watches RayServices and Workspaces; records when each RayService appears and each Workspace
    first reports InferenceReady=True."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.rayservice_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._watches: list[watch.Watch] = []
        self.threads = [
            threading.Thread(
                target=self._watch, args=("ray.io", "rayservices", self._on_rayservice), daemon=True
            ),
            threading.Thread(
                target=self._watch, args=("kaito.sh", "workspaces", self._on_workspace), daemon=True
            ),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.stop()

    def _on_rayservice(self, obj: dict[str, Any], now: float) -> None:
        self.rayservice_at.setdefault(_owner(obj), now)

    def _on_workspace(self, obj: dict[str, Any], now: float) -> None:
        if _is_ready(obj):
            self.ready_at.setdefault(obj["metadata"]["name"], now)

    def _watch(self, group: str, plural: str, on_event: Any) -> None:
        version = "v1" if group == "ray.io" else "v1beta1"
        resource_version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            self._watches.append(w)
            try:
                for event in w.stream(
                    self.custom.list_namespaced_custom_object,
                    group,
                    version,
                    NAMESPACE,
                    plural,
                    resource_version=resource_version,
                    timeout_seconds=30,
                ):
                    obj = event["object"]
                    resource_version = obj["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        on_event(obj, time.time())
            except Exception:
                # A resumed watch can get 410 Gone after a burst; relist from now on.
                resource_version = ""
                time.sleep(0.1)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _pct(values: list[float], p: float) -> float | None:
    return float(np.percentile(values, p)) if values else None


def run(ctx: Context, count: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    """`timeout`: how long to wait for every Workspace to be Ready (default: 180 s, or longer for
    more than 600 Workspaces)."""
    count = count or ctx.sizes.workspaces
    missing = controller_available()
    if missing:
        ctx.log(f"section 4: {missing}")
        return {"available": False, "reason": missing, "workspaces": count, "targets": TARGETS}
    ctx.log(f"section 4: {count} Workspaces against the real controller")
    with FakeApiServer() as server:
        server.register_crd(load_crd())
        kubeconfig = server.write_kubeconfig(ctx.raw_dir / "controller-kubeconfig.yaml")
        kuberay_api = CountingApiClient(server.client_configuration())
        observer_api = CountingApiClient(server.client_configuration())
        install_crds(kuberay_api)
        add_gpu_node(server, "gpu-node-0")
        fake = FakeKubeRay(kuberay_api, cluster_start_seconds=0.2, deploy_seconds=0.2, seed=1).start()
        observer = Observer(observer_api)
        observer.start()
        controller = Launched(
            [
                sys.executable,
                "-m",
                "kairay.cli",
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--node-provisioner",
                "byo",
            ],
            ctx.raw_dir / "controller.log",
        )
        peak_rss = 0
        try:
            controller.start()
            # Measure from a controller that is up and watching, not from its imports.
            deadline = time.monotonic() + 120
            while server.count_requests("watch", "workspaces") == 0:
                if not controller.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"controller never watched Workspaces; see {controller.log_path}")
                time.sleep(0.2)
            before = server.request_counts
            kuberay0, observer0 = kuberay_api.calls, observer_api.calls
            created_at: dict[str, float] = {}

            def create(index: int) -> None:
                obj = bench_workspace(index)
                server.create(obj)
                created_at[obj["metadata"]["name"]] = time.time()

            proc, harness = psutil.Process(controller.pid), psutil.Process()
            controller_cpu0, harness_cpu0 = _cpu(proc), _cpu(harness)
            first = time.time()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, range(count)))
            created_all = time.time()
            deadline = time.monotonic() + (timeout or max(180.0, count * 0.3))
            while time.monotonic() < deadline:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                if len(observer.ready_at) >= count and len(observer.rayservice_at) >= count:
                    break
                if not controller.alive():
                    raise RuntimeError(f"controller exited; see {controller.log_path}")
                time.sleep(0.2)
            peak_rss = max(peak_rss, proc.memory_info().rss)
            controller_cpu, harness_cpu = _cpu(proc) - controller_cpu0, _cpu(harness) - harness_cpu0
            elapsed = time.time() - first
            after = server.request_counts
            kuberay_calls, observer_calls = kuberay_api.calls - kuberay0, observer_api.calls - observer0
        except RuntimeError as exc:
            ctx.log(f"section 4 failed: {exc}")
            return {"available": False, "reason": str(exc), "workspaces": count, "targets": TARGETS}
        finally:
            controller.stop()
            observer.stop()
            fake.stop()
    by_kind = Counter(
        {f"{verb} {resource}": n - before.get((verb, resource), 0) for (verb, resource), n in after.items()}
    )
    total = sum(by_kind.values())
    to_rayservice = [
        observer.rayservice_at[n] - t for n, t in created_at.items() if n in observer.rayservice_at
    ]
    to_ready = [observer.ready_at[n] - t for n, t in created_at.items() if n in observer.ready_at]
    return {
        "available": True,
        "workspaces": count,
        "create_s": created_all - first,
        "rayservices": len(observer.rayservice_at),
        "ready": len(observer.ready_at),
        "all_rayservices_s": max(observer.rayservice_at.values()) - first if observer.rayservice_at else None,
        "all_ready_s": max(observer.ready_at.values()) - first if len(observer.ready_at) >= count else None,
        "rayservice_latency_s": {"p50": _pct(to_rayservice, 50), "p99": _pct(to_rayservice, 99)},
        "ready_latency_s": {"p50": _pct(to_ready, 50), "p99": _pct(to_ready, 99)},
        "requests_total": total,
        "requests_fake_kuberay": kuberay_calls,
        "requests_observer": observer_calls,
        "controller_requests_per_workspace": (total - kuberay_calls - observer_calls) / count,
        "requests_by_kind": dict(by_kind.most_common(12)),
        "peak_rss_mb": peak_rss / 2**20,
        # Both share the 2 cores: a harness near its limit would slow the controller down too.
        "controller_cpu_s": controller_cpu,
        "harness_cpu_s": harness_cpu,
        "elapsed_s": elapsed,
        "fake_kuberay_errors": fake.errors[:3],
        "targets": TARGETS,
    }


def main() -> None:
    """`python -m benchmarks.controller_scale [--count N]`: this section alone, for quick iterations;
    prints the results as JSON and writes nothing under benchmarks/results but the raw logs."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.controller_scale")
    parser.add_argument("--count", type=int, default=FULL.workspaces, help="Workspaces to create")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for all Ready")
    args = parser.parse_args()
    ctx = Context(FULL, RAW_DIR / "quick" / "raw")
    ctx.raw_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(ctx, args.count, args.timeout), indent=1, default=str))


if __name__ == "__main__":
    main()
