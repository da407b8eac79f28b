"""Probes and metrics: ``GET /health`` (the process is up), ``GET /ready``, ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from producer.errors import EmbedqError
from worker.gateway.backend import Backend
from worker.gateway.metrics import HttpMetrics


async def health(request: Request) -> Response:
    """Answer 200 while the process serves requests."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Answer 200 if the broker answers and a worker serves the default model, else 503 saying which."""
    backend: Backend = request.app.state.backend
    try:
        await backend.ping()
        live = await backend.live_models()
    except EmbedqError as exc:
        return JSONResponse({"status": "unavailable", "reason": str(exc)}, status_code=503)
    if backend.default_model not in live:
        reason = f"no live worker serves model {backend.default_model!r}: start one with `embedq worker`"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "model": backend.default_model, "models": sorted(live)})


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the gateway's metrics."""
    http_metrics: HttpMetrics = request.app.state.metrics
    return Response(generate_latest(http_metrics.registry), media_type=CONTENT_TYPE_LATEST)


ROUTES = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
