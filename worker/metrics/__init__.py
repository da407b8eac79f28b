"""Prometheus metrics, health and readiness probes of a worker, and the counting API tasks call."""

from worker.metrics.recording import (
    SENT_AT_HEADER,
    encode_observed,
    observe_encode,
    observe_queue_wait,
    record_milvus_upsert,
    record_request,
)
from worker.metrics.setup import WorkerObservability

__all__ = [
    "SENT_AT_HEADER",
    "WorkerObservability",
    "encode_observed",
    "observe_encode",
    "observe_queue_wait",
    "record_milvus_upsert",
    "record_request",
]
