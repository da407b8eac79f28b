"""Reading a request: the JSON body within the payload limit, and the texts within the batch limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from producer.errors import InvalidInputError
from producer.protocol.texts import validate_texts
from worker.gateway.errors import ApiError, bad_request
from worker.gateway.responses import loads


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """Return the body as a JSON object; 413 over ``max_bytes``, 400 if it is not a JSON object."""
    _check_declared_size(request.scope, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    return _json_object(b"".join(chunks))


async def receive_json(scope: Scope, receive: Receive, max_bytes: int) -> dict[str, Any]:
    """``read_json`` for a plain ASGI call; ClientDisconnect if the caller hangs up first."""
    _check_declared_size(scope, max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return _json_object(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = loads(raw)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _check_declared_size(scope: Scope, max_bytes: int) -> None:
    """413 if the declared body size is over ``max_bytes`` (read from the raw headers: cheaper)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > max_bytes:
                raise _too_large(int(value), max_bytes)
            return


def _too_large(size: int, max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"the request body has {size} bytes or more, above the limit of {max_bytes} (EMBEDQ_MAX_BODY_BYTES): "
        "send fewer or shorter texts per request",
        code="payload_too_large",
    )


def checked_texts(
    value: object, param: str, *, max_inputs: int, max_text_chars: int, token_ids_allowed: bool = False
) -> list[str]:
    """Return ``value`` (a string or a list of strings) as a list; 400 naming the index of a bad one."""
    if isinstance(value, str):
        texts: list[Any] = [value]
    elif isinstance(value, list):
        texts = value
    else:
        raise bad_request(f"'{param}' must be a string or a list of strings, got {_json_type(value)}", param)
    if not texts:
        raise bad_request(f"'{param}' is empty: send at least one text", param)
    if not token_ids_allowed and _looks_like_token_ids(texts):
        raise bad_request(
            f"'{param}' holds token ids; this server embeds text only: send the strings themselves", param
        )
    if len(texts) > max_inputs:
        raise bad_request(
            f"'{param}' has {len(texts)} items, above the limit of {max_inputs} per request "
            "(EMBEDQ_MAX_CLIENT_BATCH_SIZE): split it, or use POST /v1/jobs for bulk work",
            param,
            "too_many_inputs",
        )
    try:
        validate_texts(texts, max_texts=None, max_text_chars=max_text_chars)
    except InvalidInputError as exc:
        raise bad_request(str(exc).replace("texts[", f"{param}[", 1), param, "invalid_input") from exc
    return texts


def _looks_like_token_ids(texts: Sequence[Any]) -> bool:
    first = texts[0]
    return (isinstance(first, int) and not isinstance(first, bool)) or (
        isinstance(first, list) and bool(first) and isinstance(first[0], int)
    )


def _json_type(value: object) -> str:
    names = {dict: "an object", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def checked_dimensions(value: object, model_dim: int) -> int | None:
    """Return the requested ``dimensions`` (None: all); 400 unless it is from 1 to the model's dimension."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= model_dim:
        raise bad_request(
            f"'dimensions' must be a whole number from 1 to {model_dim} (the model's dim), got {value!r}",
            "dimensions",
            "invalid_dimensions",
        )
    return None if value == model_dim else value


def timing_headers(enqueue_s: float, wait_s: float) -> dict[str, str]:
    """TEI's timing headers, in milliseconds: enqueueing, then the wait for the worker's result."""
    return {"x-queue-time": str(round(enqueue_s * 1000)), "x-inference-time": str(round(wait_s * 1000))}
