"""Validation errors shared by the CRD validator, the pydantic models and the controller."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an object.

    ``field`` is a dotted path with list indices (``inference.adapters[1].strength``), the
    form ``kubectl`` prints; it is empty for rules about the object as a whole.
    """

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class WorkspaceError(ValueError):
    """A Workspace that cannot be accepted, with every problem found."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid Workspace")
