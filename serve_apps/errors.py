"""Serving's errors: raised where the problem is found, answered once at the HTTP edge.

Each class carries the HTTP status it answers with (`http_status`) and the condition reason it
stands for (`reason`); `serve_apps.routes` turns any of them into OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`), the one vLLM's own server answers with. The
errors cross a Ray handle (replica → ingress) by pickling: constructors take the message first and
keep everything else as keyword arguments with defaults, so `BaseException`'s pickling rebuilds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from kairay.api.errors import KairayError


class ServingError(KairayError):
    """A request the server cannot answer as asked; `http_status` is what the client gets."""

    reason: str = "ServingError"
    http_status: int = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Which request field is at fault (OpenAI's `param`), when one is.
        self.param = param
        if http_status is not None:
            self.http_status = http_status
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body the client receives."""
        return error_response(self.message, HTTPStatus(self.http_status), param=self.param).model_dump()


class BadRequest(ServingError):
    """The body is not JSON, or not a valid request for its route."""

    reason = "InvalidRequest"
    http_status = HTTPStatus.BAD_REQUEST


class ModelNotFound(ServingError):
    """`model` names neither the base model nor a servable adapter."""

    reason = "ModelNotFound"
    http_status = HTTPStatus.NOT_FOUND


class Overloaded(ServingError):
    """Refused because the server is full; the Workspace picks 429 or 503 (`http_status`)."""

    reason = "Overloaded"
    http_status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str = "the server is overloaded; retry later", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kwargs)


class EngineError(ServingError):
    """An engine-side failure (start, adapter load, generation)."""

    reason = "EngineError"


class EngineRefused(ServingError):
    """The engine answered with its own error body (vLLM's `ErrorResponse`): passed on unchanged."""

    reason = "EngineRefused"

    def __init__(self, message: str, *, response: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.response = response or {}

    @classmethod
    def of(cls, response: ErrorResponse) -> EngineRefused:
        return cls(response.error.message, response=response.model_dump(), http_status=response.error.code)

    def body(self) -> dict[str, Any]:
        return self.response


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
