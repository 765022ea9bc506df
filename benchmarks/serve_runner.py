"""Deploy a Serve config file on a local Ray the way `kairay up` does, and keep it up until SIGINT.

`kairay up` renders a Workspace, so it always deploys `serve_apps.app:build_app`; the routing
benchmark deploys a variant of that app, and this is how. Prints `metrics <url>` (Ray's Prometheus
endpoint, where Serve's per-replica counters appear) and then `ready`.

    python -m benchmarks.serve_runner CONFIG.json --port 8000 --dashboard-port 8265
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from serve_apps import local


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", type=Path, help="Serve config (JSON), as `kairay render -o json` prints")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs of the Ray started here")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())

    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    endpoint = local.start_ray(num_cpus=args.num_cpus, dashboard_port=args.dashboard_port)
    try:
        import ray

        node = ray.nodes()[0]
        print(f"metrics http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", flush=True)
        local.deploy(endpoint.dashboard_url, config, host="127.0.0.1", port=args.port)
        for app in config["applications"]:
            local.wait_running(
                endpoint.dashboard_url,
                app["name"],
                timeout=args.timeout,
                on_progress=lambda status, message: print(f"  {status} {message}", flush=True),
            )
        print("ready", flush=True)
        stopped.wait()
    except local.DeployError as exc:
        print(f"deploy failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        local.shutdown(endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
