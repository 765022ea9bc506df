"""vLLM's `AsyncLLM` behind the engine protocol.

The engine is held directly (not through `ray.serve.llm`) because Kaito adapters arrive as local
directories, which `ray.serve.llm` cannot load. Requests go through vLLM's own OpenAI serving
classes, built by vLLM's own `init_app_state` from vLLM's own argument parser, so chat templates,
validation, streaming format and LoRA resolution are exactly those of `vllm serve`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

from serve_apps.errors import EngineError, EngineRefused
from serve_apps.protocol import ChatResult, CompletionResult, LLMEngine, LoadedAdapter

logger = logging.getLogger(__name__)


def cli_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """Turn engine args (snake_case keys, as in a Kaito config ConfigMap) into `vllm serve` flags."""
    flags: list[str] = []
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            flags += [flag, *(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


class VLLMEngine(LLMEngine):
    def __init__(self, model_path: str, served_name: str, engine_args: Mapping[str, Any]) -> None:
        self._model_path = model_path
        self._served_name = served_name
        self._engine_args = dict(engine_args)
        self._llm: Any = None
        self._state: Any = None

    def _parse_args(self) -> Any:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        argv = ["--model", self._model_path, "--served-model-name", self._served_name]
        argv += cli_flags(self._engine_args)
        try:
            args = make_arg_parser(FlexibleArgumentParser(prog="vllm")).parse_args(argv)
            validate_parsed_serve_args(args)
        except SystemExit as exc:
            # argparse exits on bad flags; a bad engine arg is a configuration error, not a crash.
            raise EngineError(f"invalid vLLM engine args {argv[4:]}: see the log above") from exc
        return args

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self._parse_args()
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config()
        self._llm = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config, disable_log_stats=engine_args.disable_log_stats
        )
        self._state = State()
        await init_app_state(
            self._llm, self._state, args, supported_tasks=await self._llm.get_supported_tasks()
        )
        self.max_model_len = vllm_config.model_config.max_model_len
        self.dtype = str(vllm_config.model_config.dtype).removeprefix("torch.")

    async def chat(self, request: ChatCompletionRequest, adapter: LoadedAdapter | None) -> ChatResult:
        request.model = adapter.name if adapter else self._served_name
        result: ChatResult = await self._answer(
            self._state.openai_serving_chat.create_chat_completion, request
        )
        return result

    async def completions(
        self, request: CompletionRequest, adapter: LoadedAdapter | None
    ) -> CompletionResult:
        request.model = adapter.name if adapter else self._served_name
        result: CompletionResult = await self._answer(
            self._state.openai_serving_completion.create_completion, request
        )
        return result

    @staticmethod
    async def _answer(create: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """vLLM's answer to `request`; its error body (a refusal, or an exception) as `EngineRefused`."""
        try:
            result = await create(request, None)
        except Exception as exc:
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            raise EngineRefused.of(result)
        return result

    async def load_adapter(self, adapter: LoadedAdapter) -> None:
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = self._state.openai_serving_models
        if adapter.name in models.lora_requests:
            if models.lora_requests[adapter.name].lora_path == adapter.path:
                return
            await self.unload_adapter(adapter.name)
        result = await models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=adapter.name, lora_path=adapter.path)
        )
        if isinstance(result, ErrorResponse):
            raise EngineError(result.error.message, http_status=result.error.code)

    async def unload_adapter(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        models = self._state.openai_serving_models
        lora = models.lora_requests.get(name)
        if lora is None:
            return
        await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        # Unregistering only hides the adapter from the API; free its slot in the engine too.
        await self._llm.remove_lora(lora.lora_int_id)

    async def check_health(self) -> None:
        await self._llm.check_health()

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
