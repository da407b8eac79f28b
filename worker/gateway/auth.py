"""Bearer-key check: with ``EMBEDQ_API_KEYS`` set, every route but the public probes needs a key."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from worker.gateway.errors import ApiError, error_response

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ApiKeyMiddleware:
    """Answers 401 (OpenAI's error shape) unless ``Authorization: Bearer KEY`` holds a configured key."""

    def __init__(self, app: ASGIApp, api_keys: frozenset[str]) -> None:
        self.app = app
        self._keys = tuple(key.encode() for key in api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401."""
        if scope["type"] != "http" or not self._keys or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if not authorised(scope, self._keys):
            await error_response(unauthorised())(scope, receive, send)
            return
        await self.app(scope, receive, send)


def unauthorised() -> ApiError:
    """Return the 401 of a request without a valid key."""
    return ApiError(
        401,
        "missing or invalid API key: send the header 'Authorization: Bearer KEY' with a key "
        "listed in EMBEDQ_API_KEYS",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def authorised(scope: Scope, keys: tuple[bytes, ...]) -> bool:
    """Whether the request's ``Authorization: Bearer KEY`` holds one of ``keys``."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.partition(b" ")
            if scheme.lower() != b"bearer":
                return False
            key = key.strip()
            # Every key is compared, in constant time, so timing tells nothing about which matched.
            return sum(hmac.compare_digest(key, known) for known in keys) > 0
    return False
