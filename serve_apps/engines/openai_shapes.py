"""OpenAI response bodies for an engine that generates the text itself (the transformers runtime).

One `Shape` per route turns generated text into vLLM's protocol models: the whole answer, or the
SSE events of a stream (its opening chunks, one per piece, the optional usage chunk), so both routes
share one generation path and the answers match `vllm serve`'s field for field.
"""

from __future__ import annotations

import abc
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel
from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo


@dataclass(frozen=True)
class Shape(abc.ABC):
    """The bodies of one answer: its id, the model it names and its creation time are shared."""

    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    @abc.abstractmethod
    def whole(self, text: str, finish: str, usage: UsageInfo) -> BaseModel: ...

    def opening(self) -> list[BaseModel]:
        """Stream events sent before the first piece."""
        return []

    @abc.abstractmethod
    def event(self, piece: str, finish: str | None) -> BaseModel | None:
        """The stream event of a generated piece, or of the finish reason once done (None: nothing)."""

    @abc.abstractmethod
    def usage(self, info: UsageInfo) -> BaseModel:
        """The final stream event a client asked for with `stream_options.include_usage`."""


@dataclass(frozen=True)
class ChatShape(Shape):
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")

    def whole(self, text: str, finish: str, usage: UsageInfo) -> BaseModel:
        message = ChatMessage(role="assistant", content=text)
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[ChatCompletionResponseChoice(index=0, message=message, finish_reason=finish)],
            usage=usage,
        )

    def opening(self) -> list[BaseModel]:
        return [self._chunk(DeltaMessage(role="assistant", content=""), None)]

    def event(self, piece: str, finish: str | None) -> BaseModel | None:
        if piece:
            return self._chunk(DeltaMessage(content=piece), None)
        return self._chunk(DeltaMessage(), finish) if finish else None

    def usage(self, info: UsageInfo) -> BaseModel:
        return ChatCompletionStreamResponse(
            id=self.id, created=self.created, model=self.model, choices=[], usage=info
        )

    def _chunk(self, delta: DeltaMessage, finish: str | None) -> ChatCompletionStreamResponse:
        choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionStreamResponse(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )


@dataclass(frozen=True)
class CompletionShape(Shape):
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")

    def whole(self, text: str, finish: str, usage: UsageInfo) -> BaseModel:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[CompletionResponseChoice(index=0, text=text, finish_reason=finish)],
            usage=usage,
        )

    def event(self, piece: str, finish: str | None) -> BaseModel | None:
        if not piece and not finish:
            return None
        choice = CompletionResponseStreamChoice(index=0, text=piece, finish_reason=finish)
        return CompletionStreamResponse(id=self.id, created=self.created, model=self.model, choices=[choice])

    def usage(self, info: UsageInfo) -> BaseModel:
        return CompletionStreamResponse(
            id=self.id, created=self.created, model=self.model, choices=[], usage=info
        )


def sse(body: BaseModel) -> str:
    return f"data: {body.model_dump_json(exclude_none=True)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
