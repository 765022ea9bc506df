"""Kaito's /chat body → an OpenAI chat request (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_apps.kaito_chat import DEFAULT_MAX_NEW_TOKENS, KaitoChatRequest, to_openai


def test_prompt_becomes_one_user_turn() -> None:
    body = to_openai(KaitoChatRequest(prompt="hi"), "base")
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["model"] == "base"
    assert body["max_tokens"] == DEFAULT_MAX_NEW_TOKENS


def test_generate_kwargs_map_to_sampling() -> None:
    request = KaitoChatRequest.model_validate(
        {
            "prompt": "hi",
            "model": "adapter",
            "generate_kwargs": {"max_length": 30, "top_p": 0.9, "top_k": 5, "temperature": 0.7, "seed": 3},
        }
    )
    body = to_openai(request, "base")
    assert body["model"] == "adapter"
    assert (body["max_tokens"], body["top_p"], body["top_k"], body["temperature"], body["seed"]) == (
        30,
        0.9,
        5,
        0.7,
        3,
    )


def test_do_sample_false_is_greedy() -> None:
    body = to_openai(
        KaitoChatRequest.model_validate(
            {"prompt": "x", "generate_kwargs": {"do_sample": False, "temperature": 0.9}}
        ),
        "base",
    )
    assert body["temperature"] == 0.0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"prompt": ""},
        {"messages": []},
        {"prompt": "a", "generate_kwargs": {"unknown": 1}},
        {"prompt": "a", "extra": 1},
        {"messages": [{"role": "wizard", "content": "b"}]},
    ],
)
def test_invalid_bodies(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        KaitoChatRequest.model_validate(body)
