"""kairay's Serve app with one addition, for the routing benchmark: a request can opt out of
LoRA-aware routing.

`model: "<adapter>@random"` is served by `<adapter>`, but the ingress does not give the adapter to
Serve as the multiplexed model id, so Serve's router picks the replica without regard to which one
holds the adapter (power of two choices on queue length): what kairay would do without multiplexed
routing. The replica then loads the adapter through the same multiplexer (same LRU, same limit of
loaded adapters per replica) as a multiplexed request would. Both modes thus run on the same
replicas, interleaved, and differ only in routing. Every other request takes kairay's unchanged path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

from ray import serve

from benchmarks.settings import RANDOM_SUFFIX
from serve_apps import app as kairay_app
from serve_apps.adapter_registry import AdapterCatalog
from serve_apps.ingress import Ingress
from serve_apps.llm_server import LLMServer
from serve_apps.protocol import Completion, Kind, Stream, StreamHead


def _unrouted(adapter: str) -> str:
    # No multiplexed model id: the router ignores adapter placement. The replica reads the adapter
    # from the request's `model`, which still carries the suffix.
    return "" if adapter.endswith(RANDOM_SUFFIX) else adapter


class _RandomCatalog(AdapterCatalog):
    def resolve(self, model: str | None) -> str:
        name = (model or "").removesuffix(RANDOM_SUFFIX)
        if name != model and name in self.adapters:
            return model or ""
        return super().resolve(model)


class RandomRoutingIngress(Ingress):
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        super().reconfigure(user_config)
        self.adapters = _RandomCatalog(self.adapters.base_model, self.adapters.adapters)

    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        return await super().generate(kind, request, _unrouted(adapter))

    async def stream(self, kind: Kind, request: Any, adapter: str) -> Stream:
        return await super().stream(kind, request, _unrouted(adapter))


def _requested(request: Any, adapter: str) -> str:
    model = getattr(request, "model", None) or ""
    if model.endswith(RANDOM_SUFFIX) and not adapter:
        # From here on the request is resolved exactly like a multiplexed one.
        return model.removesuffix(RANDOM_SUFFIX)
    return adapter


class RandomRoutingLLMServer(LLMServer):
    async def generate(self, kind: Kind, request: Any, adapter: str) -> Completion:
        return await super().generate(kind, request, _requested(request, adapter))

    async def stream(self, kind: Kind, request: Any, adapter: str) -> AsyncIterator[StreamHead | str]:
        async for item in super().stream(kind, request, _requested(request, adapter)):
            yield item


def build_app(args: dict[str, Any]) -> serve.Application:
    # kairay's own builder with the two classes swapped, so that every deployment option (limits,
    # resources, user_config, health checks) stays exactly the product's.
    with mock.patch.multiple(kairay_app, Ingress=RandomRoutingIngress, LLMServer=RandomRoutingLLMServer):
        return kairay_app.build_app(args)
