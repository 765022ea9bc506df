"""The engine interface, at the level of OpenAI requests.

Both engines take vLLM's own OpenAI protocol models and answer with them, so the ingress, the LLM
deployment and the tests never care which engine runs. A non-streaming call returns the response
model or an `ErrorResponse`; a streaming call returns an `ErrorResponse` (before any token) or an
async iterator of ready-made SSE lines (`data: {...}\\n\\n`, ending with `data: [DONE]\\n\\n`).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

ChatResult = ChatCompletionResponse | ErrorResponse | AsyncIterator[str]
CompletionResult = CompletionResponse | ErrorResponse | AsyncIterator[str]


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


class EngineError(RuntimeError):
    """An engine-side failure that maps to an HTTP status."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR) -> None:
        super().__init__(message)
        self.status = status


def error_response(
    message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None
) -> ErrorResponse:
    """An OpenAI-style error body, the same shape vLLM's own server answers with."""
    return ErrorResponse(
        error=ErrorInfo(message=message, type=_error_type(status), param=param, code=int(status))
    )


def _error_type(status: HTTPStatus) -> str:
    return {
        HTTPStatus.BAD_REQUEST: "BadRequestError",
        HTTPStatus.NOT_FOUND: "NotFoundError",
        HTTPStatus.UNPROCESSABLE_ENTITY: "UnprocessableEntityError",
        HTTPStatus.TOO_MANY_REQUESTS: "RateLimitError",
        HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
    }.get(status, "InternalServerError")
