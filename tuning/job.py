"""A tuning job on Ray Train: Workspace → data → LoRA/QLoRA on `TorchTrainer` → adapter image.

`run_tuning(spec)` is the one code path, called by `kairay tune` on a laptop and by the RayJob a
cluster runs (`python -m tuning.job`). It checks everything it can on the driver first (preset,
config keys, data) so user mistakes fail in seconds, then trains on Ray Train workers, reports the loss
of every step, takes the adapter from the final checkpoint and pushes it (or copies it to a volume).

Ray Train V2 facts this relies on: `ray.train.report` is a barrier (every rank calls it once per
step); only reports that carry a checkpoint are kept in the `Result`, so the loss history reaches the
driver through a `UserCallback` (it runs in the Train controller) and a Ray queue; Train's print patch
breaks `datasets.map`, hence `RAY_TRAIN_ENABLE_PRINT_PATCH=0` on the workers.

RayJob entrypoint (everything secret arrives as a mounted file, never as an argument or variable):

    python -m tuning.job --workspace /mnt/workspace/workspace.json \\
        [--config /mnt/config]               # the tuning.config ConfigMap, mounted
        [--push-secret /mnt/secrets/push]    # the imagePushSecret (kubernetes.io/dockerconfigjson)
        [--pull-secret /mnt/secrets/pull-0]  # each input imagePullSecret
        [--input-dir /mnt/data] [--output-dir /mnt/results]   # mounted volumeSources

One module: the RayJob's entry point, its worker loop and the push of the result are one run's code path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kairay.api.errors import KairayError
from kairay.api.workspace import Workspace, load_workspace_file, parse_workspace
from kairay.oci.adapters import ADAPTER_FILES, AdapterError, check_adapter_dir
from kairay.oci.images import PushedImage, push_adapter
from kairay.oci.registry import RegistryError
from presets.local_model import prepare
from presets.models import ModelPreset, resolve_preset
from tuning.config import (
    TuningConfig,
    TuningConfigError,
    TuningMethod,
    cpu_overrides,
    default_config,
    load_config_file,
    load_configmap_data,
)
from tuning.data import DatasetError, DataSource, prepare_data
from tuning.train import StepMetrics, TrainRequest, check_library_keys, train_adapter

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[StepMetrics], None]
_STEP_FIELDS = frozenset(f.name for f in dataclasses.fields(StepMetrics))

DEFAULT_CPUS_PER_WORKER = 2
WORKER_ENV = {
    # Ray Train's print patch breaks datasets' .map() (which TRL uses to tokenize).
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # Job logs are read line by line; the per-step report is the progress signal, not tqdm bars.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# User errors: the message says what to fix; the entrypoint exits 2 for them.
USER_ERRORS: tuple[type[Exception], ...] = (TuningConfigError, DatasetError, RegistryError, AdapterError)


class TuningError(RuntimeError):
    """Training itself failed (a worker crashed, no checkpoint came back)."""


@dataclass(frozen=True)
class OutputTarget:
    """Where the adapter goes: an image (`registry/repo:tag`), a directory (volume), or both."""

    image: str | None = None
    push_docker_config: tuple[Path, ...] = ()
    path: Path | None = None


@dataclass(frozen=True)
class TuningJobSpec:
    name: str
    preset: str
    method: TuningMethod
    config: TuningConfig
    input: DataSource
    output: OutputTarget
    work_dir: Path
    # None: ModelConfig.pretrained_model_name_or_path, else the preset's weights.
    model_path: str | None = None
    allow_private_urls: bool | None = None  # None: KAIRAY_ALLOW_PRIVATE_URLS
    insecure_registry: bool | None = None  # None: plain HTTP for loopback registries only
    num_workers: int = 1
    cpus_per_worker: int | None = None  # None: 2, or fewer when fewer are free
    use_gpu: bool = False
    # Ray Train storage for the final checkpoint; with workers on several nodes it must be shared.
    storage_path: Path | None = None


@dataclass(frozen=True)
class TuningResult:
    name: str
    adapter_dir: Path
    base_model: str
    steps: tuple[StepMetrics, ...]
    global_step: int
    train_loss: float | None
    duration_s: float
    image: PushedImage | None = None
    output_path: Path | None = None

    @property
    def final_loss(self) -> float | None:
        return self.steps[-1].loss if self.steps else None


# --------------------------------------------------------------------------------------------------
# Spec from a Workspace


def spec_from_workspace(
    workspace: Workspace,
    *,
    work_dir: Path,
    config: TuningConfig | None = None,
    configmaps: Mapping[str, Mapping[str, str]] | None = None,
    pull_docker_config: Sequence[Path] = (),
    push_docker_config: Sequence[Path] = (),
    input_dir: Path | None = None,
    output_dir: Path | None = None,
    **options: Any,
) -> TuningJobSpec:
    """The job a tuning Workspace describes.

    `config` is the already-read `tuning.config` (e.g. from a mounted ConfigMap); otherwise the
    ConfigMap is looked up by name in `configmaps` (`{name: data}`), and a Workspace without
    `tuning.config` gets Kaito's default for its method. Secrets are docker config files;
    `input_dir`/`output_dir` are where non-hostPath volumeSources are mounted. `options` are the
    remaining `TuningJobSpec` fields (num_workers, use_gpu, insecure_registry, ...).
    """
    tuning = workspace.tuning
    if tuning is None:
        raise TuningConfigError("the Workspace has no tuning section")
    method = tuning.method
    if config is not None:
        config.check_method(method)
    elif tuning.config:
        data = (configmaps or {}).get(tuning.config)
        if data is None:
            raise TuningConfigError(
                f"tuning.config names ConfigMap {tuning.config!r}, which was not provided (mount it and pass "
                "--config, or put it in the same file as the Workspace)"
            )
        config = load_configmap_data(data, method=method, name=f"ConfigMap {tuning.config}")
    else:
        config = default_config(method)

    source = tuning.input
    if source.urls:
        data_source = DataSource(urls=tuple(source.urls))
    elif source.image:
        data_source = DataSource(image=source.image, image_pull_docker_config=tuple(pull_docker_config))
    elif source.volume_source is not None or input_dir is not None:
        data_source = DataSource(path=input_dir or _host_path(source.volume_source, "tuning.input"))
    else:
        raise DatasetError("tuning.input needs urls, image or volumeSource")

    destination = tuning.output
    output_path = None
    if destination.volume_source is not None or output_dir is not None:
        output_path = output_dir or _host_path(destination.volume_source, "tuning.output")
    if not destination.image and output_path is None:
        raise TuningConfigError("tuning.output needs image or volumeSource")
    name = workspace.metadata.name or "tuning"
    return TuningJobSpec(
        name=name,
        preset=tuning.preset.name,
        method=method,
        config=config,
        input=data_source,
        output=OutputTarget(
            image=destination.image, push_docker_config=tuple(push_docker_config), path=output_path
        ),
        work_dir=work_dir,
        **options,
    )


def _host_path(volume_source: Mapping[str, Any] | None, field_name: str) -> Path:
    host_path = (volume_source or {}).get("hostPath")
    if isinstance(host_path, Mapping) and host_path.get("path"):
        return Path(str(host_path["path"]))
    kinds = ", ".join(sorted(volume_source or {})) or "none"
    raise TuningConfigError(
        f"{field_name}.volumeSource ({kinds}) must be mounted into the job; pass its mount directory "
        "(--input-dir / --output-dir)"
    )


# --------------------------------------------------------------------------------------------------
# Running


def resolve_model_path(preset: ModelPreset, config: TuningConfig, override: str | None = None) -> str:
    """Where the base weights are read from: an explicit path, the ConfigMap's, or the preset's."""
    if override:
        return override
    if config.model.pretrained_model_name_or_path:
        return config.model.pretrained_model_name_or_path
    if preset.local:
        return str(prepare(preset.name, progress=False))
    return preset.model_id


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import torch

    torch.set_num_threads(int(loop_config["threads"]))
    request: TrainRequest = ray.get(loop_config["request"])
    rank = ray.train.get_context().get_world_rank()
    scratch = Path(tempfile.mkdtemp(prefix=f"kairay-tune-{rank}-"))

    def report(metrics: StepMetrics) -> None:
        ray.train.report({"kind": "step", **dataclasses.asdict(metrics)})

    try:
        outcome = train_adapter(request, scratch, on_step=report)
        final = {"kind": "final", "global_step": outcome.global_step, "train_loss": outcome.train_loss}
        if outcome.adapter_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(outcome.adapter_dir))
            ray.train.report(final, checkpoint=checkpoint)
        else:
            ray.train.report(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _step_forwarder(step_queue: Any) -> Any:
    """A Train `UserCallback` that forwards rank 0's per-step metrics to the driver's queue."""
    from ray.train.v2.api.callback import UserCallback

    class _Forward(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics and metrics[0].get("kind") == "step":
                step_queue.put_nowait(metrics[0])

    return _Forward()


def _worker_error(exc: BaseException) -> BaseException:
    """The first worker's own exception inside Ray Train's wrapper, if it is one users can act on."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        cause: BaseException | None = failure
        while cause is not None:
            if isinstance(cause, USER_ERRORS):
                return cause
            cause = cause.__cause__
    return exc


