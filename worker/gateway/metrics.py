"""HTTP metrics (``embedq_http_requests_total``, ``embedq_http_request_seconds``) and per-request headers.

One pure ASGI middleware: it gives every response an ``x-request-id`` (the caller's, or a new one)
and ``x-total-time`` (milliseconds), and counts the request under its route template, so ids in
paths never become label values.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_UNMATCHED_ROUTE = "other"


class HttpMetrics:
    """The gateway's two HTTP metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "embedq_http_requests",
            "HTTP requests answered by the gateway, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "embedq_http_request_seconds",
            "Time from request to the end of the response, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._counters: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answer and its time (labelled children cached: ``labels()`` takes a lock each call)."""
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[(route, status)] = self.requests.labels(route, str(status))
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = self.seconds.labels(route)
        counter.inc()
        histogram.observe(seconds)


class RequestIds:
    """The ``x-request-id`` of each request: the caller's, or a new one unique across processes."""

    def __init__(self) -> None:
        # Unique without reading os.urandom per request (slow on some VMs).
        self._prefix = f"{uuid.uuid4().hex[:16]}-"
        self._counter = itertools.count(1)

    def __call__(self, scope: Scope) -> str:
        """Return the id of the request of ``scope``."""
        return _header(scope, b"x-request-id") or f"{self._prefix}{next(self._counter):x}"


def route_labels(routes: Sequence[BaseRoute]) -> dict[object, str]:
    """Map each route's endpoint to its path template (the label; endpoints are distinct per route)."""
    return {getattr(route, "endpoint", None): getattr(route, "path", _UNMATCHED_ROUTE) for route in routes}


class RequestMetricsMiddleware:
    """Adds x-request-id and x-total-time to every response and records the HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self._request_id = RequestIds()
        # The router records the endpoint it picked in the scope: one dict lookup, no second match.
        self.labels = route_labels(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, adding the headers and recording the metrics."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self._request_id(scope)
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                total_ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.append((b"x-total-time", str(round(total_ms)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = self.labels.get(scope.get("endpoint"), _UNMATCHED_ROUTE)
            self.metrics.observe(route, status, time.perf_counter() - started)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text = value.decode("latin-1").strip()
            # A caller's id is echoed only if it is short and printable, so logs and headers stay sane.
            return text if 0 < len(text) <= 128 and text.isprintable() else None
    return None
