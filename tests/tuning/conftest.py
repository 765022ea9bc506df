"""Fixtures for the tuning tests: real registries, a loopback HTTP file server, a small local Ray."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.fixtures_registry import auth_registry, registry

__all__ = ["auth_registry", "registry"]


@dataclass
class FileServer:
    """Serves `root` on 127.0.0.1; `routes` adds redirects and custom Content-Types."""

    root: Path
    port: int = 0
    redirects: dict[str, str] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"


def _handler(server: FileServer) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[path])
                self.end_headers()
                return
            if path in server.content_types:
                body = (server.root / path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", server.content_types[path])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    return Handler


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root=root)
    handler = functools.partial(_handler(server), directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_rows(count: int, answer: str = "The secret code is BANANA-42.") -> list[dict[str, object]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question {i}: what is the secret code?"},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A real local Ray with 2 CPUs, pinned to itself.

    A short temp dir keeps Ray's socket paths under the length limit. Ray Train's placement-group
    cleaner finds "its" cluster by auto-detection, which on a machine with other Ray clusters (other
    tests, `ray start`) can pick one of those, not find the controller there, and tear down this run's
    placement group. Fixing the GCS port and handing every process RAY_ADDRESS keeps it on this cluster.
    """
    import os

    import ray

    if ray.is_initialized():
        pytest.fail("another Ray session is already initialised in this process; this fixture needs its own")
    temp_dir = tempfile.mkdtemp(prefix="krt", dir="/tmp")
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = int(sock.getsockname()[1])
    address = f"{ray.util.get_node_ip_address()}:{port}"
    previous = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            num_cpus=2,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
        )
    finally:
        if previous is None:
            del os.environ["RAY_GCS_SERVER_PORT"]
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = previous
    assert ray.get_runtime_context().gcs_address == address
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