def run_tuning(
    spec: TuningJobSpec,
    *,
    max_steps: int | None = None,
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
) -> TuningResult:
    """Train the adapter `spec` describes on Ray Train, then push it / copy it to its output."""
    import ray

    # Train V2 (the default in Ray 2.60) explicitly: worker_runtime_env and UserCallback are V2 API.
    from ray.train.v2.api.config import RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer
    from ray.util.queue import Empty, Queue

    started = time.monotonic()
    preset = resolve_preset(spec.preset)
    if spec.method not in preset.tuning:
        supported = ", ".join(sorted(preset.tuning)) or "none"
        raise TuningConfigError(
            f"preset {preset.name} does not support {spec.method} tuning (supports: {supported})"
        )
    config = spec.config if spec.use_gpu else cpu_overrides(spec.config)
    config.check_method(spec.method)
    check_library_keys(config)
    work_dir = spec.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(
        spec.input,
        work_dir,
        config.dataset,
        allow_private_urls=spec.allow_private_urls,
        insecure_registry=spec.insecure_registry,
    )
    model_path = resolve_model_path(preset, config, spec.model_path)
    request = TrainRequest(
        base_model=preset.model_id,
        model_path=model_path,
        method=spec.method,
        config=config.model_dump(by_alias=True),
        data_format=data.format,
        train=data.train,
        eval=data.eval,
        chat_template=preset.chat_template,
        max_steps=max_steps,
        use_gpu=spec.use_gpu,
    )

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_address)
    try:
        free = int(ray.available_resources().get("CPU", 0))
        cpus = spec.cpus_per_worker or max(1, min(DEFAULT_CPUS_PER_WORKER, free))
        env = dict(WORKER_ENV)
        if config.model.local_files_only or preset.local:
            env["HF_HUB_OFFLINE"] = "1"  # the weights are local; never reach for the hub
        steps: list[StepMetrics] = []
        step_queue = Queue(actor_options={"num_cpus": 0})
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"request": ray.put(request), "threads": cpus},
            scaling_config=ScalingConfig(
                num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker={"CPU": cpus}
            ),
            run_config=RunConfig(
                name=f"{spec.name}-{int(time.time())}",
                storage_path=str(spec.storage_path or work_dir / "ray-train"),
                worker_runtime_env={"env_vars": env},
                callbacks=[_step_forwarder(step_queue)],
            ),
        )
        logger.info(
            "tuning %s: %s %s on %d worker(s) x %d CPU, %d examples",
            spec.name,
            spec.method,
            preset.name,
            spec.num_workers,
            cpus,
            data.train.num_rows,
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc

        thread = threading.Thread(target=fit, name=f"tune-{spec.name}", daemon=True)
        thread.start()

        def deliver(item: dict[str, Any]) -> None:
            metrics = StepMetrics(**{k: v for k, v in item.items() if k in _STEP_FIELDS})
            steps.append(metrics)
            if progress is not None:
                progress(metrics)

        # Progress is delivered on the caller's thread while fit() runs on another.
        while thread.is_alive():
            with contextlib.suppress(Empty):
                deliver(step_queue.get(timeout=0.5))
        for item in step_queue.get_nowait_batch(step_queue.qsize()):
            deliver(item)
        step_queue.shutdown()
        if "error" in outcome:
            error = _worker_error(outcome["error"])
            if isinstance(error, USER_ERRORS):
                raise error
            raise TuningError(f"tuning {spec.name} failed: {error}") from error
        result = outcome["result"]
        if result.checkpoint is None:
            raise TuningError(f"tuning {spec.name} finished without a checkpoint")
        adapter_dir = work_dir / "adapter"
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        result.checkpoint.to_directory(str(adapter_dir))
        final = result.metrics or {}
    finally:
        if started_ray:
            ray.shutdown()

    info = check_adapter_dir(adapter_dir, expected_base=preset.name)
    pushed = None
    if spec.output.image:
        pushed = push_adapter(
            adapter_dir,
            spec.output.image,
            docker_config=list(spec.output.push_docker_config) or None,
            insecure=spec.insecure_registry,
            base_preset=preset.name,
        )
    if spec.output.path is not None:
        spec.output.path.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            shutil.copy2(adapter_dir / name, spec.output.path / name)
    return TuningResult(
        name=spec.name,
        adapter_dir=adapter_dir,
        base_model=info.base_model or preset.model_id,
        steps=tuple(steps),
        global_step=int(final.get("global_step") or (steps[-1].step if steps else 0)),
        train_loss=final.get("train_loss"),
        duration_s=time.monotonic() - started,
        image=pushed,
        output_path=spec.output.path,
    )


# --------------------------------------------------------------------------------------------------
# RayJob entrypoint


@dataclass
class _Arguments:
    workspace: str
    config: Path | None = None
    push_secret: Path | None = None
    pull_secret: list[Path] = field(default_factory=list)
    input_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Path | None = None
    storage_path: Path | None = None
    max_steps: int | None = None
    num_workers: int = 1
    cpus_per_worker: int | None = None
    gpu: bool = False
    insecure_registry: bool | None = None
    allow_private_urls: bool | None = None
    ray_address: str | None = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.job",
        description="Run a Kaito tuning Workspace on Ray Train and push the adapter image.",
    )
    parser.add_argument(
        "--workspace", required=True, help="Workspace YAML/JSON file, or the Workspace as JSON"
    )
    parser.add_argument(
        "--config", type=Path, help="tuning config: mounted ConfigMap dir or training_config.yaml"
    )
    parser.add_argument(
        "--push-secret", type=Path, help="mounted dockerconfigjson Secret (dir or file) for the push"
    )
    parser.add_argument(
        "--pull-secret", type=Path, action="append", default=[], help="dockerconfigjson for the input image"
    )
    parser.add_argument("--input-dir", type=Path, help="where tuning.input.volumeSource is mounted")
    parser.add_argument("--output-dir", type=Path, help="where tuning.output.volumeSource is mounted")
    parser.add_argument("--work-dir", type=Path, help="scratch space (default: a temporary directory)")
    parser.add_argument(
        "--storage-path", type=Path, help="Ray Train storage (shared when workers span nodes)"
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (overrides the config)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=int)
    parser.add_argument("--gpu", action="store_true", help="train on GPUs (one per worker)")
    parser.add_argument(
        "--insecure-registry",
        action="store_true",
        default=None,
        help="plain HTTP to the output/input registry",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=None,
        help="let input URLs reach private addresses",
    )
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
    return parser


