"""The gateway's ASGI app: Starlette routes onto the queues, with API keys, metrics and OpenAPI docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware

from producer.errors import EmbedqError
from producer.settings import Settings, load_settings
from worker.gateway import health, jobs, openai, search, tei
from worker.gateway.auth import ApiKeyMiddleware
from worker.gateway.backend import Backend
from worker.gateway.config import GatewaySettings, load_gateway_settings
from worker.gateway.errors import ApiError, handle_api_error, handle_embedq_error
from worker.gateway.hot_routes import GatewayApp
from worker.gateway.metrics import HttpMetrics, RequestMetricsMiddleware
from worker.gateway.openapi import ROUTES as DOCS_ROUTES
from worker.gateway.search import Collections
from worker.queue.heap import freeze_heap


def create_app(settings: Settings, config: GatewaySettings) -> GatewayApp:
    """Build the app; its broker and Milvus connections open at start-up and close at shutdown.

    The hot embedding routes are answered by GatewayApp ahead of Starlette; their Starlette routes
    stay for the docs and for a request under a ``root_path``.
    """
    routes = [*openai.ROUTES, *tei.ROUTES, *jobs.ROUTES, *search.ROUTES, *health.ROUTES, *DOCS_ROUTES]
    http_metrics = HttpMetrics(CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.backend = Backend(
            settings, request_timeout_s=config.request_timeout_s, max_texts_per_job=None
        )
        app.state.collections = Collections(settings)
        # What exists now lives as long as the process: full collections skip it from here on, so
        # they no longer hold every request in flight for tens of milliseconds (worker/queue/heap.py).
        freeze_heap()
        try:
            yield
        finally:
            await app.state.backend.close()
            app.state.collections.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestMetricsMiddleware, metrics=http_metrics, routes=routes),
            Middleware(ApiKeyMiddleware, api_keys=config.api_keys),
        ],
        exception_handlers={ApiError: handle_api_error, EmbedqError: handle_embedq_error},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.metrics = http_metrics
    return GatewayApp(app, http_metrics, config.api_keys)


def create_app_from_environment() -> GatewayApp:
    """Build the app from ``EMBEDQ_*`` variables (what each of several uvicorn processes calls)."""
    return create_app(load_settings(), load_gateway_settings())
