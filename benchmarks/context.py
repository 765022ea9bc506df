"""What every section gets: the sizes, where files go, the time budget and a progress line printer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.settings import Sizes


@dataclass
class Context:
    sizes: Sizes
    raw_dir: Path
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.sizes.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.0f}s] {message}", flush=True)
