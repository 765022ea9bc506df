"""Bring-your-own nodes: no pool is created; the Workspace is ready once enough suitable nodes are.

Suitability comes from the labels NVIDIA GPU feature discovery puts on nodes. A node without those
labels is taken on trust; a node whose labels show fewer or smaller GPUs than the plan assumed is
reported and left out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kubernetes.client import CoreV1Api, V1NodeList
from kubernetes.client.exceptions import ApiException

from controller.nodes.base import (
    GPU_COUNT_LABEL,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    NodeReport,
    NodeRequest,
    Reason,
    node_is_ready,
    node_labels,
    node_name,
)

_MIB = 2**20
_GB = 1e9


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class GpuFacts:
    """What a node's `nvidia.com/gpu.*` labels say; None where a label is absent or unreadable."""

    count: int | None
    memory_mib: int | None
    product: str | None

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> GpuFacts:
        return cls(
            count=_int_label(labels, GPU_COUNT_LABEL),
            memory_mib=_int_label(labels, GPU_MEMORY_LABEL),
            product=labels.get(GPU_PRODUCT_LABEL),
        )

    def shortfalls(self, req: NodeRequest) -> list[str]:
        """Why this node cannot host one of the Workspace's workers (empty when it can)."""
        problems = []
        if req.gpus_per_node is not None and self.count is not None and self.count < req.gpus_per_node:
            problems.append(f"{self.count} GPUs, needs {req.gpus_per_node}")
        if (
            req.gpu_memory_needed_gb is not None
            and self.memory_mib is not None
            and self.memory_mib * _MIB / _GB < req.gpu_memory_needed_gb
        ):
            problems.append(
                f"{self.memory_mib} MiB per GPU ({self.memory_mib * _MIB / _GB:.1f} GB), "
                f"needs {req.gpu_memory_needed_gb:g} GB"
            )
        return problems


class ByoProvisioner:
    """`NodeProvisioner` over nodes the user already has (`--node-provisioner=byo`, `preferredNodes`)."""

    def __init__(
        self, core_v1_api: CoreV1Api, *, listing_max_age: float = 2.0
    ) -> None:
        """`listing_max_age`: how long one node listing answers for every Workspace with the same
        labelSelector (a burst of new Workspaces would otherwise list the nodes once each)."""
        self._core = core_v1_api
        self._max_age = listing_max_age
        self._listings: dict[str, tuple[float, asyncio.Future[V1NodeList]]] = {}

    async def close(self) -> None:
        """Nothing to close: the Kubernetes client belongs to the caller."""

    async def release(self, req: NodeRequest) -> bool:
        """BYO nodes are the user's: nothing to delete."""
        return True

    async def ensure(self, req: NodeRequest) -> NodeReport:
        selector = req.label_selector()
        try:
            nodes = await self._list(selector)
        except ApiException as exc:
            return NodeReport.listing_failed(req, exc)

        preferred = {name: i for i, name in enumerate(req.preferred_nodes)}
        usable: list[tuple[str, GpuFacts]] = []
        mismatched: dict[str, list[str]] = {}
        not_ready = 0
        for node in nodes.items:
            name = node_name(node)
            facts = GpuFacts.from_labels(node_labels(node))
            problems = facts.shortfalls(req)
            if problems:
                mismatched[name] = problems
            elif node_is_ready(node):
                usable.append((name, facts))
            else:
                not_ready += 1
        # preferredNodes come first, in the user's order; the rest by name for a stable choice.
        usable.sort(key=lambda item: (preferred.get(item[0], len(preferred)), item[0]))
        chosen = usable[: req.node_count]
        mismatch_text = "; ".join(f"{name}: {', '.join(p)}" for name, p in sorted(mismatched.items()))

        if len(chosen) == req.node_count:
            products = sorted({facts.product for _, facts in chosen if facts.product})
            message = f"{len(chosen)} nodes Ready" + (f" ({', '.join(products)})" if products else "")
            if mismatched:
                message += f"; not used: {mismatch_text}"
            return NodeReport.of(
                req,
                True,
                Reason.READY,
                message,
                nodes=[name for name, _ in chosen],
            )

        message = f"{len(usable)} of {req.node_count} nodes matching labelSelector {selector!r} are Ready" + (
            f", {not_ready} not Ready" if not_ready else ""
        )
        found = {node_name(node) for node in nodes.items}
        missing = [name for name in req.preferred_nodes if name not in found]
        if missing:
            message += f"; preferred nodes not found or not matching labelSelector: {', '.join(missing)}"
        if mismatched:
            message += f"; unsuitable: {mismatch_text}"
        return NodeReport.of(
            req,
            False,
            Reason.NODE_MISMATCH if mismatched else Reason.NODES_NOT_READY,
            message,
            nodes=[name for name, _ in chosen],
        )

    async def _list(self, selector: str) -> V1NodeList:
        now = time.monotonic()
        cached = self._listings.get(selector)
        if cached is None or now - cached[0] > self._max_age:
            listing = asyncio.ensure_future(
                asyncio.to_thread(self._core.list_node, label_selector=selector or None)
            )
            cached = self._listings[selector] = (now, listing)
        try:
            # Shielded: one caller being cancelled must not cancel the listing the others wait for.
            return await asyncio.shield(cached[1])
        except ApiException:
            if self._listings.get(selector) is cached:
                del self._listings[selector]  # the next Workspace asks again rather than reuse a failure
            raise
