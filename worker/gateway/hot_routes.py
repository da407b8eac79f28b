"""The hot POST routes (``/embed``, ``/``, ``/v1/embeddings``) called straight from the middleware stack.

Starlette's router tries each route's pattern in turn and wraps every call in per-request
exception-handling closures; for the routes that carry nearly all the traffic, this middleware
(innermost, after the metrics and API-key middlewares) picks the endpoint by (method, path) in
one dict lookup, calls it, and renders embedq errors with the app's own handlers. Every other
request goes on to the router unchanged, so answers are the same either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from producer.errors import EmbedqError
from worker.gateway.errors import ApiError, error_response, from_embedq_error

Endpoint = Callable[[Request], Awaitable[Response]]
HOT_PATHS = frozenset({"/embed", "/", "/v1/embeddings"})


def hot_endpoints(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], Endpoint]:
    """Map (method, path) to the endpoint of each POST route in HOT_PATHS."""
    endpoints: dict[tuple[str, str], Endpoint] = {}
    for route in routes:
        if isinstance(route, Route) and route.path in HOT_PATHS and "POST" in (route.methods or ()):
            endpoints[("POST", route.path)] = route.endpoint
    return endpoints


class HotRoutesMiddleware:
    """Calls the endpoint of a hot route directly; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self._endpoints = hot_endpoints(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a hot route here, anything else through the router."""
        endpoint = (
            self._endpoints.get((scope["method"], scope["path"]))
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope["endpoint"] = endpoint  # what the router records, for the metrics' route label
        try:
            response = await endpoint(Request(scope, receive))
        except ApiError as exc:
            response = error_response(exc)
        except EmbedqError as exc:
            response = error_response(from_embedq_error(exc))
        await response(scope, receive, send)
