"""Serving's errors: their HTTP status and body, and their trip through a Ray handle (pickling)."""

from __future__ import annotations

import pickle

import pytest

from serve_apps.errors import (
    BadRequest,
    EngineError,
    EngineRefused,
    ModelNotFound,
    Overloaded,
    ServingError,
    error_response,
)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (BadRequest("bad", param="prompt"), 400, "BadRequestError"),
        (ModelNotFound("nope", param="model"), 404, "NotFoundError"),
        (Overloaded(), 503, "ServiceUnavailableError"),
        (Overloaded(http_status=429), 429, "RateLimitError"),
        (EngineError("boom"), 500, "InternalServerError"),
    ],
)
def test_status_and_openai_body(error: ServingError, status: int, kind: str) -> None:
    assert error.http_status == status
    assert error.body() == {
        "error": {"message": error.message, "type": kind, "param": error.param, "code": status}
    }


def test_overload_asks_to_retry() -> None:
    assert Overloaded().headers == {"Retry-After": "1"}
    assert "overloaded" in Overloaded().message


def test_an_engine_refusal_keeps_the_engines_body() -> None:
    response = error_response("too long", param="max_tokens")
    refused = EngineRefused.of(response)
    assert refused.http_status == 400
    assert refused.body() == response.model_dump()


@pytest.mark.parametrize(
    "error",
    [
        Overloaded(http_status=429),
        ModelNotFound("nope", param="model", headers={"x-kairay-replica": "r"}),
        EngineRefused.of(error_response("too long", param="max_tokens")),
        EngineError("refused", http_status=400, param="model"),
    ],
)
def test_errors_survive_pickling(error: ServingError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.http_status, copy.headers, copy.body()) == (error.http_status, error.headers, error.body())
