"""Workspace samples shared by the CRD, validation and fake API server tests.

Each ``valid/*.yaml`` and ``invalid/*.yaml`` file holds one Workspace, or two documents for an
update: the stored Workspace first, then the one applied over it. Every ``# expect: ...`` line of an
invalid sample is one error the API server must report, written as ``str(FieldError)``
(``field: message``, or the message alone for rules about the whole object); together they are all
the errors it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).parent


@dataclass(frozen=True)
class Sample:
    name: str
    obj: dict[str, Any]
    old: dict[str, Any] | None
    expect: frozenset[str]


def load_samples(kind: str) -> list[Sample]:
    """The samples in ``valid`` or ``invalid``, sorted by file name."""
    samples = []
    for path in sorted((SAMPLES / kind).glob("*.yaml")):
        text = path.read_text()
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        old, obj = (documents[0], documents[1]) if len(documents) == 2 else (None, documents[0])
        expect = frozenset(
            line.removeprefix("# expect:").strip()
            for line in text.splitlines()
            if line.startswith("# expect:")
        )
        samples.append(Sample(path.stem, obj, old, expect))
    return samples
