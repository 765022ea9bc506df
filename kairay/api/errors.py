"""kairay's error vocabulary: one base class, raised where a problem is found, translated at each edge.

`KairayError` is what a person can act on (a Workspace, a file, a ConfigMap, a registry they named).
Each subclass carries, as class attributes:

- `reason`: the condition reason the controller writes into a Workspace's status (Kaito's CamelCase
  vocabulary, e.g. `InvalidPreset`);
- `http_status`: the status an HTTP edge answers with.

The edges translate once: the CLI prints the message and exits 1, the controller writes a condition
with `reason`, the HTTP server answers with `http_status`. Anything that is not a `KairayError` is a bug
and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus


class KairayError(Exception):
    """Base of the errors kairay reports to a person; subclasses set `reason` and `http_status`."""

    reason: str = "Failed"
    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR


REASON_INVALID_WORKSPACE = "InvalidWorkspace"


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an object.

    ``field`` is a dotted path with list indices (``inference.adapters[1].strength``), the
    form ``kubectl`` prints; it is empty for rules about the object as a whole. ``condition`` is the
    condition reason the controller reports for it: the `reason` of the error that found it.
    """

    field: str
    reason: str
    # Not part of equality: two reports of the same problem are the same problem.
    condition: str = dataclasses.field(default=REASON_INVALID_WORKSPACE, compare=False)

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class WorkspaceError(KairayError):
    """A Workspace that cannot be accepted, with every problem found."""

    reason = REASON_INVALID_WORKSPACE
    http_status = HTTPStatus.BAD_REQUEST

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid Workspace")
