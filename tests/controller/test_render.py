"""Workspace + plan → Serve config and cluster objects (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controller.render import render, render_serve_config
from controller.workloads import render_objects
from kairay.api.workspace import parse_workspace
from serve_apps.config import LLM_DEPLOYMENT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> Any:
    return parse_workspace(yaml.safe_load((EXAMPLES / name).read_text()))


def test_local_render_runs_on_cpu_with_lora() -> None:
    rendered = render(load("smollm2-local.yaml"), "local")
    assert rendered.app.device == "cpu"
    assert rendered.app.model.local is True
    assert rendered.app.engine_args["enforce_eager"] is True
    assert rendered.app.engine_args["enable_lora"] is True
    assert rendered.app.env["HF_HUB_OFFLINE"] == "1"


def test_cluster_render_follows_the_plan() -> None:
    rendered = render(load("phi-3-mini.yaml"), "cluster")
    assert rendered.app.device == "gpu"
    assert rendered.app.replica_gpus == 1.0
    assert rendered.app.engine_args["dtype"] == "float16"  # V100: no bf16
    assert "HF_HUB_OFFLINE" not in rendered.app.env


def test_rayservice_carries_the_same_serve_config() -> None:
    ws = load("phi-3-with-adapters.yaml")
    rayservice, service = render_objects(ws)
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == render_serve_config(ws, "cluster")
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == 8000


def test_pull_secrets_are_mounted_never_inlined() -> None:
    rayservice, _ = render_objects(load("phi-3-with-adapters.yaml"))
    text = yaml.safe_dump(rayservice)
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {
        "name": "pull-secret-0",
        "secret": {"secretName": "acr-pull-secret", "defaultMode": 0o444},
    } in workers["volumes"]
    assert 'dockerconfigjson":' not in text


def test_adapter_edit_changes_only_serve_config() -> None:
    ws = load("phi-3-with-adapters.yaml")
    obj = ws.to_object()
    obj["inference"]["adapters"] = obj["inference"]["adapters"][:1]
    before, _ = render_objects(ws)
    after, _ = render_objects(parse_workspace(obj))
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    old_apps = yaml.safe_load(before["spec"]["serveConfigV2"])["applications"][0]
    new_apps = yaml.safe_load(after["spec"]["serveConfigV2"])["applications"][0]
    assert old_apps["args"] == new_apps["args"]  # only user_config changes: no replica restart
    llm = next(d for d in new_apps["deployments"] if d["name"] == LLM_DEPLOYMENT)
    assert [a["name"] for a in llm["user_config"]["adapters"]] == ["phi-3-adapter"]
