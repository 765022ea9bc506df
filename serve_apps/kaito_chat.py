"""Kaito's original `/chat` contract, translated to an OpenAI chat request.

Body: `{"prompt": str}` or `{"messages": [...]}`, optional `generate_kwargs` (the Hugging Face
`generate` names Kaito documents) and optional `model` (an adapter name). Answer: `{"Result": str}`.
A prompt is sent as one user turn through the preset's chat template: every Kaito preset served
here is an instruct model, and a raw prompt without its template makes them ramble.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MAX_NEW_TOKENS = 200
# Kaito's documented generate defaults: sample, but only among the 10 likeliest tokens.
DEFAULT_TOP_K = 10


class GenerateKwargs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_length: int | None = Field(default=None, gt=0, description="Cap on generated tokens.")
    max_new_tokens: int | None = Field(default=None, gt=0)
    min_length: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    do_sample: bool | None = None
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: list[str] | str | None = None
    typical_p: float | None = None
    num_return_sequences: Literal[1] | None = None
    early_stopping: bool | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None


class KaitoChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    generate_kwargs: GenerateKwargs = GenerateKwargs()
    model: str | None = None

    @model_validator(mode="after")
    def _one_input(self) -> KaitoChatRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("`prompt` must not be empty")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        return self


def to_openai(request: KaitoChatRequest, default_model: str) -> dict[str, Any]:
    """The equivalent `/v1/chat/completions` body."""
    kwargs = request.generate_kwargs
    if request.messages is not None:
        messages = [m.model_dump(exclude_none=False) for m in request.messages]
    else:
        messages = [{"role": "user", "content": request.prompt}]
    body: dict[str, Any] = {
        "model": request.model or default_model,
        "messages": messages,
        "max_tokens": kwargs.max_new_tokens or kwargs.max_length or DEFAULT_MAX_NEW_TOKENS,
    }
    if kwargs.do_sample is False:
        # Hugging Face semantics: do_sample=False is greedy whatever the temperature says.
        body["temperature"] = 0.0
    elif kwargs.temperature is not None:
        body["temperature"] = kwargs.temperature
    for name in ("top_p", "top_k", "repetition_penalty", "seed", "stop"):
        value = getattr(kwargs, name)
        if value is not None:
            body[name] = value
    body.setdefault("top_k", DEFAULT_TOP_K)
    if kwargs.min_length:
        body["min_tokens"] = kwargs.min_length
    return body
