"""What Ray itself refuses in what KubeRay hands it, for the fake KubeRay.

- `serve_config_errors`: a RayService's `serveConfigV2` against Ray Serve's own schema
  (`ray.serve.schema.ServeDeploySchema`, the pydantic model the dashboard's PUT /api/serve/applications/
  validates with).
- `app_build_error`: what building one application does first (Serve's `build_serve_application`):
  resolve `import_path` like `import_attr` and pass `args` through the builder's own validation.
  The builder's module is not executed (kairay's builder imports vLLM: ~12 s); instead the module must be
  found, must define the attribute at top level, and the pydantic models the builder validates its
  argument with (its parameter's annotation, or `Model.model_validate(<parameter>)` in its body) are
  imported and applied to `args`. The message is Serve's: "Deploying app 'x' failed with exception:...".
- `entrypoint_error`: a RayJob entrypoint `python -m module ...` must name an importable module, or the
  job's driver exits at once (`No module named x`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema


def serve_config_errors(serve_config: str) -> list[str]:
    """Why Ray Serve refuses this `serveConfigV2` string (empty: it accepts it)."""
    try:
        config = yaml.safe_load(serve_config) if serve_config else None
    except yaml.YAMLError as error:
        return [f"not YAML: {error}"]
    if not isinstance(config, dict):
        return ["not a mapping"]
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return []


@functools.lru_cache(maxsize=256)
def _app_build_error(name: str, import_path: str, args_json: str) -> str | None:
    args = yaml.safe_load(args_json)
    try:
        _check_app(import_path, args)
    except Exception as error:  # Serve reports any exception of the build the same way
        return f"Deploying app '{name}' failed with exception:\n{type(error).__name__}: {error}"
    return None


def app_build_error(app: dict[str, Any]) -> str | None:
    """Serve's DEPLOY_FAILED message for an application of a (schema-valid) Serve config, or None."""
    args_json = yaml.safe_dump(app.get("args") or {}, sort_keys=True)
    return _app_build_error(str(app.get("name")), str(app.get("import_path")), args_json)


def _check_app(import_path: str, args: dict[str, Any]) -> None:
    # import_attr: "module:attr", else the last dot splits module and attribute.
    module_name, _, attr = import_path.partition(":") if ":" in import_path else import_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"import_path '{import_path}' is not of the form 'module:attribute'")
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named '{module_name}'")
    if spec.origin is None or not spec.origin.endswith(".py"):
        return  # a namespace package or an extension module: nothing to read without running it
    tree = _parsed(spec.origin)
    node = _top_level(tree, attr)
    if node is None:
        raise AttributeError(f"module '{module_name}' has no attribute '{attr}'")
    if not isinstance(node, ast.FunctionDef):
        if args:
            raise ValueError(
                "Arguments can only be passed to an application builder function, "
                "not an already built application."
            )
        return
    parameters = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    if len(parameters) != 1 or node.args.vararg or node.args.kwarg:
        raise TypeError(
            "Application builder functions should take exactly one parameter, "
            "a dictionary containing the passed arguments."
        )
    for model in _argument_models(tree, node, parameters[0]):
        model.model_validate(args)


@functools.cache
def _parsed(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def _top_level(tree: ast.Module, name: str) -> ast.stmt | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return node
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return node
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name.split(".")[0]) == name for alias in node.names
        ):
            return node
    return None


def _argument_models(tree: ast.Module, builder: ast.FunctionDef, parameter: ast.arg) -> list[type[BaseModel]]:
    """The pydantic models the builder validates its argument with: its annotation, and the
    `Model.model_validate(parameter)` calls in its body, resolved through the module's imports."""
    names: list[str] = []
    if isinstance(parameter.annotation, ast.Name):
        names.append(parameter.annotation.id)
    elif isinstance(parameter.annotation, ast.Constant) and isinstance(parameter.annotation.value, str):
        names.append(parameter.annotation.value)
    for call in ast.walk(builder):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "model_validate"
            and isinstance(call.func.value, ast.Name)
            and any(isinstance(a, ast.Name) and a.id == parameter.arg for a in call.args)
        ):
            names.append(call.func.value.id)
    imported = {
        alias.asname or alias.name: (node.module, alias.name)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        for alias in node.names
    }
    models: list[type[BaseModel]] = []
    for name in names:
        if name in imported:
            module, attr = imported[name]
            found = getattr(importlib.import_module(module), attr)
            if isinstance(found, type) and issubclass(found, BaseModel):
                models.append(found)
    return models


def entrypoint_error(entrypoint: str) -> str | None:
    """The driver's failure for a `python -m module ...` entrypoint whose module cannot be imported."""
    try:
        words = shlex.split(entrypoint)
    except ValueError as error:
        return f"the entrypoint is not a shell command: {error}"
    if len(words) >= 3 and words[0].startswith("python") and words[1] == "-m":
        module = words[2]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{words[0]}: No module named {module}"
    return None
