"""Adapter and data images: OCI images in Kaito's layout, pushed and pulled with oras-py.

Kaito ships a tuned adapter as a container image whose `/data` holds `adapter_config.json` and
`adapter_model.safetensors`; an input dataset image likewise keeps its files under `/data`. The image
built here is a real, runnable-layout image (skopeo and umoci accept it), not an oras "artifact":

- ONE layer, `application/vnd.oci.image.layer.v1.tar+gzip`, holding `data/adapter_config.json` and
  `data/adapter_model.safetensors` (mode 0644: peft saves the weights 0600, which would make them
  unreadable to a non-root server);
- an `application/vnd.oci.image.config.v1+json` config with `architecture`, `os` and
  `rootfs.diff_ids` = sha256 of the uncompressed tar;
- manifest annotations naming the base model (`kaito.sh/base-model`).

The registry client and credentials are in `kairay.oci.registry`; adapter directories in
`kairay.oci.adapters`. Push and pull stay in one module (a little over 400 lines): they are the two
halves of one layout (media types, `/data`, diff_ids) and a change to one is a change to the other.

One module: push, pull and unpack share Kaito's image layout and the unpacking limits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import oras.container

from kairay.oci.adapters import ADAPTER_FILES, AdapterError, check_adapter_dir
from kairay.oci.registry import (
    DockerConfigArg,
    ImageNotFoundError,
    RegistryClient,
    RegistryError,
    check_response,
    open_registry,
)

logger = logging.getLogger(__name__)

DATA_DIR = "data"

BASE_MODEL_ANNOTATION = "kaito.sh/base-model"
CREATED_ANNOTATION = "org.opencontainers.image.created"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
GZIP_LAYERS = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)


@dataclass(frozen=True)
class PushedImage:
    ref: str
    digest: str  # manifest digest, e.g. sha256:…; `ref@digest` pins exactly this image
    layer_digest: str
    diff_id: str
    size: int  # compressed layer bytes


# --------------------------------------------------------------------------------------------------
# Push


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _build_layer(files: Sequence[tuple[Path, str]], workdir: Path) -> tuple[Path, str]:
    """Write the gzip tar layer of `(file, path under /data)` pairs; return it and its diff_id.

    The diff_id is the sha256 of the uncompressed tar, which the image config must list.
    """
    tar_path = workdir / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({DATA_DIR} | {f"{DATA_DIR}/{p}" for _, name in files for p in _parents(name)})
        for name in directories:
            directory = tarfile.TarInfo(name)
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o755
            tar.addfile(directory)
        for path, name in files:
            info = tarfile.TarInfo(f"{DATA_DIR}/{name}")
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = int(path.stat().st_mtime)
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    diff_id = _sha256_file(tar_path)
    gz_path = workdir / "layer.tar.gz"
    # mtime=0: the compressed bytes depend only on the content.
    with (
        tar_path.open("rb") as source,
        gz_path.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as compressed,
    ):
        shutil.copyfileobj(source, compressed, 1 << 20)
    tar_path.unlink()
    return gz_path, diff_id


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _push_image(
    files: Sequence[tuple[Path, str]],
    ref: str,
    *,
    docker_config: DockerConfigArg,
    insecure: bool | None,
    annotations: dict[str, str],
    created_by: str,
) -> PushedImage:
    """Push one single-layer image whose `/data` holds `files`."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="kairay-push-") as tmp:
        workdir = Path(tmp)
        layer_path, diff_id = _build_layer(files, workdir)
        layer_digest, layer_size = _sha256_file(layer_path), layer_path.stat().st_size
        layer = {"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}
        image_config: dict[str, Any] = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": dict(annotations)},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": created_by}],
        }
        config_path = workdir / "config.json"
        config_path.write_bytes(json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode())
        config = {
            "mediaType": OCI_CONFIG,
            "digest": _sha256_file(config_path),
            "size": config_path.stat().st_size,
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [layer],
            "annotations": {CREATED_ANNOTATION: created, **annotations},
        }
        started = time.monotonic()
        with open_registry(ref, docker_config, insecure) as (client, container):
            for path, descriptor, what in ((layer_path, layer, "layer"), (config_path, config, "config")):
                try:
                    response = client.upload_blob(str(path), container, descriptor)
                except ValueError as exc:  # oras raises it when the registry refuses the upload session
                    raise RegistryError(f"uploading the {what} of {ref} failed: {exc}") from None
                check_response(response, f"uploading the {what}", ref)
            response = client.upload_manifest(manifest, container)
            check_response(response, "uploading the manifest", ref)
            # requests serialises `json=` with json.dumps' defaults, so this is the digest of what was sent.
            digest = response.headers.get("Docker-Content-Digest") or (
                "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
            )
    logger.info("pushed %s (%s, %d bytes) in %.1f s", ref, digest, layer_size, time.monotonic() - started)
    return PushedImage(ref=ref, digest=digest, layer_digest=layer_digest, diff_id=diff_id, size=layer_size)


