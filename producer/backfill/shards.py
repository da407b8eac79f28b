"""Several producers sharing one corpus: ``--shard K/N`` takes every N-th chunk, from the K-th.

Chunks are cut in file order, so chunk i is the same records in every shard's reading of the file;
shard K of N owns the chunks with ``i % N == K - 1``. Each shard is a backfill job of its own
(its own checkpoint, resumable on its own) whose id is the unsharded job's id plus
``-shardKofN``; the unsharded id names the whole sharded job, and `embedq status` sums its shards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from producer.backfill.model import BackfillProgress, Shard
from producer.errors import ConfigError

SHARDS_TTL_S = 7 * 24 * 3600
_SHARD_SUFFIX = re.compile(r"^(?P<job>.+)-shard(?P<index>\d+)of(?P<count>\d+)$")


def parse_shard(raw: str) -> Shard:
    """Return the Shard of a ``K/N`` command-line value; else ConfigError."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw)
    if match is None:
        raise ConfigError(f"--shard must be K/N such as 1/4 (shard K of N), got {raw!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shards_key(sharded_job_id: str) -> str:
    """Return the broker key of the set of shard job ids started for a sharded job."""
    return f"embedq:backfill-shards:{sharded_job_id}"


def register_shard(redis: Any, sharded_job_id: str, shard_job_id: str) -> None:
    """Note in the broker that a shard of ``sharded_job_id`` started, for `embedq status`."""
    pipe = redis.pipeline()
    pipe.sadd(shards_key(sharded_job_id), shard_job_id)
    pipe.expire(shards_key(sharded_job_id), SHARDS_TTL_S)
    pipe.execute()


def registered_shards(redis: Any, sharded_job_id: str) -> list[str]:
    """Return the shard job ids the broker knows for ``sharded_job_id`` (empty if none)."""
    members = redis.smembers(shards_key(sharded_job_id))
    return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)


def local_shards(state_dir: Path, sharded_job_id: str) -> list[str]:
    """Return the shard job ids with a progress file in ``state_dir``."""
    found = []
    for path in state_dir.glob(f"{sharded_job_id}-shard*of*.progress.json"):
        job_id = path.name.removesuffix(".progress.json")
        if _SHARD_SUFFIX.match(job_id):
            found.append(job_id)
    return sorted(found)


def shard_count(shard_job_id: str) -> int | None:
    """Return N of a shard job id ``...-shardKofN``, or None if it is not one."""
    match = _SHARD_SUFFIX.match(shard_job_id)
    return None if match is None else int(match.group("count"))


def sum_shards(sharded_job_id: str, shards: Iterable[BackfillProgress]) -> BackfillProgress | None:
    """Return the progress of a sharded job as the sum of its shards' (None if no shard is known).

    Done only when all N shards are known and done; the total is known only when every shard is.
    """
    parts = list(shards)
    if not parts:
        return None
    count = shard_count(parts[0].job_id) or len(parts)
    states = {part.state for part in parts}
    if len(parts) == count and states == {"done"}:
        state = "done"
    elif "running" in states:
        state = "running"
    elif "failed" in states:
        state = "failed"
    else:
        state = "interrupted" if len(parts) == count else "partial"
    totals = [part.docs_total for part in parts]
    errors = tuple(f"{part.job_id}: {error}" for part in parts for error in part.errors)
    return BackfillProgress(
        job_id=sharded_job_id,
        state=f"{state} ({len(parts)} of {count} shards reported)" if state != "done" else state,
        docs_done=sum(part.docs_done for part in parts),
        docs_failed=sum(part.docs_failed for part in parts),
        docs_total=None if len(parts) < count or None in totals else sum(t or 0 for t in totals),
        chunks_done=sum(part.chunks_done for part in parts),
        collection=parts[0].collection,
        path=parts[0].path,
        elapsed_s=max(part.elapsed_s for part in parts),
        errors=errors,
    )
