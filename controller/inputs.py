"""The inputs step: the ConfigMaps a Workspace names, read and checked.

A missing or broken ConfigMap does not stop the reconcile (the nodes are still prepared; the children
wait): it comes back as the error of `Inputs`, for the status step to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from controller.kube import Kube
from kairay.api.workspace import Workspace
from tuning.config import CONFIGMAP_KEY as TUNING_CONFIG_KEY
from tuning.config import parse_yaml

INFERENCE_CONFIG_KEY = "inference_config.yaml"


class ConfigMapNotFound(ValueError):
    """A ConfigMap the Workspace names does not exist (yet: it may be applied a moment later)."""

    reason = "ConfigMapNotFound"
    final = False


class InvalidConfigMap(ValueError):
    reason = "InvalidConfigMap"


@dataclass(frozen=True)
class Inputs:
    """The extra engine args of an inference Workspace's ConfigMap, or why there are none."""

    engine_overrides: dict[str, Any] | None = None
    error: ValueError | None = None


async def read_inputs(kube: Kube, ws: Workspace) -> Inputs:
    if ws.inference is not None:
        field, name = "inference.config", ws.inference.config
    else:
        assert ws.tuning is not None
        field, name = "tuning.config", ws.tuning.config
    if not name:
        return Inputs()
    namespace = ws.metadata.namespace or "default"
    data = await kube.configmap_data(namespace, name)
    if data is None:
        missing = f"{field}: ConfigMap {name} not found in namespace {ws.metadata.namespace}"
        return Inputs(error=ConfigMapNotFound(missing))
    try:
        if ws.tuning is not None:
            key, text = configmap_entry(data, TUNING_CONFIG_KEY, f"ConfigMap {name}")
            parse_yaml(text, method=ws.tuning.method, source=f"ConfigMap {name}[{key}]")
            return Inputs()
        return Inputs(engine_overrides=engine_overrides_from_configmap(data, ws.runtime, name))
    except ValueError as exc:
        return Inputs(error=InvalidConfigMap(f"{field}: {exc}"))


def configmap_entry(data: Mapping[str, str], key: str, source: str) -> tuple[str, str]:
    """The entry of a Kaito ConfigMap's `data` that holds its document: `key`, else the only entry."""
    if key in data:
        return key, data[key]
    if len(data) == 1:
        return next(iter(data.items()))
    found = ", ".join(sorted(data)) or "none"
    raise ValueError(f"{source}: no {key!r} key in data (keys: {found})")


def engine_overrides_from_configmap(data: Mapping[str, str], runtime: str, name: str) -> dict[str, Any]:
    """Extra engine args from Kaito's inference ConfigMap: the `<runtime>:` section of its
    `inference_config.yaml` (or only) entry, with Kaito's dashed keys (`max-model-len`) as the engine's
    snake_case ones. Raises ValueError with a message for the user."""
    key, text = configmap_entry(data, INFERENCE_CONFIG_KEY, f"ConfigMap {name}")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"ConfigMap {name}[{key}]: invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"ConfigMap {name}[{key}]: expected a mapping, found {type(document).__name__}")
    section = document.get(runtime) or {}
    if not isinstance(section, dict):
        raise ValueError(f"ConfigMap {name}[{key}]: {runtime}: expected a mapping of engine arguments")
    return {str(k).replace("-", "_"): v for k, v in section.items()}