def push_adapter(
    adapter_dir: str | os.PathLike[str],
    ref: str,
    *,
    docker_config: DockerConfigArg = None,
    insecure: bool | None = None,
    base_preset: str | None = None,
    annotations: dict[str, str] | None = None,
) -> PushedImage:
    """Push `adapter_dir` as a Kaito adapter image to `ref` (`registry/repository:tag`).

    `docker_config`: docker config file(s) or mounted dockerconfigjson Secret directories holding the
    push credentials (None: anonymous). `insecure`: plain HTTP; None means HTTP only for loopback
    registries. `base_preset` becomes the `kaito.sh/base-model` manifest annotation (default: the
    adapter's `base_model_name_or_path`).
    """
    info = check_adapter_dir(adapter_dir)
    base = base_preset or info.base_model
    return _push_image(
        [(info.path / name, name) for name in ADAPTER_FILES],
        ref,
        docker_config=docker_config,
        insecure=insecure,
        annotations={**(annotations or {}), **({BASE_MODEL_ANNOTATION: base} if base else {})},
        created_by="kairay tuning: LoRA adapter in /data",
    )


def push_data(
    directory: str | os.PathLike[str],
    ref: str,
    *,
    docker_config: DockerConfigArg = None,
    insecure: bool | None = None,
) -> PushedImage:
    """Push the files under `directory` as a dataset image (Kaito's input layout: files in `/data`)."""
    root = Path(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise RegistryError(f"{root} holds no files to push")
    return _push_image(
        [(path, path.relative_to(root).as_posix()) for path in files],
        ref,
        docker_config=docker_config,
        insecure=insecure,
        annotations={},
        created_by="kairay: tuning data in /data",
    )


# --------------------------------------------------------------------------------------------------
# Pull


def _get_json(
    client: RegistryClient, url: str, ref: str, what: str, accept: Sequence[str]
) -> tuple[dict[str, Any], bytes, str]:
    response = client.do_request(url, "GET", headers={"Accept": ", ".join(accept)})
    check_response(response, what, ref, ok=(200,))
    body = response.content
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what} of {ref} is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryError(f"{what} of {ref} is not a JSON object")
    media_type = str(document.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0])
    return document, body, media_type


def _resolve_manifest(
    client: RegistryClient, container: oras.container.Container, ref: str
) -> dict[str, Any]:
    url = f"{client.prefix}://{container.manifest_url()}"
    document, body, media_type = _get_json(client, url, ref, "manifest", (*MANIFEST_TYPES, *INDEX_TYPES))
    if container.digest:
        _verify(hashlib.sha256(body).hexdigest(), container.digest, f"manifest of {ref}")
    if media_type in INDEX_TYPES or "manifests" in document:
        entries = document.get("manifests") or []
        chosen = next(
            (
                m
                for m in entries
                if (m.get("platform") or {}).get("os") == "linux"
                and (m.get("platform") or {}).get("architecture") == "amd64"
            ),
            entries[0] if entries else None,
        )
        if chosen is None:
            raise ImageNotFoundError(f"image index {ref} lists no manifests")
        url = f"{client.prefix}://{container.manifest_url(chosen['digest'])}"
        document, body, media_type = _get_json(client, url, ref, "manifest", MANIFEST_TYPES)
        _verify(hashlib.sha256(body).hexdigest(), chosen["digest"], f"manifest of {ref}")
    if not isinstance(document.get("layers"), list) or not isinstance(document.get("config"), dict):
        raise RegistryError(f"{ref} is not an image manifest (media type {media_type or 'unknown'})")
    return document


def _verify(hexdigest: str, expected: str, what: str) -> None:
    algorithm, _, value = expected.partition(":")
    if algorithm != "sha256":
        raise RegistryError(f"{what}: unsupported digest algorithm {algorithm!r}")
    if hexdigest != value:
        raise RegistryError(f"{what}: digest mismatch (expected {expected}, got sha256:{hexdigest})")


def _download(
    client: RegistryClient,
    container: oras.container.Container,
    descriptor: dict[str, Any],
    ref: str,
    target: Path,
) -> None:
    digest = str(descriptor.get("digest", ""))
    url = f"{client.prefix}://{container.get_blob_url(digest)}"
    response = client.do_request(url, "GET", stream=True)
    with response:
        check_response(response, f"blob {digest}", ref, ok=(200,))
        hasher = hashlib.sha256()
        size = 0
        with target.open("wb") as handle:
            for chunk in response.iter_content(1 << 20):
                hasher.update(chunk)
                size += len(chunk)
                handle.write(chunk)
    _verify(hasher.hexdigest(), digest, f"blob {digest} of {ref}")
    if "size" in descriptor and int(descriptor["size"]) != size:
        raise RegistryError(
            f"blob {digest} of {ref}: size {size} differs from the manifest's {descriptor['size']}"
        )


