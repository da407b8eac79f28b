"""Prometheus metrics, health and readiness probes of a worker, the counting API tasks call, JSON logs.

The public names are imported on first use, so ``worker.metrics.logs`` (used by every ``embedq``
command) loads neither Celery's signals nor prometheus_client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.metrics.recording import (
        encode_observed,
        observe_encode,
        observe_queue_wait,
        record_milvus_upsert,
        record_request,
    )
    from worker.metrics.setup import WorkerObservability

_HOME: dict[str, str] = {
    "WorkerObservability": "worker.metrics.setup",
    "encode_observed": "worker.metrics.recording",
    "observe_encode": "worker.metrics.recording",
    "observe_queue_wait": "worker.metrics.recording",
    "record_milvus_upsert": "worker.metrics.recording",
    "record_request": "worker.metrics.recording",
}

__all__ = [
    "WorkerObservability",
    "encode_observed",
    "observe_encode",
    "observe_queue_wait",
    "record_milvus_upsert",
    "record_request",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
