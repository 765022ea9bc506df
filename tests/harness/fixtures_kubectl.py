"""The pinned kubectl in the pytest session header, so a run's log says which kubectl drove it."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.kubectl import client_version, kubectl_binary


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"kubectl: {client_version()} ({kubectl_binary()})"
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        # The session still starts: the kubectl tests fail with this message, the rest run.
        return f"kubectl: unavailable: {exc}"
