"""`WorkspaceOptions`: every annotation kairay reads from a Workspace, typed and checked in one place.

Annotations are strings no CRD can check. They are parsed here once, when the Workspace is parsed, so
the rest of kairay reads typed values (`ws.options.max_replicas`) and a bad value is reported as
`metadata.annotations[<key>]: <reason>` by every check that parses a Workspace (CLI, controller).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

Runtime = Literal["vllm", "transformers"]
RUNTIMES: tuple[Runtime, ...] = ("vllm", "transformers")
DEFAULT_RUNTIME: Runtime = "vllm"

RUNTIME_ANNOTATION = "kaito.sh/runtime"
MIN_REPLICAS_ANNOTATION = "kairay.io/min-replicas"
MAX_REPLICAS_ANNOTATION = "kairay.io/max-replicas"
MAX_ONGOING_REQUESTS_ANNOTATION = "kairay.io/max-ongoing-requests"
MAX_QUEUED_REQUESTS_ANNOTATION = "kairay.io/max-queued-requests"

# The pydantic error type whose context names the annotation, so callers can report its key.
ANNOTATION_ERROR = "invalid_annotation"
_WHOLE_NUMBER = re.compile(r"^[0-9]+$")
# The least value of each whole-number annotation.
_LEAST = {
    MIN_REPLICAS_ANNOTATION: 0,
    MAX_REPLICAS_ANNOTATION: 1,
    # Serve's own bounds (serve_apps.config.Limits): a replica runs at least one request.
    MAX_ONGOING_REQUESTS_ANNOTATION: 1,
    MAX_QUEUED_REQUESTS_ANNOTATION: 0,
}


@dataclass(frozen=True)
class Autoscaling:
    """Replica bounds for the Serve deployment, from the kairay.io/*-replicas annotations."""

    min_replicas: int
    max_replicas: int


class WorkspaceOptions(BaseModel):
    """The kaito.sh/* and kairay.io/* annotations kairay acts on; other annotations are ignored.

    | annotation                       | field                  | absent                      |
    |----------------------------------|------------------------|-----------------------------|
    | `kaito.sh/runtime`               | `runtime`              | `vllm`                      |
    | `kairay.io/min-replicas`         | `min_replicas`         | see `autoscaling`           |
    | `kairay.io/max-replicas`         | `max_replicas`         | see `autoscaling`           |
    | `kairay.io/max-ongoing-requests` | `max_ongoing_requests` | the runtime's default limit |
    | `kairay.io/max-queued-requests`  | `max_queued_requests`  | the runtime's default limit |
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    runtime: Runtime = Field(DEFAULT_RUNTIME, validation_alias=RUNTIME_ANNOTATION)
    min_replicas: int | None = Field(None, validation_alias=MIN_REPLICAS_ANNOTATION)
    max_replicas: int | None = Field(None, validation_alias=MAX_REPLICAS_ANNOTATION)
    max_ongoing_requests: int | None = Field(None, validation_alias=MAX_ONGOING_REQUESTS_ANNOTATION)
    max_queued_requests: int | None = Field(None, validation_alias=MAX_QUEUED_REQUESTS_ANNOTATION)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        """The first bad annotation, with a message that quotes what the user wrote."""
        if not isinstance(data, Mapping):
            return data
        runtime = data.get(RUNTIME_ANNOTATION)
        if runtime is not None and runtime not in RUNTIMES:
            allowed = ", ".join(RUNTIMES)
            raise annotation_error(RUNTIME_ANNOTATION, f"must be one of {allowed}, not {runtime!r}")
        for key, least in _LEAST.items():
            value = data.get(key)
            if value is not None and (not _WHOLE_NUMBER.match(str(value)) or int(value) < least):
                raise annotation_error(key, f"must be a whole number of at least {least}, not {value!r}")
        low, high = data.get(MIN_REPLICAS_ANNOTATION), data.get(MAX_REPLICAS_ANNOTATION)
        if low is not None and high is not None and int(low) > int(high):
            raise annotation_error(
                MIN_REPLICAS_ANNOTATION, f"must not exceed {MAX_REPLICAS_ANNOTATION} ({low} > {high})"
            )
        return data

    @property
    def autoscaling(self) -> Autoscaling | None:
        """Replica bounds when either kairay.io/min-replicas or kairay.io/max-replicas is set.

        A missing minimum is 1; a missing maximum equals the minimum (at least 1), so setting only
        min-replicas pins the replica count.
        """
        if self.min_replicas is None and self.max_replicas is None:
            return None
        low = 1 if self.min_replicas is None else self.min_replicas
        high = max(low, 1) if self.max_replicas is None else self.max_replicas
        return Autoscaling(low, high)


def annotation_error(key: str, reason: str) -> PydanticCustomError:
    # The key travels in the context so the error can name metadata.annotations[<key>].
    return PydanticCustomError(ANNOTATION_ERROR, "{reason}", {"key": key, "reason": reason})
