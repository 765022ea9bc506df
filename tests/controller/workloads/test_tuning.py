"""The RayJob of a tuning Workspace: what `python -m tuning.job` needs, mounted, never inlined."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

from controller.settings import Settings
from controller.workloads import render_objects
from controller.workloads.tuning import (
    CONFIG_DIR,
    INPUT_DIR,
    OUTPUT_DIR,
    PUSH_SECRET_DIR,
    rayjob_name,
    tuning_state,
)
from harness.fake_kuberay import schema_errors
from kairay.api.workspace import parse_workspace
from kuberay.cluster import MAX_NAME_LENGTH
from tuning.config import default_config
from tuning.job import _parser, load_workspace_argument, spec_from_workspace

SETTINGS = Settings(runtime_image="registry.test/runtime:1")


def workspace(**tuning: Any) -> dict[str, Any]:
    spec = {
        "preset": {"name": "phi-3-mini-4k-instruct", "presetOptions": {"modelAccessSecret": "hf-token"}},
        "method": "qlora",
        "config": "training",
        "input": {"image": "registry.test/data:1", "imagePullSecrets": ["pull-a", "pull-b"]},
        "output": {"image": "registry.test/adapter:1", "imagePushSecret": "push"},
        **tuning,
    }
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "tune-phi", "namespace": "team", "uid": "uid-1"},
        "resource": {
            "instanceType": "Standard_NC48ads_A100_v4",
            "labelSelector": {"matchLabels": {"a": "b"}},
        },
        "tuning": spec,
    }


def rayjob(obj: dict[str, Any]) -> dict[str, Any]:
    (job,) = tuning_state(parse_workspace(obj), SETTINGS).objects
    return job


def pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [g["template"]["spec"] for g in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"])]


def test_secrets_and_config_are_mounted_volumes() -> None:
    job = rayjob(workspace())
    assert schema_errors(job) == []
    assert render_objects(parse_workspace(workspace()), SETTINGS) == [job]
    for pod in pods(job):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["push-secret"]["secret"]["secretName"] == "push"
        assert volumes["pull-secret-0"]["secret"]["secretName"] == "pull-a"
        assert volumes["pull-secret-1"]["secret"]["secretName"] == "pull-b"
        assert volumes["tuning-config"]["configMap"]["name"] == "training"
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["push-secret"] == {
            "name": "push-secret",
            "mountPath": PUSH_SECRET_DIR,
            "readOnly": True,
        }
        env = pod["containers"][0]["env"]
        assert env == [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
        ]
    # Secrets appear only as references by name: no Secret content or type in the manifest.
    assert "dockerconfigjson" not in json.dumps(job)


def test_the_entrypoint_is_what_tuning_job_parses(tmp_path: Path) -> None:
    job = rayjob(workspace())
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:3] == ["python", "-m", "tuning.job"]
    arguments = _parser().parse_args(command[3:])
    assert arguments.config == Path(CONFIG_DIR)
    assert arguments.push_secret == Path(PUSH_SECRET_DIR)
    assert [str(p) for p in arguments.pull_secret] == ["/mnt/secrets/pull-0", "/mnt/secrets/pull-1"]
    assert arguments.gpu and arguments.num_workers == 2
    ws, configmaps = load_workspace_argument(arguments.workspace)
    assert configmaps == {}
    assert ws.tuning == parse_workspace(workspace()).tuning
    # What main() then builds: the image push and pull use the mounted docker configs.
    spec = spec_from_workspace(
        ws,
        work_dir=tmp_path,
        config=default_config("qlora"),
        push_docker_config=[arguments.push_secret],
        pull_docker_config=arguments.pull_secret,
    )
    assert spec.output.push_docker_config == (Path(PUSH_SECRET_DIR),)
    assert spec.input.image == "registry.test/data:1"
    assert len(spec.input.image_pull_docker_config) == 2
    # The job's driver needs CPU, which only the worker pod (with the GPUs) advertises.
    assert job["spec"]["entrypointNumCpus"] == 1
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 1
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_volume_sources_are_mounted_for_input_and_output() -> None:
    job = rayjob(
        workspace(
            input={"volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}},
            output={"volumeSource": {"persistentVolumeClaim": {"claimName": "results"}}},
        )
    )
    arguments = _parser().parse_args(shlex.split(job["spec"]["entrypoint"])[3:])
    assert (arguments.input_dir, arguments.output_dir) == (Path(INPUT_DIR), Path(OUTPUT_DIR))
    head = pods(job)[0]
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes["input-data"]["persistentVolumeClaim"] == {"claimName": "data"}
    mounts = {m["name"]: m["readOnly"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts == {"tuning-config": True, "input-data": True, "output-data": False}


def test_the_name_follows_the_tuning_spec_and_the_workspace() -> None:
    original = parse_workspace(workspace())
    name = rayjob_name(original)
    assert re.fullmatch(r"tune-phi-[0-9a-f]{8}", name)
    assert rayjob(workspace())["metadata"]["name"] == name
    assert rayjob_name(parse_workspace(workspace())) == name
    changed = workspace(output={"image": "registry.test/adapter:2", "imagePushSecret": "push"})
    assert rayjob_name(parse_workspace(changed)) != name
    recreated = copy.deepcopy(workspace())
    recreated["metadata"]["uid"] = "uid-2"
    assert rayjob_name(parse_workspace(recreated)) != name

    long = workspace()
    long["metadata"]["name"] = "a" * 63
    job = rayjob(long)
    assert len(job["metadata"]["name"]) <= MAX_NAME_LENGTH
    assert job["metadata"]["labels"]["kaito.sh/workspace"] == "a" * 63
