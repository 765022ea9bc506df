"""Azure GPU VM sizes that a Workspace's `resource.instanceType` may name.

`gpu_memory_gb` is the card's nominal size. The estimator reads it as GB (1e9 bytes) although the
cards have GiB, which leaves it about 7 % on the safe side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType

from kairay.api.errors import KairayError
from presets.models import suggest


@dataclass(frozen=True)
class GpuSku:
    name: str
    gpu_count: int
    gpu_memory_gb: float
    gpu_model: str
    compute_capability: str
    bf16: bool
    vcpus: int
    memory_gb: float

    @property
    def total_gpu_memory_gb(self) -> float:
        return self.gpu_count * self.gpu_memory_gb

    def describe(self) -> str:
        return f"{self.name} ({self.gpu_count} x {self.gpu_model} {self.gpu_memory_gb:g} GB)"


class UnknownInstanceTypeError(KairayError, ValueError):
    reason = "InvalidInstanceType"
    http_status = HTTPStatus.BAD_REQUEST

    def __init__(self, name: str) -> None:
        self.name = name
        self.suggestion = suggest(name, SKUS)
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else "."
        super().__init__(
            f"unknown GPU instance type {name!r}{hint} Known instance types: {', '.join(sorted(SKUS))}"
        )


def _family(
    gpu_model: str,
    gpu_memory_gb: float,
    compute_capability: str,
    sizes: tuple[tuple[str, int, int, float], ...],
) -> list[GpuSku]:
    # bfloat16 arithmetic arrived with Ampere (compute capability 8.0).
    bf16 = tuple(int(part) for part in compute_capability.split(".")) >= (8, 0)
    return [
        GpuSku(name, gpus, gpu_memory_gb, gpu_model, compute_capability, bf16, vcpus, memory_gb)
        for name, gpus, vcpus, memory_gb in sizes
    ]


_CATALOG = [
    *_family(
        "V100",
        16,
        "7.0",
        (
            ("Standard_NC6s_v3", 1, 6, 112),
            ("Standard_NC12s_v3", 2, 12, 224),
            ("Standard_NC24s_v3", 4, 24, 448),
            ("Standard_NC24rs_v3", 4, 24, 448),
        ),
    ),
    *_family(
        "T4",
        16,
        "7.5",
        (
            ("Standard_NC4as_T4_v3", 1, 4, 28),
            ("Standard_NC8as_T4_v3", 1, 8, 56),
            ("Standard_NC16as_T4_v3", 1, 16, 110),
            ("Standard_NC64as_T4_v3", 4, 64, 440),
        ),
    ),
    *_family(
        "A10",
        24,
        "8.6",
        (
            ("Standard_NV36ads_A10_v5", 1, 36, 440),
            ("Standard_NV72ads_A10_v5", 2, 72, 880),
        ),
    ),
    *_family(
        "A100",
        80,
        "8.0",
        (
            ("Standard_NC24ads_A100_v4", 1, 24, 220),
            ("Standard_NC48ads_A100_v4", 2, 48, 440),
            ("Standard_NC96ads_A100_v4", 4, 96, 880),
            ("Standard_ND96amsr_A100_v4", 8, 96, 1900),
        ),
    ),
    *_family("A100", 40, "8.0", (("Standard_ND96asr_v4", 8, 96, 900),)),
    *_family(
        "H100 NVL",
        94,
        "9.0",
        (
            ("Standard_NC40ads_H100_v5", 1, 40, 320),
            ("Standard_NC80adis_H100_v5", 2, 80, 640),
        ),
    ),
    *_family("H100", 80, "9.0", (("Standard_ND96isr_H100_v5", 8, 96, 1900),)),
    *_family("H200", 141, "9.0", (("Standard_ND96isr_H200_v5", 8, 96, 1850),)),
]

SKUS: Mapping[str, GpuSku] = MappingProxyType({sku.name: sku for sku in _CATALOG})
_BY_LOWER = {name.lower(): sku for name, sku in SKUS.items()}


def get_sku(name: str) -> GpuSku:
    """A GPU instance type by its Azure VM size name, in any letter case."""
    sku = _BY_LOWER.get(name.strip().lower())
    if sku is None:
        raise UnknownInstanceTypeError(name)
    return sku
