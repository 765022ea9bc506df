"""A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on loopback.

The packaged /etc/docker/registry/config.yml expects an htpasswd file under /etc, so each registry gets
its own config: storage in a temporary directory, plain HTTP on 127.0.0.1:<free port>, and optionally
htpasswd basic auth (bcrypt, the only hash distribution accepts) made with `htpasswd -Bbn`.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REGISTRY_BINARY = "/usr/bin/docker-registry"
HTPASSWD_BINARY = "htpasswd"


class RegistryUnavailable(RuntimeError):
    """The registry binary is missing or the registry did not come up."""


@dataclass
class RegistryServer:
    """One running registry. `host` is `127.0.0.1:<port>`, usable as an image reference prefix."""

    root: Path
    port: int
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"

    def docker_config(
        self, path: Path | None = None, *, username: str | None = None, password: str | None = None
    ) -> Path:
        """Write a `.dockerconfigjson`-style file with this registry's (or the given) credentials."""
        user = username if username is not None else self.username
        secret = password if password is not None else self.password
        if user is None or secret is None:
            raise ValueError("this registry has no credentials; pass username and password")
        target = path or self.root / f"dockerconfig-{user}.json"
        token = base64.b64encode(f"{user}:{secret}".encode()).decode()
        target.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        target.chmod(0o600)
        return target

    def get(self, path: str, *, accept: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """A raw GET against the registry API (with credentials when it has them), for assertions."""
        request = urllib.request.Request(f"{self.url}{path}")
        if accept:
            request.add_header("Accept", accept)
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def available() -> bool:
    return Path(REGISTRY_BINARY).is_file() and shutil.which(HTPASSWD_BINARY) is not None


def start_registry(
    root: Path | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 15.0,
) -> RegistryServer:
    """Start a registry (with htpasswd auth when `username`/`password` are given) and wait for `/v2/`."""
    if not Path(REGISTRY_BINARY).is_file():
        raise RegistryUnavailable(f"{REGISTRY_BINARY} not found (apt-get install docker-registry)")
    root = Path(root or tempfile.mkdtemp(prefix="kairay-registry-"))
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if username is not None or password is not None:
        if not username or not password:
            raise ValueError("give both username and password for an authenticated registry")
        htpasswd = root / "htpasswd"
        htpasswd.write_bytes(_bcrypt_line(username, password))
        config["auth"] = {"htpasswd": {"realm": "kairay-test", "path": str(htpasswd)}}
    config_path = root / "config.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = RegistryServer(root=root, port=port, username=username, password=password, process=process)
    _wait_ready(server, timeout)
    return server


def _wait_ready(server: RegistryServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            output = (server.root / "registry.log").read_text(errors="replace")[-2000:]
            raise RegistryUnavailable(f"docker-registry exited with {server.process.returncode}: {output}")
        try:
            # An authenticated registry answers 401 here, which also means it is up.
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RegistryUnavailable(f"docker-registry on {server.host} not ready after {timeout:.0f} s")


def _bcrypt_line(username: str, password: str) -> bytes:
    if shutil.which(HTPASSWD_BINARY) is None:
        raise RegistryUnavailable("htpasswd not found (apt-get install apache2-utils)")
    result = subprocess.run(
        [HTPASSWD_BINARY, "-Bbn", username, password], check=True, capture_output=True, timeout=30
    )
    return result.stdout.strip() + b"\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