def _open_layer(path: Path, media_type: str) -> io.BufferedIOBase:
    if media_type in GZIP_LAYERS:
        return gzip.open(path, "rb")
    if media_type == OCI_LAYER_TAR:
        return path.open("rb")
    raise RegistryError(f"unsupported layer media type {media_type!r} (gzip or plain tar layers only)")


def _uncompressed_digest(path: Path, media_type: str) -> str:
    hasher = hashlib.sha256()
    with _open_layer(path, media_type) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _extract_data(layer: Path, media_type: str, target: Path, ref: str) -> None:
    """Apply one layer's `/data/*` entries to `target` (whiteouts included); ignore everything else."""
    with _open_layer(layer, media_type) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            parts = [p for p in member.name.replace("\\", "/").split("/") if p not in ("", ".")]
            if not parts or parts[0] != DATA_DIR or len(parts) == 1:
                continue
            if ".." in parts:
                raise RegistryError(f"{ref}: layer entry {member.name!r} escapes /data")
            relative = Path(*parts[1:])
            destination = target / relative
            name = relative.name
            if name.startswith(".wh."):
                if name != ".wh..wh..opq":
                    victim = destination.with_name(name[len(".wh.") :])
                    if victim.is_dir():
                        shutil.rmtree(victim)
                    else:
                        victim.unlink(missing_ok=True)
                continue
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise RegistryError(f"{ref}: cannot read layer entry {member.name!r}")
                with source, destination.open("wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
                destination.chmod(0o644)
            else:
                # Links and devices under /data have no meaning for adapter or dataset files.
                raise RegistryError(f"{ref}: layer entry {member.name!r} is not a regular file or directory")


def _pull_data_dir(
    ref: str, dest: str | os.PathLike[str], docker_config: DockerConfigArg, insecure: bool | None
) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with open_registry(ref, docker_config, insecure) as (client, container):
            manifest = _resolve_manifest(client, container, ref)
            blobs = staging / ".blobs"
            blobs.mkdir()
            config_path = blobs / "config.json"
            _download(client, container, manifest["config"], ref, config_path)
            try:
                diff_ids = json.loads(config_path.read_bytes()).get("rootfs", {}).get("diff_ids") or []
            except (ValueError, AttributeError):
                diff_ids = []
            layers = manifest["layers"]
            if diff_ids and len(diff_ids) != len(layers):
                raise RegistryError(f"{ref}: config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
            content = staging / "content"
            content.mkdir()
            for index, descriptor in enumerate(layers):
                media_type = str(descriptor.get("mediaType", ""))
                layer_path = blobs / f"layer-{index}"
                _download(client, container, descriptor, ref, layer_path)
                if diff_ids:
                    _verify(
                        _uncompressed_digest(layer_path, media_type),
                        diff_ids[index],
                        f"layer {index} (diff_id) of {ref}",
                    )
                _extract_data(layer_path, media_type, content, ref)
                layer_path.unlink()
        if not any(content.iterdir()):
            raise RegistryError(f"image {ref} has no files under /{DATA_DIR}")
        if dest.exists():
            shutil.rmtree(dest)
        content.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("pulled %s into %s", ref, dest)
    return dest


def pull_adapter(
    ref: str,
    dest: str | os.PathLike[str],
    *,
    docker_config: DockerConfigArg = None,
    insecure: bool | None = None,
) -> Path:
    """Pull an adapter image and unpack its `/data/*` into `dest` (replaced atomically); return `dest`.

    Every blob is checked against its digest and every layer against the config's diff_ids. Raises
    `RegistryAuthError`, `ImageNotFoundError`, `RegistryUnreachableError` (all `RegistryError`), or
    `AdapterError` when the image holds no adapter.
    """
    path = _pull_data_dir(ref, dest, docker_config, insecure)
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise AdapterError(f"image {ref} is not a LoRA adapter: /{DATA_DIR} lacks {', '.join(missing)}")
    return path


def pull_data(
    ref: str,
    dest: str | os.PathLike[str],
    *,
    docker_config: DockerConfigArg = None,
    insecure: bool | None = None,
) -> Path:
    """Pull a dataset image (files under `/data`, as Kaito expects) into `dest`; return `dest`."""
    return _pull_data_dir(ref, dest, docker_config, insecure)
