"""The `kairay` CLI: every command on the examples, and user mistakes without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.kairay_up import KairayUp
from kairay.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def kairay(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a new process, exit code and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "kairay.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def kairay_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process: the same code path, without paying the imports once per call."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_validate_plan_render_examples(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["validate"], ["plan"], ["render"], ["render", "--target", "cluster"]):
        code, out, err = kairay_here(capsys, *command, str(example))
        assert code == 0, f"{command}: {err}"
        assert out.strip()


def test_render_local_is_a_serve_config(capsys: pytest.CaptureFixture[str]) -> None:
    _, stdout, _ = kairay_here(capsys, "render", str(REPO / "examples" / "smollm2-local.yaml"))
    config = yaml.safe_load(stdout)
    app = config["applications"][0]
    assert app["import_path"] == "serve_apps.app:build_app"
    assert app["args"]["model"]["name"] == "smollm2-135m-instruct"


def test_bad_workspace_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kaito.sh/v1beta1",
                "kind": "Workspace",
                "metadata": {"name": "bad"},
                "inference": {
                    "preset": {"name": "smollm2-135m-instruct"},
                    "adapters": [{"source": {"name": "a", "image": "r/a:1"}, "strength": "1.5"}],
                },
            }
        )
    )
    for command in ("validate", "render", "plan"):
        code, _, err = kairay_here(capsys, command, str(bad))
        assert code == 1
        assert f"{bad}: inference.adapters[0].strength:" in err
    result = kairay("up", str(bad))
    assert result.returncode == 1
    assert f"{bad}: inference.adapters[0].strength:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_preset_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "unknown.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kaito.sh/v1beta1",
                "kind": "Workspace",
                "metadata": {"name": "unknown"},
                "inference": {"preset": {"name": "phi-3-mini-4k-instrukt"}},
            }
        )
    )
    code, _, err = kairay_here(capsys, "validate", str(bad))
    assert code == 1
    assert "inference.preset.name" in err


def test_missing_file() -> None:
    result = kairay("up", "/nonexistent/workspace.yaml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_up_shows_running_app_on_the_dashboard(served: KairayUp) -> None:
    import httpx

    token_file = Path.home() / ".ray" / "auth_token"
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
    response = httpx.get(f"{served.dashboard_url}/api/serve/applications/", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    app = response.json()["applications"][served.workspace["metadata"]["name"]]
    assert app["status"] == "RUNNING"
    # One fixed replica answers HTTP itself; an autoscaled app has the ingress (tests/conftest.py).
    expected = {"LLMServer"} if served.runtime == "vllm" else {"LLMServer", "Ingress"}
    assert set(app["deployments"]) == expected


@pytest.mark.e2e
def test_up_gives_the_vllm_worker_its_own_cores(served: KairayUp) -> None:
    import psutil

    assert served.process is not None
    tree = psutil.Process(served.process.pid).children(recursive=True)
    by_title = {p.pid: " ".join(p.cmdline()) for p in tree}
    workers = [p for p in tree if "VLLM::Worker" in by_title[p.pid]]
    others = [p for p in tree if "VLLM::Worker" not in by_title[p.pid]]
    available = sorted(os.sched_getaffinity(0))
    if served.runtime != "vllm" or len(available) < 2:
        # transformers uses every core from the replica; one core has nothing to split.
        assert not workers
        assert all(sorted(p.cpu_affinity()) == available for p in others)
        return
    assert len(workers) == 1
    assert workers[0].cpu_affinity() == available[:-1]
    # Ray's daemons, Serve's proxy and controller, the replica and vLLM's engine core share the last.
    assert others and all(p.cpu_affinity() == available[-1:] for p in others), {
        by_title[p.pid][:60]: p.cpu_affinity() for p in others
    }
