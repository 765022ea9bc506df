"""The inputs step: the ConfigMaps a Workspace names, read and checked.

A missing or broken ConfigMap does not stop the reconcile (the nodes are still prepared; the children
wait): it comes back as the error of `Inputs`, for the status step to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from controller.kube import Kube
from kairay.api.configmaps import ConfigMapError, engine_overrides_from_configmap
from kairay.api.errors import KairayError
from kairay.api.workspace import Workspace
from tuning.config import load_configmap_data


class ConfigMapNotFound(KairayError):
    """A ConfigMap the Workspace names does not exist (yet: it may be applied a moment later)."""

    reason = "ConfigMapNotFound"
    http_status = HTTPStatus.NOT_FOUND
    final = False


@dataclass(frozen=True)
class Inputs:
    """The extra engine args of an inference Workspace's ConfigMap, or why there are none."""

    engine_overrides: dict[str, Any] | None = None
    error: KairayError | None = None


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
            load_configmap_data(data, method=ws.tuning.method, name=f"ConfigMap {name}")
            return Inputs()
        return Inputs(engine_overrides=engine_overrides_from_configmap(data, ws.runtime, name))
    except KairayError as exc:  # ConfigMapError, or the tuning sections' TuningConfigError
        return Inputs(error=ConfigMapError(f"{field}: {exc}"))
