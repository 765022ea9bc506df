"""transformers + peft behind the engine protocol (annotation `kaito.sh/runtime: transformers`).

The fallback runtime: no batching, one generation at a time per replica (Serve queues the rest), and
the one that merges adapters by strength with peft's weighted merge. It answers with vLLM's OpenAI
protocol models so the ingress cannot tell the engines apart.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from serve_apps.engines.openai_shapes import ChatShape, CompletionShape, Shape, sse, usage
from serve_apps.errors import BadRequest, EngineError, error_response
from serve_apps.protocol import ChatResult, CompletionResult, LLMEngine, LoadedAdapter

_DTYPES = {
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "float32": "float32",
    "auto": "auto",
}


@dataclass(frozen=True)
class _Generation:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: dict[str, Any]
    stop: list[str]


class TransformersEngine(LLMEngine):
    def __init__(self, model_path: str, served_name: str, engine_args: Mapping[str, Any]) -> None:
        self._model_path = model_path
        self._served_name = served_name
        self._engine_args = dict(engine_args)
        self._model: Any = None
        self._tokenizer: Any = None
        self._adapters: dict[str, LoadedAdapter] = {}
        # One generation at a time: peft's active adapter is model-global state.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        threads = os.environ.get("KAIRAY_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        dtype_name = _DTYPES.get(str(self._engine_args.get("dtype", "auto")), "auto")
        dtype = dtype_name if dtype_name == "auto" else getattr(torch, dtype_name)
        self._tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        self._model = AutoModelForCausalLM.from_pretrained(self._model_path, dtype=dtype)
        self._model.eval()
        self.dtype = str(self._model.dtype).removeprefix("torch.")
        configured = self._engine_args.get("max_model_len")
        native = int(getattr(self._model.config, "max_position_embeddings", 2048))
        self.max_model_len = min(int(configured), native) if configured else native
        template = self._engine_args.get("chat_template")
        if template:
            self._tokenizer.chat_template = template

    # ---- requests -------------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, adapter: LoadedAdapter | None) -> ChatResult:
        try:
            messages = [_plain_message(m) for m in request.messages]
            prompt_ids = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:
            raise BadRequest(f"cannot apply the chat template: {exc}") from exc
        max_tokens = request.max_completion_tokens or request.max_tokens
        generation = self._plan(list(prompt_ids), max_tokens, request, n=request.n or 1)
        shape = ChatShape(model=request.model or self._served_name)
        result: ChatResult = await self._answer(generation, adapter, request, shape)
        return result

    async def completions(
        self, request: CompletionRequest, adapter: LoadedAdapter | None
    ) -> CompletionResult:
        prompt = request.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = self._tokenizer(prompt, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise BadRequest("this runtime takes one prompt per request", param="prompt")
        if request.echo or request.logprobs:
            raise BadRequest("echo and logprobs are not supported by the transformers runtime")
        generation = self._plan(list(prompt_ids), request.max_tokens, request, n=request.n)
        shape = CompletionShape(model=request.model or self._served_name)
        result: CompletionResult = await self._answer(generation, adapter, request, shape)
        return result

    async def _answer(
        self,
        gen: _Generation,
        adapter: LoadedAdapter | None,
        request: ChatCompletionRequest | CompletionRequest,
        shape: Shape,
    ) -> Any:
        if request.stream:
            return self._sse_stream(gen, adapter, request, shape)
        text, finish, produced = await self._generate(gen, adapter)
        return shape.whole(text, finish, usage(len(gen.prompt_ids), produced))

    def _plan(
        self,
        prompt_ids: list[int],
        max_tokens: int | None,
        request: ChatCompletionRequest | CompletionRequest,
        n: int,
    ) -> _Generation:
        limit = self.max_model_len or 2048
        if n != 1:
            raise BadRequest("the transformers runtime generates one choice (n=1)", param="n")
        if getattr(request, "logprobs", None) and isinstance(request, ChatCompletionRequest):
            raise BadRequest("logprobs are not supported by the transformers runtime", param="logprobs")
        if max_tokens is not None and max_tokens > limit:
            raise BadRequest(
                f"max_tokens={max_tokens} cannot be greater than max_model_len={limit}. "
                "Please request fewer output tokens.",
                param="max_tokens",
            )
        room = limit - len(prompt_ids)
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens; the prompt has "
                f"{len(prompt_ids)} tokens and {max_tokens or 0} were requested for the answer.",
                param="max_tokens" if room > 0 else "input_tokens",
            )
        # Unset sampling fields fall back to the model's generation_config, as vLLM does.
        defaults = self._model.generation_config
        temperature = float(
            request.temperature if request.temperature is not None else defaults.temperature or 1.0
        )
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling["temperature"] = temperature
            top_p = request.top_p if request.top_p is not None else defaults.top_p
            if top_p is not None:
                sampling["top_p"] = float(top_p)
            top_k = request.top_k if request.top_k is not None else defaults.top_k
            if top_k is not None and top_k > 0:
                sampling["top_k"] = int(top_k)
        stop = request.stop if isinstance(request.stop, list) else [request.stop] if request.stop else []
        return _Generation(prompt_ids, max_tokens or room, sampling, [s for s in stop if s])

    async def _generate(self, gen: _Generation, adapter: LoadedAdapter | None) -> tuple[str, str, int]:
        pieces: list[str] = []
        finish = "length"
        produced = 0
        async for piece, done, count in self._stream_tokens(gen, adapter):
            pieces.append(piece)
            if done:
                finish, produced = done, count
        return "".join(pieces), finish, produced

    async def _stream_tokens(
        self, gen: _Generation, adapter: LoadedAdapter | None
    ) -> AsyncIterator[tuple[str, str, int]]:
        """Yield (text, "", 0) while generating in a thread, then ("", finish_reason, tokens)."""
        import torch
        from transformers import TextIteratorStreamer

        async with self._lock:
            streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
            input_ids = torch.tensor([gen.prompt_ids])
            kwargs: dict[str, Any] = {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "max_new_tokens": gen.max_new_tokens,
                "streamer": streamer,
                "pad_token_id": self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                **gen.sampling,
            }
            if gen.stop:
                kwargs["stop_strings"] = gen.stop
                kwargs["tokenizer"] = self._tokenizer
            outcome: dict[str, Any] = {}
            thread = threading.Thread(target=self._run_generate, args=(kwargs, adapter, outcome), daemon=True)
            thread.start()
            loop = asyncio.get_running_loop()
            iterator = iter(streamer)
            while True:
                piece = await loop.run_in_executor(None, next, iterator, None)
                if piece is None:
                    break
                if piece:
                    yield piece, "", 0
            await loop.run_in_executor(None, thread.join)
            if "error" in outcome:
                raise EngineError(f"generation failed: {outcome['error']}")
            produced = int(outcome.get("produced", 0))
            finish = "length" if produced >= gen.max_new_tokens else "stop"
            yield "", finish, produced

    def _run_generate(
        self, kwargs: dict[str, Any], adapter: LoadedAdapter | None, outcome: dict[str, Any]
    ) -> None:
        import contextlib

        import torch

        try:
            model = self._model
            context: Any = contextlib.nullcontext()
            if self._adapters and hasattr(model, "peft_config"):
                if adapter is None:
                    # peft keeps the name of a deleted adapter active when none or several remain;
                    # name a live one before switching adapters off.
                    model.set_adapter(_peft_name(next(iter(self._adapters))))
                    context = model.disable_adapter()
                else:
                    model.set_adapter(_peft_name(adapter.name))
            with torch.inference_mode(), context:
                output = model.generate(**kwargs)
            outcome["produced"] = int(output.shape[-1] - kwargs["input_ids"].shape[-1])
        except Exception as exc:
            outcome["error"] = exc
            # Unblock the streamer's consumer: it waits for an end-of-stream signal.
            kwargs["streamer"].end()

    async def _sse_stream(
        self,
        gen: _Generation,
        adapter: LoadedAdapter | None,
        request: ChatCompletionRequest | CompletionRequest,
        shape: Shape,
    ) -> AsyncIterator[str]:
        """SSE lines for a generation, shaped by `shape`; the usage chunk if the client asked."""
        for body in shape.opening():
            yield sse(body)
        produced = 0
        try:
            async for piece, finish, count in self._stream_tokens(gen, adapter):
                produced = count or produced
                event = shape.event(piece, finish or None)
                if event is not None:
                    yield sse(event)
        except EngineError as exc:
            yield sse(error_response(str(exc), HTTPStatus.INTERNAL_SERVER_ERROR))
        if request.stream_options and request.stream_options.include_usage:
            yield sse(shape.usage(usage(len(gen.prompt_ids), produced)))
        yield "data: [DONE]\n\n"

    # ---- adapters -------------------------------------------------------------------------------

    async def load_adapter(self, adapter: LoadedAdapter) -> None:
        if self._adapters.get(adapter.name) == adapter:
            return
        async with self._lock:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._merge_adapter, adapter)
            except Exception as exc:
                raise EngineError(f"adapter {adapter.name!r} failed to load: {exc}") from exc
            self._adapters[adapter.name] = adapter

    def _merge_adapter(self, adapter: LoadedAdapter) -> None:
        from peft import PeftModel

        name = _peft_name(adapter.name)
        raw = f"{name}-raw"
        if isinstance(self._model, PeftModel):
            if name in self._model.peft_config:
                self._model.delete_adapter(name)
            self._model.load_adapter(adapter.path, adapter_name=raw)
        else:
            self._model = PeftModel.from_pretrained(self._model, adapter.path, adapter_name=raw)
        # The weighted merge scales the adapter's delta by `strength`; strength 0 is the base model.
        self._model.add_weighted_adapter(
            adapters=[raw], weights=[adapter.strength], adapter_name=name, combination_type="linear"
        )
        self._model.delete_adapter(raw)
        self._model.eval()

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            return
        async with self._lock:
            self._model.delete_adapter(_peft_name(name))
            del self._adapters[name]
            if not self._adapters:
                # The last one gone: back to the plain model (peft's LoRA layers removed).
                self._model = self._model.unload()

    async def check_health(self) -> None:
        if self._model is None:
            raise EngineError("model not loaded", http_status=HTTPStatus.SERVICE_UNAVAILABLE)

    def shutdown(self) -> None:
        self._model = None


def _plain_message(message: Any) -> dict[str, str]:
    """Flatten OpenAI content parts to text: this runtime is text-only."""
    role = message.get("role", "user") if isinstance(message, dict) else getattr(message, "role", "user")
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
            if kind != "text":
                raise ValueError(f"content part of type {kind!r} is not supported (text only)")
            texts.append(part["text"] if isinstance(part, dict) else part.text)
        content = "".join(texts)
    return {"role": str(role), "content": "" if content is None else str(content)}


def _peft_name(name: str) -> str:
    """The name peft keeps an adapter under. peft makes each one an attribute of the model's modules,
    so a Workspace adapter named like a module attribute (`half`, `float`, `eval`) would clash; no
    attribute has a dash."""
    return f"kairay-{name}"
