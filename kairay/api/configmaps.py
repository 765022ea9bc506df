"""Kaito's ConfigMaps: which entry holds the configuration, and the inference one's engine arguments.

A Workspace names a ConfigMap for inference (`inference.config`, entry `inference_config.yaml`) or for
tuning (`tuning.config`, entry `training_config.yaml`). Kaito mounts the named entry; a ConfigMap with
a single entry under another key is read too. The tuning sections themselves are typed in
`tuning.config`, which picks its entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import yaml

from kairay.api.errors import KairayError

INFERENCE_CONFIG_KEY = "inference_config.yaml"
TUNING_CONFIG_KEY = "training_config.yaml"


class ConfigMapError(KairayError, ValueError):
    """A ConfigMap a Workspace names cannot be used; the message names the ConfigMap and entry."""

    reason = "InvalidConfigMap"
    http_status = HTTPStatus.BAD_REQUEST


def configmap_entry(data: Mapping[str, str], key: str, source: str) -> tuple[str, str]:
    """`(key, text)` of the entry holding the configuration: `key`, or else the only entry.

    `source` names the ConfigMap in the error (`ConfigMap my-config`).
    """
    if key in data:
        return key, data[key]
    if len(data) == 1:
        only = next(iter(data))
        return only, data[only]
    found = ", ".join(sorted(data)) or "none"
    raise ConfigMapError(f"{source}: no {key!r} key in data (keys: {found})")


def engine_overrides_from_configmap(data: Mapping[str, str], runtime: str, name: str) -> dict[str, Any]:
    """Extra engine args from Kaito's inference ConfigMap: the `<runtime>:` section of its
    `inference_config.yaml` (or only) entry, with Kaito's dashed keys (`max-model-len`) as the engine's
    snake_case ones."""
    key, text = configmap_entry(data, INFERENCE_CONFIG_KEY, f"ConfigMap {name}")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigMapError(f"ConfigMap {name}[{key}]: invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigMapError(f"ConfigMap {name}[{key}]: expected a mapping, found {type(document).__name__}")
    section = document.get(runtime) or {}
    if not isinstance(section, dict):
        raise ConfigMapError(f"ConfigMap {name}[{key}]: {runtime}: expected a mapping of engine arguments")
    return {str(k).replace("-", "_"): v for k, v in section.items()}
