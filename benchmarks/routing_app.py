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

from typing import Any
from unittest import mock

from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.context import _set_request_context

from benchmarks.settings import RANDOM_SUFFIX
from serve_apps import app as kairay_app
from serve_apps.ingress import Ingress
from serve_apps.llm_server import Kind, LLMServer


class RandomRoutingIngress(Ingress):
    def _adapter_for(self, model: str | None) -> str | JSONResponse:
        if model is None or not model.endswith(RANDOM_SUFFIX):
            return super()._adapter_for(model)
        adapter = super()._adapter_for(model.removesuffix(RANDOM_SUFFIX))
        return adapter if isinstance(adapter, JSONResponse) else model

    async def _forward(self, route: str, kind: str, parsed: Any, adapter: str) -> Any:
        if adapter.endswith(RANDOM_SUFFIX):
            # No multiplexed model id: the router ignores adapter placement. The replica reads the
            # adapter from `parsed.model`, which still carries the suffix.
            return await super()._forward(route, kind, parsed, "")
        return await super()._forward(route, kind, parsed, adapter)


class RandomRoutingLLMServer(LLMServer):
    async def _call(self, kind: Kind, request: Any) -> Any:
        model = getattr(request, "model", None) or ""
        if model.endswith(RANDOM_SUFFIX) and not serve.get_multiplexed_model_id():
            # From here on the request is resolved exactly like a multiplexed one.
            _set_request_context(multiplexed_model_id=model.removesuffix(RANDOM_SUFFIX))
        return await super()._call(kind, request)


def build_app(args: dict[str, Any]) -> serve.Application:
    # kairay's own builder with the two classes swapped, so that every deployment option (limits,
    # resources, user_config, health checks) stays exactly the product's.
    with mock.patch.multiple(kairay_app, Ingress=RandomRoutingIngress, LLMServer=RandomRoutingLLMServer):
        return kairay_app.build_app(args)
