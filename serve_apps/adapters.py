"""Adapters: from a Workspace entry (local dir or OCI image, strength) to a directory an engine loads.

Materializing happens on each replica when its adapter list changes (`serve_apps.adapter_registry`
asks for it). Images are pulled into a node-local cache; for vLLM a strength below 1 is applied by
writing a copy whose LoRA B matrices are scaled (the delta is B·A, so scaling B scales the delta
exactly, and 0 gives the base model).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kairay.api.errors import KairayError
from kairay.oci import images
from kairay.oci.adapters import check_adapter_dir
from kairay.oci.registry import default_docker_config
from presets.local_model import cache_root
from serve_apps.config import AdapterConfig
from serve_apps.protocol import LoadedAdapter

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(KairayError):
    """An adapter could not be made ready; `reason` is the condition reason the controller reports."""

    def __init__(self, name: str, reason: str, message: str) -> None:
        super().__init__(f"adapter {name!r}: {message}")
        self.name = name
        self.reason = reason
        self.message = message


def cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(configured)
    return cache_root() / "adapters"


def docker_config_for(adapter: AdapterConfig, docker_config_dir: str | None) -> Path | None:
    """The mounted dockerconfigjson of the adapter's first pull secret, if mounted.

    Without a secrets directory (`kairay up`), the user's own docker config is used, as `docker pull`
    would (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): Secrets exist only in a cluster.
    """
    if not docker_config_dir:
        return default_docker_config()
    for secret in adapter.image_pull_secrets:
        candidate = Path(docker_config_dir) / secret / ".dockerconfigjson"
        if candidate.is_file():
            return candidate
    return None


def materialize(
    adapter: AdapterConfig,
    *,
    cache: Path,
    scale: bool,
    base_model: str,
    docker_config_dir: str | None = None,
) -> LoadedAdapter:
    """Return a local directory for `adapter`, pulling and scaling as needed."""
    if adapter.image is not None:
        source = _pull(adapter, cache, base_model, docker_config_dir)
    else:
        source = Path(adapter.path or "")
    check_dir(adapter.name, source)
    if scale and adapter.strength < 1.0:
        source = _scaled_copy(adapter, source, cache)
    return LoadedAdapter(name=adapter.name, path=str(source), strength=adapter.strength)


def check_dir(name: str, path: Path) -> None:
    if not (path / ADAPTER_CONFIG).is_file():
        raise AdapterError(name, "AdapterInvalid", f"{path} has no {ADAPTER_CONFIG}")
    if not any((path / weights).is_file() for weights in ADAPTER_WEIGHTS):
        raise AdapterError(name, "AdapterInvalid", f"{path} has no adapter weights")


def _pull(adapter: AdapterConfig, cache: Path, base_model: str, docker_config_dir: str | None) -> Path:
    ref = adapter.image or ""
    target = cache / "images" / hashlib.sha256(ref.encode()).hexdigest()[:16]
    with _locked(target.with_suffix(".lock")):
        try:
            images.pull_adapter(ref, target, docker_config=docker_config_for(adapter, docker_config_dir))
        except Exception as exc:
            raise AdapterError(adapter.name, "AdapterPullFailed", f"pulling {ref}: {exc}") from exc
    try:
        check_adapter_dir(target, base_model)
    except Exception as exc:
        raise AdapterError(adapter.name, "AdapterInvalid", str(exc)) from exc
    return target


def _scaled_copy(adapter: AdapterConfig, source: Path, cache: Path) -> Path:
    from safetensors.torch import load_file, save_file

    weights = source / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterError(adapter.name, "AdapterInvalid", "strength below 1 needs safetensors weights")
    stat = weights.stat()
    key = f"{source.resolve()}:{stat.st_mtime_ns}:{stat.st_size}:{adapter.strength}"
    target = cache / "scaled" / f"{adapter.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    with _locked(target.with_suffix(".lock")):
        if (target / "adapter_model.safetensors").is_file():
            return target
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        tensors = load_file(str(weights))
        scaled = {
            name: (tensor * adapter.strength).to(tensor.dtype) if "lora_B" in name else tensor
            for name, tensor in tensors.items()
        }
        save_file({k: v.contiguous() for k, v in scaled.items()}, str(staging / "adapter_model.safetensors"))
        config = json.loads((source / ADAPTER_CONFIG).read_text())
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        staging.rename(target)
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Replicas on one node share the cache; one of them pulls or scales, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
