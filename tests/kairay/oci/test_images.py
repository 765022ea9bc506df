"""Adapter images against a real registry (Debian's docker-registry): layout, auth, errors."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kairay.oci.adapters import AdapterError, check_adapter_dir
from kairay.oci.images import (
    BASE_MODEL_ANNOTATION,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    pull_adapter,
    pull_data,
    push_adapter,
    push_data,
)
from kairay.oci.registry import ImageNotFoundError, RegistryAuthError, RegistryUnreachableError
from tests.harness.fixtures_registry import AUTH_PASSWORD, AUTH_USER
from tests.harness.registry import RegistryServer

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def make_adapter(directory: Path, base: str = MODEL_ID) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 8,
        "base_model_name_or_path": base,
        "target_modules": ["v_proj", "q_proj"],
        "task_type": "CAUSAL_LM",
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    weights = directory / "adapter_model.safetensors"
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 16)}, str(weights))
    weights.chmod(0o600)  # what peft leaves behind
    return directory


def _blob(server: RegistryServer, repository: str, digest: str) -> bytes:
    status, body, _ = server.get(f"/v2/{repository}/blobs/{digest}")
    assert status == 200, (status, body[:200])
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    return body


def test_adapter_image_layout_and_round_trip(registry: RegistryServer, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    ref = registry.ref("adapters/layout", "v1")
    pushed = push_adapter(adapter, ref, base_preset="smollm2-135m-instruct")

    status, body, headers = registry.get("/v2/adapters/layout/manifests/v1", accept=OCI_MANIFEST)
    assert status == 200 and headers["Docker-Content-Digest"] == pushed.digest
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST and manifest["schemaVersion"] == 2
    assert manifest["annotations"][BASE_MODEL_ANNOTATION] == "smollm2-135m-instruct"
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER_GZIP and layer["digest"] == pushed.layer_digest

    config = json.loads(_blob(registry, "adapters/layout", manifest["config"]["digest"]))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    uncompressed = gzip.decompress(_blob(registry, "adapters/layout", layer["digest"]))
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()],
    }
    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"data", "data/adapter_config.json", "data/adapter_model.safetensors"}
    assert members["data"].isdir()
    assert members["data/adapter_model.safetensors"].mode == 0o644
    assert members["data/adapter_config.json"].mode == 0o644

    pulled = pull_adapter(ref, tmp_path / "pulled")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (pulled / name).read_bytes() == (adapter / name).read_bytes()
        assert (pulled / name).stat().st_mode & 0o777 == 0o644
    info = check_adapter_dir(pulled, "smollm2-135m-instruct")
    assert info.base_model == MODEL_ID and info.rank == 8 and info.target_modules == ("q_proj", "v_proj")

    # By digest too, and into an existing directory (replaced, not merged).
    (tmp_path / "pulled" / "stale.txt").write_text("old")
    pulled = pull_adapter(f"{registry.host}/adapters/layout@{pushed.digest}", tmp_path / "pulled")
    assert sorted(os.listdir(pulled)) == ["adapter_config.json", "adapter_model.safetensors"]


def test_authenticated_registry(auth_registry: RegistryServer, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    docker_config = auth_registry.docker_config(tmp_path / "config.json")
    ref = auth_registry.ref("adapters/private", "v1")
    push_adapter(adapter, ref, docker_config=docker_config)
    assert (pull_adapter(ref, tmp_path / "a", docker_config=docker_config) / "adapter_config.json").is_file()

    # A mounted kubernetes.io/dockerconfigjson Secret: a directory with a .dockerconfigjson file,
    # here in the username/password form rather than `auth`.
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / ".dockerconfigjson").write_text(
        json.dumps(
            {
                "auths": {
                    f"http://{auth_registry.host}/v2/": {"username": AUTH_USER, "password": AUTH_PASSWORD}
                }
            }
        )
    )
    assert pull_adapter(ref, tmp_path / "b", docker_config=secret).is_dir()


def test_wrong_and_missing_credentials(auth_registry: RegistryServer, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    ref = auth_registry.ref("adapters/denied", "v1")
    wrong_password = "not-the-password-1234"
    wrong = auth_registry.docker_config(tmp_path / "wrong.json", username=AUTH_USER, password=wrong_password)
    started = time.monotonic()
    with pytest.raises(RegistryAuthError, match="rejected the credentials") as caught:
        push_adapter(adapter, ref, docker_config=wrong)
    assert time.monotonic() - started < 10  # no retry loop
    message = str(caught.value)
    assert wrong_password not in message
    assert base64.b64encode(f"{AUTH_USER}:{wrong_password}".encode()).decode() not in message
    assert str(wrong) in message

    with pytest.raises(RegistryAuthError, match="requires authentication and no docker config was given"):
        pull_adapter(ref, tmp_path / "x")
    other_host = tmp_path / "other.json"
    other_host.write_text(json.dumps({"auths": {"example.com": {"auth": "dTpw"}}}))
    with pytest.raises(RegistryAuthError, match="has no credentials for it"):
        pull_adapter(ref, tmp_path / "x", docker_config=other_host)
    garbage = tmp_path / "garbage.json"
    garbage.write_text(json.dumps({"auths": {auth_registry.host: {"auth": "%%%not-base64"}}}))
    with pytest.raises(RegistryAuthError, match="not base64"):
        pull_adapter(ref, tmp_path / "x", docker_config=garbage)


def test_missing_image_and_unreachable_registry(registry: RegistryServer, tmp_path: Path) -> None:
    with pytest.raises(
        ImageNotFoundError, match=r"manifest of .*adapters/nothing:v9 not found.*MANIFEST_UNKNOWN"
    ):
        pull_adapter(registry.ref("adapters/nothing", "v9"), tmp_path / "x")
    assert not (tmp_path / "x").exists()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError, match="unreachable"):
        pull_adapter(f"127.0.0.1:{port}/adapters/a:v1", tmp_path / "x")
    assert time.monotonic() - started < 10


def test_data_images(registry: RegistryServer, tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "sub").mkdir(parents=True)
    (content / "train.jsonl").write_text('{"text": "a"}\n')
    (content / "sub" / "more.csv").write_text("text\nb\n")
    ref = registry.ref("datasets/files", "v1")
    push_data(content, ref)
    pulled = pull_data(ref, tmp_path / "pulled")
    assert (pulled / "train.jsonl").read_text() == '{"text": "a"}\n'
    assert (pulled / "sub" / "more.csv").read_text() == "text\nb\n"
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        pull_adapter(ref, tmp_path / "adapter")


def test_check_adapter_dir(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "a")
    assert check_adapter_dir(adapter).base_model == MODEL_ID
    assert check_adapter_dir(adapter, MODEL_ID).peft_type == "LORA"
    with pytest.raises(
        AdapterError, match="trained on 'HuggingFaceTB/SmolLM2-135M-Instruct', not on 'phi-4'"
    ):
        check_adapter_dir(adapter, "phi-4")
    # Kaito's trainer records its weight directory; that carries no identity and is accepted.
    assert check_adapter_dir(make_adapter(tmp_path / "k", base="/workspace/tfs/weights"), "phi-4").base_model
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"missing adapter_model.safetensors"):
        check_adapter_dir(adapter)
    with pytest.raises(AdapterError, match="does not exist"):
        check_adapter_dir(tmp_path / "nowhere")
