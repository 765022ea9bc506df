"""The controller's pure helpers: catalog errors as condition reasons, Kaito's inference ConfigMap,
node requests and kopf credentials."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import Configuration

from controller.api.validation import validate_workspace
from controller.api.workspace import parse_workspace
from controller.handlers import (
    catalog_problem,
    connection_info,
    engine_overrides_from_configmap,
    node_request,
    release_request,
)


def workspace(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "team", "uid": "u-1"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "count": 2,
            "labelSelector": {
                "matchLabels": {"apps": "ws"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["1"]}],
            },
            "preferredNodes": ["node-b"],
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }
    for key, value in changes.items():
        obj[key] = {**obj[key], **value}
    return obj


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"inference": {"preset": {"name": "gpt-17-mega"}}}, "InvalidPreset"),
        ({"resource": {"instanceType": "Standard_Imaginary_v9"}}, "InvalidInstanceType"),
        (
            {
                "resource": {"instanceType": "Standard_NC6s_v3"},
                "metadata": {"annotations": {"kaito.sh/runtime": "transformers"}},
                "inference": {"preset": {"name": "falcon-7b-instruct"}},
            },
            "InsufficientGPUMemory",
        ),
    ],
)
def test_catalog_errors_get_kaito_reasons(changes: dict[str, Any], reason: str) -> None:
    obj = workspace(**changes)
    errors = validate_workspace(obj)
    assert errors
    problem = catalog_problem(obj, errors)
    assert problem.reason == reason and problem.final
    assert str(errors[0]) in problem.message


def test_inference_configmap_gives_the_runtime_section_as_engine_args() -> None:
    text = "max_probe_steps: 6\nvllm:\n  max-model-len: 4096\n  gpu-memory-utilization: 0.9\n"
    data = {"inference_config.yaml": text}
    assert engine_overrides_from_configmap(data, "vllm", "cfg") == {
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
    }
    assert engine_overrides_from_configmap(data, "transformers", "cfg") == {}
    assert engine_overrides_from_configmap({"other.yaml": "vllm:\n  seed: 1\n"}, "vllm", "cfg") == {"seed": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": "x", "b": "y"}, "no 'inference_config.yaml' key"),
        ({"inference_config.yaml": "vllm: [unclosed"}, "invalid YAML"),
        ({"inference_config.yaml": "- a list"}, "expected a mapping"),
        ({"inference_config.yaml": "vllm: 3"}, "vllm: expected a mapping"),
    ],
)
def test_broken_inference_configmaps_say_what_is_wrong(data: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engine_overrides_from_configmap(data, "vllm", "cfg")


def test_node_requests_carry_the_selector_and_sizes() -> None:
    ws = parse_workspace(workspace())
    request = node_request(ws, node_count=2, gpus_per_node=1, gpu_memory_gb=80, os_disk_gb=100)
    assert (request.namespace, request.name, request.uid) == ("team", "ws", "u-1")
    assert request.label_selector() == "apps=ws,zone in (1)"
    assert request.preferred_nodes == ("node-b",)
    assert (request.node_count, request.gpus_per_node, request.gpu_memory_needed_gb) == (2, 1, 80)
    released = release_request(
        {"metadata": {"name": "ws", "namespace": "team", "uid": "u-1"}, "resource": {"count": 3}}
    )
    assert (released.name, released.node_count, released.instance_type) == ("ws", 3, "")


def test_kopf_credentials_from_a_client_configuration() -> None:
    configuration = Configuration(host="https://api.test:6443", api_key={"authorization": "Bearer t0k3n"})
    configuration.ssl_ca_cert = "/ca.crt"
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token, info.ca_path, info.insecure) == (
        "https://api.test:6443",
        "Bearer",
        "t0k3n",
        "/ca.crt",
        False,
    )
    bare = connection_info(Configuration(host="http://127.0.0.1:1", api_key={"authorization": "raw"}))
    assert (bare.scheme, bare.token) == (None, "raw")
