"""A backfill job's confirmed chunks in Redis: fixed-size records, appended as chunks are confirmed.

Each record is 16 bytes (chunk index, rows written, records rejected; little-endian), kept in
one Redis string per job that each publish extends with APPEND by the chunks confirmed since the
last one: a publish costs the chunks it adds, not the size of the job, and a million-chunk job
holds 16 MB. Earlier versions kept the whole list as JSON in the progress hash's ``chunks``
field, rewritten on every publish; such a job still resumes: its list is read once and moved
to the string by the first publish.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Any, Final

from producer.backfill.model import ChunkRecord
from producer.errors import ConfigError

RECORD: Final = struct.Struct("<QII")
LEGACY_FIELD: Final = "chunks"
"""The progress hash's field that held every confirmed chunk as JSON before this format."""


def done_key(job_id: str) -> str:
    """Return the Redis key of a backfill job's confirmed-chunk records."""
    return f"embedq:backfill:{job_id}:done"


def pack(records: Iterable[ChunkRecord]) -> bytes:
    """Return the records as the bytes appended to a job's key."""
    return b"".join(RECORD.pack(r.index, r.written, r.rejected) for r in records)


def unpack(raw: bytes, job_id: str) -> list[ChunkRecord]:
    """Return the records in ``raw``; ConfigError if it is not whole records."""
    if len(raw) % RECORD.size:
        raise ConfigError(
            f"the confirmed chunks of backfill {job_id} in Redis ({done_key(job_id)}, {len(raw)} bytes) are "
            f"not whole {RECORD.size}-byte records: delete that key and run the same command again "
            "(the local checkpoint file still lists the confirmed chunks)"
        )
    return [ChunkRecord(*fields) for fields in RECORD.iter_unpack(raw)]


def read(redis: Any, job_id: str, progress_key: str) -> tuple[list[ChunkRecord], list[ChunkRecord] | None]:
    """Return the job's confirmed-chunk records, and its old-format JSON list (None if it has none)."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(done_key(job_id))
    pipe.hget(progress_key, LEGACY_FIELD)
    raw, legacy = pipe.execute()
    records = unpack(raw or b"", job_id)
    if legacy is None:
        return records, None
    return records, [ChunkRecord(*item) for item in json.loads(legacy)]


def append(pipe: Any, job_id: str, records: list[ChunkRecord], ttl_s: int) -> None:
    """Queue on ``pipe`` the append of ``records`` to the job's key and the renewal of its TTL."""
    if records:
        pipe.append(done_key(job_id), pack(records))
    pipe.expire(done_key(job_id), ttl_s)
