"""The engine interface, at the level of OpenAI requests, and what the server answers with.

Both engines take vLLM's own OpenAI protocol models and answer with them, so the ingress, the LLM
deployment and the tests never care which engine runs. A non-streaming call returns the response
model; a streaming call returns an async iterator of ready-made SSE lines (`data: {...}\\n\\n`,
ending with `data: [DONE]\\n\\n`). A request the engine refuses raises a `serve_apps.errors` error
before any token (`EngineRefused` carries vLLM's own error body).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse

ChatResult = ChatCompletionResponse | AsyncIterator[str]
CompletionResult = CompletionResponse | AsyncIterator[str]
Kind = Literal["chat", "completions"]


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter materialized on local disk, ready for an engine to load."""

    name: str
    path: str
    strength: float


@dataclass(frozen=True)
class EngineFacts:
    """What a started engine runs, as /health and /v1/models report it."""

    max_model_len: int | None
    dtype: str | None


@dataclass(frozen=True)
class AdapterState:
    """Whether a configured adapter could be materialized; `reason` is the controller's condition reason."""

    name: str
    ready: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Completion:
    """A whole (non-streaming) answer: the OpenAI response body and the replica's headers."""

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamHead:
    """What a streamed answer opens with: the replica's headers and the first SSE lines, so the
    first token leaves with the headers (one item over a handle, not two)."""

    headers: dict[str, str]
    first: tuple[str, ...]


@dataclass(frozen=True)
class Stream:
    """A streamed answer the engine accepted: headers, then every SSE line."""

    headers: dict[str, str]
    lines: AsyncIterator[str]


async def opened(items: AsyncIterator[StreamHead | str]) -> Stream:
    """The `Stream` of a server's stream items: a `StreamHead`, then SSE lines.

    The head is awaited here, so an error the engine raises before its first token is raised here,
    before any HTTP status is sent.
    """
    head = await anext(items)
    if not isinstance(head, StreamHead):
        raise TypeError(f"a stream must open with its StreamHead, not {type(head).__name__}")
    return Stream(head.headers, _chained(head.first, items))


async def _chained(first: Iterable[str], rest: AsyncIterator[StreamHead | str]) -> AsyncIterator[str]:
    for line in first:
        yield line
    async for item in rest:
        yield cast(str, item)


class LLMEngine(abc.ABC):
    """What the LLM deployment needs from an engine.

    After `start`, `max_model_len` and `dtype` say what the engine actually runs (the dtype as
    torch names it, e.g. "float32"), so /health and /v1/models report facts, not the request.
    """

    max_model_len: int | None = None
    dtype: str | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""

    @abc.abstractmethod
    async def chat(self, request: ChatCompletionRequest, adapter: LoadedAdapter | None) -> ChatResult: ...

    @abc.abstractmethod
    async def completions(
        self, request: CompletionRequest, adapter: LoadedAdapter | None
    ) -> CompletionResult: ...

    @abc.abstractmethod
    async def load_adapter(self, adapter: LoadedAdapter) -> None:
        """Make `adapter` servable; raise `EngineError` when the engine refuses it."""

    @abc.abstractmethod
    async def unload_adapter(self, name: str) -> None: ...

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise when the engine cannot serve."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...
