"""Every Prometheus metric a worker exports, defined in one place (names, labels, buckets).

Dashboards, alert rules and tests rely on these names. The HTTP gateway defines its own
``embedq_http_*`` metrics. :func:`build_worker_metrics` imports ``prometheus_client`` only when
called, after :func:`worker.metrics.multiprocess.prepare_multiprocess_dir` has chosen the
multiprocess mode (prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` when it is imported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

REQUESTS_TOTAL: Final = "embedq_requests_total"
TEXTS_TOTAL: Final = "embedq_texts_total"
TOKENS_TOTAL: Final = "embedq_tokens_total"
ENCODE_SECONDS: Final = "embedq_encode_seconds"
QUEUE_WAIT_SECONDS: Final = "embedq_queue_wait_seconds"
BATCH_TEXTS: Final = "embedq_batch_texts"
QUEUE_DEPTH: Final = "embedq_queue_depth"
WORKER_READY: Final = "embedq_worker_ready"
MILVUS_ROWS_WRITTEN_TOTAL: Final = "embedq_milvus_rows_written_total"
MILVUS_UPSERT_SECONDS: Final = "embedq_milvus_upsert_seconds"

# Encodes run from ~0.1 ms (one query) to seconds (a bulk task of thousands of paragraphs).
ENCODE_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Queue wait spans an idle queue (milliseconds) to a backlog drained over minutes.
QUEUE_WAIT_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)
BATCH_TEXTS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
UPSERT_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class WorkerMetrics:
    """The metric objects the pool processes update (the queue depth gauge lives in the parent)."""

    requests: Counter
    texts: Counter
    tokens: Counter
    encode_seconds: Histogram
    queue_wait_seconds: Histogram
    batch_texts: Histogram
    milvus_rows_written: Counter
    milvus_upsert_seconds: Histogram


def build_worker_metrics(registry: CollectorRegistry | None = None) -> WorkerMetrics:
    """Create the worker's metrics in ``registry`` (default: a new private one).

    In multiprocess mode the values live in per-process files whatever the registry; the parent
    reads them with a ``MultiProcessCollector``.
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram

    target = CollectorRegistry() if registry is None else registry
    # prometheus_client appends _total to counter names itself.
    return WorkerMetrics(
        requests=Counter(
            REQUESTS_TOTAL.removesuffix("_total"),
            "Requests finished, by kind (document, query, upsert) and outcome (ok or the error class).",
            ["model", "kind", "outcome"],
            registry=target,
        ),
        texts=Counter(
            TEXTS_TOTAL.removesuffix("_total"),
            "Texts embedded by requests that succeeded.",
            ["model", "kind"],
            registry=target,
        ),
        tokens=Counter(
            TOKENS_TOTAL.removesuffix("_total"),
            "Tokens pooled (after truncation and unknown-token removal; repeated texts once per call).",
            ["model"],
            registry=target,
        ),
        encode_seconds=Histogram(
            ENCODE_SECONDS, "Seconds per encoder call.", ["model"], buckets=ENCODE_BUCKETS_S, registry=target
        ),
        queue_wait_seconds=Histogram(
            QUEUE_WAIT_SECONDS,
            "Seconds from enqueue (producer clock) to the start of the task's first run.",
            ["model", "queue"],
            buckets=QUEUE_WAIT_BUCKETS_S,
            registry=target,
        ),
        batch_texts=Histogram(
            BATCH_TEXTS, "Texts per encoder call.", ["model"], buckets=BATCH_TEXTS_BUCKETS, registry=target
        ),
        milvus_rows_written=Counter(
            MILVUS_ROWS_WRITTEN_TOTAL.removesuffix("_total"),
            "Rows Milvus acknowledged, by collection.",
            ["collection"],
            registry=target,
        ),
        milvus_upsert_seconds=Histogram(
            MILVUS_UPSERT_SECONDS,
            "Seconds per Milvus upsert call (successful calls).",
            ["collection"],
            buckets=UPSERT_BUCKETS_S,
            registry=target,
        ),
    )
