"""HTTP errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, from embedq errors."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from producer.errors import (
    BrokerUnavailableError,
    ConfigError,
    EmbedqError,
    InvalidInputError,
    ModelMismatchError,
    NoWorkerError,
    OverloadedError,
    PermanentError,
    ResultTimeoutError,
    SinkUnavailableError,
    TransientError,
)

RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answered as-is: HTTP status, OpenAI error type, the offending parameter and a code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """Return a 400 naming the parameter at fault."""
    return ApiError(400, message, param=param, code=code)


def from_embedq_error(exc: EmbedqError, param: str | None = None) -> ApiError:
    """Map an embedq error onto the HTTP status a client should act on (retry, fix, or wait)."""
    message = str(exc)
    if isinstance(exc, InvalidInputError | ModelMismatchError):
        return bad_request(message, param, "invalid_input")
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return ApiError(429, message, type="rate_limit_error", code="overloaded", headers=headers)
    if isinstance(exc, NoWorkerError):
        return ApiError(503, message, type="service_unavailable", code="no_worker")
    if isinstance(exc, ResultTimeoutError):
        return ApiError(504, message, type="timeout", code="result_timeout")
    if isinstance(exc, BrokerUnavailableError | SinkUnavailableError | TransientError):
        return ApiError(503, message, type="service_unavailable", code="unavailable")
    if isinstance(exc, ConfigError):
        return ApiError(400, message, param=param, code="invalid_request")
    if isinstance(exc, PermanentError):
        return ApiError(400, message, param=param, code=type(exc).__name__)
    return ApiError(500, message, type="server_error", code="internal_error")


def error_response(error: ApiError) -> Response:
    """Render ``error`` in OpenAI's error shape."""
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for ApiError."""
    if not isinstance(exc, ApiError):  # registered for ApiError only
        raise exc
    return error_response(exc)


async def handle_embedq_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for embedq errors that reach the app unmapped."""
    if not isinstance(exc, EmbedqError):  # registered for EmbedqError only
        raise exc
    return error_response(from_embedq_error(exc))