def load_workspace_argument(value: str) -> tuple[Workspace, dict[str, dict[str, str]]]:
    """The Workspace (and any ConfigMaps next to it) from a file path or inline JSON."""
    text = value.strip()
    if text.startswith("{"):
        try:
            documents = [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise TuningConfigError(f"--workspace: invalid JSON: {exc}") from None
    else:
        documents = load_workspace_file(text)
    workspaces = [d for d in documents if d.get("kind") == "Workspace"]
    if len(workspaces) != 1:
        raise TuningConfigError(f"--workspace: expected one Workspace, found {len(workspaces)}")
    configmaps = {
        str((d.get("metadata") or {}).get("name")): {str(k): str(v) for k, v in (d.get("data") or {}).items()}
        for d in documents
        if d.get("kind") == "ConfigMap"
    }
    return parse_workspace(workspaces[0]), configmaps


def _print_step(metrics: StepMetrics) -> None:
    learning_rate = f" lr {metrics.learning_rate:.3g}" if metrics.learning_rate is not None else ""
    print(f"step {metrics.step}/{metrics.max_steps} loss {metrics.loss:.4f}{learning_rate}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _Arguments(**vars(_parser().parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        workspace, configmaps = load_workspace_argument(arguments.workspace)
        if workspace.tuning is None:
            raise TuningConfigError("the Workspace has no tuning section")
        config = (
            load_config_file(arguments.config, method=workspace.tuning.method) if arguments.config else None
        )
        work_dir = arguments.work_dir or Path(tempfile.mkdtemp(prefix="kairay-tuning-"))
        spec = spec_from_workspace(
            workspace,
            work_dir=work_dir,
            config=config,
            configmaps=configmaps,
            pull_docker_config=arguments.pull_secret,
            push_docker_config=[arguments.push_secret] if arguments.push_secret else [],
            input_dir=arguments.input_dir,
            output_dir=arguments.output_dir,
            num_workers=arguments.num_workers,
            cpus_per_worker=arguments.cpus_per_worker,
            use_gpu=arguments.gpu,
            insecure_registry=arguments.insecure_registry,
            allow_private_urls=arguments.allow_private_urls,
            storage_path=arguments.storage_path,
        )
        result = run_tuning(
            spec, max_steps=arguments.max_steps, ray_address=arguments.ray_address, progress=_print_step
        )
    except KairayError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    summary = {
        "workspace": result.name,
        "steps": result.global_step,
        "train_loss": result.train_loss,
        "final_loss": result.final_loss,
        "image": result.image.ref if result.image else None,
        "digest": result.image.digest if result.image else None,
        "output_path": str(result.output_path) if result.output_path else None,
        "seconds": round(result.duration_s, 1),
    }
    print(json.dumps({"tuning_result": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
