"""pytest fixtures for a real OCI registry: `registry` (anonymous) and `auth_registry` (htpasswd).

Use them from a conftest with `pytest_plugins = ["tests.harness.fixtures_registry"]` or by importing
the fixtures. Both are session-scoped: one registry process each for the whole run, stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.registry import RegistryServer, available, start_registry

AUTH_USER = "kairay"
AUTH_PASSWORD = "s3cret-Passw0rd"


def _require_registry() -> None:
    if not available():
        # `make install` installs them; a missing registry is a broken setup, not a reason to skip.
        pytest.fail(
            "needs Debian's docker-registry and htpasswd (apt-get install docker-registry apache2-utils)"
        )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_registry()
    server = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    _require_registry()
    server = start_registry(
        tmp_path_factory.mktemp("auth-registry"), username=AUTH_USER, password=AUTH_PASSWORD
    )
    try:
        yield server
    finally:
        server.stop()
