"""The OpenAI bodies the transformers runtime answers with, per route."""

from __future__ import annotations

import json

from serve_apps.engines.openai_shapes import ChatShape, CompletionShape, sse, usage


def test_chat_whole_answer_and_stream_events() -> None:
    shape = ChatShape(model="m")
    whole = shape.whole("Paris.", "stop", usage(5, 2)).model_dump()
    assert whole["id"].startswith("chatcmpl-")
    assert whole["object"] == "chat.completion"
    message = whole["choices"][0]["message"]
    assert (message["role"], message["content"]) == ("assistant", "Paris.")
    assert whole["usage"]["total_tokens"] == 7
    [opening] = shape.opening()
    assert json.loads(sse(opening).removeprefix("data: "))["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    piece = shape.event("Par", None)
    assert piece is not None and piece.model_dump()["choices"][0]["delta"]["content"] == "Par"
    done = shape.event("", "stop")
    assert done is not None and done.model_dump()["choices"][0]["finish_reason"] == "stop"
    assert shape.event("", None) is None
    # Every event of one answer carries its id.
    assert {body.model_dump()["id"] for body in (opening, piece, done, shape.usage(usage(5, 2)))} == {
        shape.id
    }


def test_completion_whole_answer_and_stream_events() -> None:
    shape = CompletionShape(model="m")
    whole = shape.whole(" Paris", "length", usage(5, 1)).model_dump()
    assert whole["id"].startswith("cmpl-")
    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == " Paris"
    assert shape.opening() == []
    assert shape.event("", None) is None
    event = shape.event(" Par", None)
    assert event is not None
    line = sse(event)
    assert line.startswith("data: {") and line.endswith("}\n\n")
    assert json.loads(line.removeprefix("data: "))["choices"][0]["text"] == " Par"
    assert shape.usage(usage(5, 1)).model_dump()["choices"] == []
