"""Streaming, resumable bulk backfill of a corpus file into Milvus through the workers."""

from producer.backfill.model import (
    DEFAULT_STATE_DIR,
    BackfillOptions,
    BackfillProgress,
    BackfillSummary,
    ChunkRecord,
)
from producer.backfill.run import backfill_status, job_id_for, local_backfill_status, run_backfill

__all__ = [
    "DEFAULT_STATE_DIR",
    "BackfillOptions",
    "BackfillProgress",
    "BackfillSummary",
    "ChunkRecord",
    "backfill_status",
    "job_id_for",
    "local_backfill_status",
    "run_backfill",
]
