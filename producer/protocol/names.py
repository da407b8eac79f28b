"""Names producers and workers agree on: tasks, queues, Redis keys, the bundled model id.

Importing this module costs nothing: no msgpack, no numpy, no Celery.
"""

from __future__ import annotations

from typing import Final, Literal

TASK_EMBED_DOCUMENTS: Final = "embedq.embed_documents"
TASK_EMBED_QUERIES: Final = "embedq.embed_queries"
TASK_UPSERT_DOCUMENTS: Final = "embedq.upsert_documents"
BUNDLED_MODEL_ID: Final = "embedq/minilm-l6-v2-256"
"""The model id a worker reports for its bundled default model (``EMBEDQ_MODEL`` unset)."""

WIRE_VERSION: Final = 1
VECTOR_DTYPE: Final = "<f4"
QUEUE_PREFIX: Final = "embedq."
BULK_QUEUE_SUFFIX: Final = ".bulk"
PRESENCE_TTL_S: Final = 6
"""A worker refreshes its presence key every third of this; a producer sees it gone this long after."""
SENT_AT_HEADER: Final = "embedq_sent_at"
"""Task message header: the producer's ``time.time()`` at enqueue (the worker's queue-wait metric)."""

Kind = Literal["document", "query"]
KINDS: Final[tuple[Kind, ...]] = ("document", "query")
TASK_FOR_KIND: Final[dict[Kind, str]] = {"document": TASK_EMBED_DOCUMENTS, "query": TASK_EMBED_QUERIES}


def queue_for_model(model_id: str) -> str:
    """Return the queue of ``model_id``'s small requests (queries, a web backend's documents)."""
    return QUEUE_PREFIX + model_id


def bulk_queue_for_model(model_id: str) -> str:
    """Return the queue of ``model_id``'s large requests and upserts (backfills).

    Workers consume both queues by default; kept apart, a backfill's tasks never sit in front of a
    query in one list, and query-only workers can be run with ``embedq worker --queues interactive``.
    """
    return QUEUE_PREFIX + model_id + BULK_QUEUE_SUFFIX


FINGERPRINT_SHOWN_CHARS: Final = 12
"""Hex characters of a model fingerprint shown in messages (the full value is always compared)."""


def short_fingerprint(fingerprint: str | None) -> str:
    """Return a fingerprint as shown in messages: its first 12 hex characters, or "unknown"."""
    return fingerprint[:FINGERPRINT_SHOWN_CHARS] if fingerprint else "unknown"


def presence_key(queue: str) -> str:
    """Return the broker key a live worker consuming ``queue`` keeps set (with a short TTL)."""
    return f"embedq:presence:{queue}"


def job_key(job_id: str) -> str:
    """Return the result-backend key that lists the tasks of a job split into several tasks."""
    return f"embedq:job:{job_id}"
