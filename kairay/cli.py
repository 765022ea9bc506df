"""`kairay`: one entry point dispatching to the packages. It holds no logic of its own.

User mistakes (a bad Workspace file, an unknown preset, a failed deploy) print `file: field: reason`
lines and exit non-zero; tracebacks are for bugs only.

One module: the argument parser and one thin function per command; the logic is in the packages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml

from controller.render import Rendered, RenderError, inference_preset, plan_for, render, render_serve_config
from controller.settings import ConfigError, aks_target, settings_from_flags
from kairay.api.errors import KairayError, WorkspaceError
from kairay.api.workspace import Workspace, load_workspace_file, parse_workspace
from presets.cpu import DTYPES, chosen_dtype
from presets.local_model import LOCAL_MODELS, LocalModelError, prepare
from presets.models import PRESETS, resolve_preset
from presets.sizing import format_plan, plan_tuning
from presets.skus import get_sku
from serve_apps import local
from serve_apps.local import CoreSplit

# A command imports the subsystems only it needs when it runs, so `kairay --help` or `kairay models list`
# does not load the CRD validator (CEL, re2: ~0.4 s), the Kubernetes client (~0.35 s), kopf, or the
# tuning stack (pyarrow, oras, Ray Train: absent from the controller image). None of these imports dodges
# a cycle: import-linter holds the dependency order.

EXIT_USAGE = 2
EXIT_FAILED = 1


class UserError(KairayError):
    """A mistake in what the user gave the CLI (file, flags); the message already names the file."""

    reason = "InvalidInput"
    http_status = HTTPStatus.BAD_REQUEST


def _load(path: str) -> list[Any]:
    """Every Workspace in `path`, validated as `kubectl apply` + the controller would."""
    from presets.validation import validate_workspace

    try:
        objects = load_workspace_file(path)
    except WorkspaceError as exc:
        raise UserError("\n".join(f"{path}: {e}" for e in exc.errors)) from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    # A file may carry the ConfigMaps a Workspace names (tuning.config, inference.config) beside it.
    objects = [obj for obj in objects if obj.get("kind") != "ConfigMap"]
    if not objects:
        raise UserError(f"{path}: no Workspace in file")
    problems = [f"{path}: {error}" for obj in objects for error in validate_workspace(obj)]
    if problems:
        raise UserError("\n".join(problems))
    return [parse_workspace(obj) for obj in objects]


def _one(path: str) -> Any:
    workspaces = _load(path)
    if len(workspaces) != 1:
        raise UserError(f"{path}: holds {len(workspaces)} Workspaces; `up` serves one")
    return workspaces[0]


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    if isinstance(data, list):
        return yaml.safe_dump_all(data, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False)


# ---- commands ---------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            workspaces = _load(path)
        except UserError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        for ws in workspaces:
            print(f"{path}: {ws.metadata.name}: valid")
    return EXIT_FAILED if failed else 0


def cmd_plan(args: argparse.Namespace) -> int:
    for path in args.files:
        for ws in _load(path):
            print(f"# {path}: {ws.metadata.name}")
            if ws.tuning is not None:
                if not ws.resource.instance_type:
                    raise UserError(f"{path}: resource.instanceType: needed to plan a tuning job")
                preset = resolve_preset(ws.tuning.preset.name)
                print(format_plan(plan_tuning(preset, get_sku(ws.resource.instance_type), ws.tuning.method)))
            else:
                inference_preset(ws)
                print(format_plan(plan_for(ws, "local" if args.local else "cluster")))
            print()
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    documents: list[Any] = []
    for ws in _load(args.file):
        try:
            # A tuning Workspace has no Serve application; its RayJob is what both targets run.
            if args.target == "local" and ws.tuning is None:
                documents.append(render_serve_config(ws, "local"))
            else:
                from controller.workloads import render_objects

                documents.extend(render_objects(ws))
        except RenderError as exc:
            raise UserError(f"{args.file}: {exc}") from None
    print(_dump(documents if len(documents) != 1 else documents[0], args.output), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        for name, preset in sorted(PRESETS.items()):
            where = "local (CPU)" if name in LOCAL_MODELS else "cluster"
            print(f"{name:32} {preset.model_id:45} {where}")
        return 0
    try:
        path = prepare(args.name, progress=True)
    except LocalModelError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    ws = _one(args.file)
    joining = os.environ.get("RAY_ADDRESS")
    split = None
    if not joining and ws.runtime == "vllm" and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        split = local.split_cores(os.sched_getaffinity(0))
    args.dtype = args.dtype or os.environ.get("KAIRAY_DTYPE") or None
    if args.dtype not in (None, *DTYPES):
        raise UserError(f"KAIRAY_DTYPE: must be one of {', '.join(DTYPES)}, not {args.dtype!r}")
    rendered = _render_local(ws, args.file, split, args.dtype)
    app = rendered.app
    if app.model.local:
        try:
            prepare(app.model.preset, progress=True)
        except LocalModelError as exc:
            raise UserError(str(exc)) from None
    started = time.monotonic()
    print(f"starting Ray (joining {joining})…" if joining else "starting Ray…")
    if split is not None:
        print(f"  model worker on core(s) {split.engine_binding}; Ray and Serve on {list(split.system)}")
    endpoint = local.start_ray(
        num_cpus=args.num_cpus or len(os.sched_getaffinity(0)),
        dashboard_port=args.dashboard_port,
        system_cores=split.system if split else None,
    )
    stop = _install_stop_handlers()
    try:
        print(f"deploying {app.name}: {app.model.name} on {app.runtime}, {len(app.adapters)} adapter(s)")
        print(f"  dtype {rendered.plan.dtype}: {rendered.plan.dtype_reason}")
        local.deploy(endpoint.dashboard_url, rendered.serve_config, host=args.host, port=args.port)

        def progress(status: str, message: str) -> None:
            elapsed = time.monotonic() - started
            print(f"  [{elapsed:5.0f}s] {status}{': ' + message if message else ''}", flush=True)

        local.wait_running(endpoint.dashboard_url, app.name, timeout=args.timeout, on_progress=progress)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"\nready in {time.monotonic() - started:.0f}s")
        print(f"  API:       http://{host}:{args.port}  (POST /chat, /v1/chat/completions, /v1/completions)")
        print(f"  dashboard: {endpoint.dashboard_url}")
        print("edit the file to change adapters live; Ctrl-C stops", flush=True)
        _serve_until_stopped(args, endpoint, stop, split)
    except local.DeployError as exc:
        raise UserError(str(exc)) from None
    finally:
        print("stopping…", flush=True)
        local.shutdown(endpoint)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from kairay.oci.registry import default_docker_config
    from tuning.job import main as tuning_main

    ws = _one(args.file)
    if ws.tuning is None:
        raise UserError(f"{args.file}: not a tuning Workspace (it has no `tuning` section); use `kairay up`")
    argv = ["--workspace", args.file, "--num-workers", "1"]
    push_secret = args.push_secret or default_docker_config()
    if push_secret:
        argv += ["--push-secret", str(push_secret)]
    for name, value in (
        ("--max-steps", args.max_steps),
        ("--config", args.config),
        ("--work-dir", args.work_dir),
        ("--cpus-per-worker", args.cpus_per_worker),
    ):
        if value is not None:
            argv += [name, str(value)]
    if args.allow_private_urls:
        argv.append("--allow-private-urls")
    if args.insecure_registry:
        argv.append("--insecure-registry")
    return tuning_main(argv)


def _install_stop_handlers() -> dict[str, bool]:
    stop = {"requested": False}

    def handler(signum: int, _: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _render_local(ws: Workspace, file: str, split: CoreSplit | None, dtype: str | None) -> Rendered:
    """The Workspace rendered for this machine, with the engine bound to its share of the cores."""
    try:
        rendered = render(ws, "local", cpu_dtype=chosen_dtype(dtype) if dtype else None)
    except RenderError as exc:
        raise UserError(f"{file}: {exc}") from None
    if split is None:
        return rendered
    env = {**rendered.app.env, "VLLM_CPU_OMP_THREADS_BIND": split.engine_binding}
    return Rendered(app=rendered.app.model_copy(update={"env": env}), plan=rendered.plan)


def _serve_until_stopped(
    args: argparse.Namespace, endpoint: Any, stop: dict[str, bool], split: CoreSplit | None
) -> None:
    """Block until Ctrl-C, re-applying the Workspace when its file changes (adapters hot-reload)."""
    path = Path(args.file)
    seen = path.stat().st_mtime_ns
    while not stop["requested"]:
        time.sleep(0.5)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        if mtime == seen:
            continue
        seen = mtime
        try:
            rendered = _render_local(_one(args.file), args.file, split, args.dtype)
            local.deploy(endpoint.dashboard_url, rendered.serve_config, host=args.host, port=args.port)
            print(f"re-applied {args.file}: {len(rendered.app.adapters)} adapter(s)", flush=True)
        except (UserError, local.DeployError) as exc:
            print(f"not re-applied: {exc}", file=sys.stderr, flush=True)


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.main import run

    try:
        run(
            args.kubeconfig,
            args.namespace,
            settings_from_flags(args.runtime_image, args.node_provisioner),
            aks=aks_target(args.subscription_id, args.resource_group, args.cluster_name),
            resync_seconds=args.resync_seconds,
            liveness_endpoint=args.liveness,
            log_level=args.log_level,
            lease_seconds=args.lease_seconds,
        )
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    from controller.manifests import manifests

    try:
        aks = aks_target(args.subscription_id, args.resource_group, args.cluster_name)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    documents = manifests(
        args.image,
        namespace=args.namespace,
        runtime_image=args.runtime_image,
        node_provisioner=args.node_provisioner,
        aks=aks,
    )
    print(_dump(documents, "yaml"), end="")
    return 0


# ---- parser -----------------------------------------------------------------------------------


def _add_aks_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--subscription-id",
        help="Azure subscription of the AKS cluster (default: $AZURE_SUBSCRIPTION_ID)",
    )
    parser.add_argument(
        "--resource-group",
        help="resource group of the AKS cluster (default: $AZURE_RESOURCE_GROUP)",
    )
    parser.add_argument(
        "--cluster-name",
        help="AKS cluster for --node-provisioner=aks (default: $AZURE_CLUSTER_NAME)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairay", description="Kaito Workspaces on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="serve a Workspace on a local Ray (or RAY_ADDRESS)")
    up.add_argument("file")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs for a Ray started here")
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="the CPU engine's dtype (default: float32 where it fits in RAM; env KAIRAY_DTYPE)",
    )
    up.add_argument("--timeout", type=float, default=900, help="seconds to wait for RUNNING")
    up.set_defaults(func=cmd_up)

    render = sub.add_parser("render", help="print what would be deployed")
    render.add_argument("file")
    render.add_argument(
        "--target",
        choices=["local", "cluster"],
        default="local",
        help="local: the Serve config `up` deploys; cluster: every object the controller creates",
    )
    render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    render.set_defaults(func=cmd_render)

    validate = sub.add_parser("validate", help="run every check the CRD and the controller apply")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="GPU sizing with the arithmetic")
    plan.add_argument("files", nargs="+")
    plan.add_argument("--local", action="store_true", help="plan for this machine's CPU")
    plan.set_defaults(func=cmd_plan)

    tune = sub.add_parser(
        "tune", help="run a tuning Workspace on a local Ray (or RAY_ADDRESS) and push the adapter"
    )
    tune.add_argument("file")
    tune.add_argument("--max-steps", type=int, help="stop after this many steps")
    tune.add_argument(
        "--config", type=Path, help="tuning config YAML (instead of the ConfigMap tuning.config names)"
    )
    tune.add_argument(
        "--push-secret", type=Path, help="docker config for the push (default: ~/.docker/config.json)"
    )
    tune.add_argument("--work-dir", type=Path)
    tune.add_argument("--cpus-per-worker", type=int)
    tune.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let tuning.input.urls reach loopback/private addresses (local data servers)",
    )
    tune.add_argument("--insecure-registry", action="store_true", help="plain HTTP to the registry")
    tune.set_defaults(func=cmd_tune)

    models = sub.add_parser("models", help="model presets")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    prepare = models_sub.add_parser("prepare", help="convert a local preset into the cache")
    prepare.add_argument("name")
    models_sub.add_parser("list", help="list presets")
    models.set_defaults(func=cmd_models)

    controller = sub.add_parser("controller", help="run the Kubernetes controller (Workspace -> KubeRay)")
    controller.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    controller.add_argument("--namespace", help="watch only this namespace (default: all)")
    controller.add_argument("--runtime-image", help="image of the Ray pods (default: $KAIRAY_RUNTIME_IMAGE)")
    controller.add_argument(
        "--node-provisioner",
        choices=["byo", "aks"],
        help="byo: use existing nodes; aks: one agent pool per Workspace "
        "(default: $KAIRAY_NODE_PROVISIONER or byo)",
    )
    _add_aks_flags(controller)
    controller.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="reconcile every Workspace this often even without events",
    )
    controller.add_argument(
        "--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    controller.add_argument(
        "--lease-seconds",
        type=float,
        default=15.0,
        help="leader election: how long the Lease of the replica that reconciles lasts unrenewed",
    )
    controller.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default="INFO")
    controller.set_defaults(func=cmd_controller)

    manifests = sub.add_parser("manifests", help="print the CRD, RBAC and controller Deployment")
    manifests.add_argument("--image", default=None, help="controller image")
    manifests.add_argument("--namespace", default="kairay-system")
    manifests.add_argument("--runtime-image", default=None, help="image of the Ray pods")
    manifests.add_argument("--node-provisioner", choices=["byo", "aks"], default="byo")
    _add_aks_flags(manifests)
    manifests.set_defaults(func=cmd_manifests)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except KairayError as exc:
        # Found below the CLI (a catalog, a registry, a deploy): about the user's input, not kairay.
        print(f"{getattr(args, 'file', '') or ''}: {exc}".lstrip(": "), file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
