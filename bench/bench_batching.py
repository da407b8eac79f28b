"""Many small concurrent requests: embedq's batching against a stock one-task-per-request Celery task.

Usage: python -m bench.bench_batching [--redis-url redis://localhost:6379] [--rounds 5] [--seconds 3]
                                        [--threads 32] [--tasks 256] [--single-s 1.5] [--batch-wait-ms 2]
                                        [--batch-max-in-flight 2]

One Redis database (claimed empty, flushed at the end), two workers on it, each prefork with 2
pool processes: `embedq worker` (run_worker, the bundled model) and a stock Celery app whose one
task returns 1 KiB (msgpack, acks_late, prefetch 1, the standard Redis result backend, so `.get()`
waits on pub/sub; log level WARNING, Celery's default). Each round, alternating:

1. threads: ``--threads`` threads of this process, each sending one query at a time for
   ``--seconds``: `EmbeddingClient.embed_queries([text]).result()` (one shared client) against
   the stock task's `send_task(...).get()`; requests/s, p50, p99;
2. asyncio: ``--tasks`` tasks in one event loop, `await embed_queries([text]).result_async()`;
   then the same with this process's heap frozen (``gc.freeze()``, README's latency advice for
   the process hosting a client): a full collection of this process's start-up heap (about
   75,000 objects, most of them Celery's and kombu's) holds every request in flight for 40-70 ms;
3. single: one query at a time, ``--single`` requests each: embedq p50 against the stock `.get()` p50.

Every vector embedq returned is checked afterwards against the in-process encoder, bit for bit.
The machine is shared and noisy: every figure is a ratio against the reference of the same round,
reported as median and spread (min-max) over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_queue import WorkerProcess, claimed_database, redis_server, start_worker
from producer.client import EmbeddingClient

STOCK_TASK = "bench.stock_noop"
STOCK_QUEUE = "bench-stock"
WORDS = [
    "how",
    "do",
    "i",
    "retry",
    "a",
    "task",
    "with",
    "backoff",
    "when",
    "the",
    "broker",
    "is",
    "down",
    "or",
    "the",
    "queue",
    "is",
    "full",
]


def stock_app(db_url: str) -> Any:
    """A stock Celery app: msgpack, late acks, prefetch 1, the standard Redis backend (pub/sub .get())."""
    from celery import Celery

    app = Celery("bench-stock", broker=db_url, backend=db_url, set_as_current=False)
    app.conf.update(
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
        result_accept_content=["msgpack"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=STOCK_QUEUE,
    )
    return app


def serve_stock(db_url: str) -> None:
    """Run the stock worker (prefork, 2 processes); its one task returns 1 KiB."""
    app = stock_app(db_url)
    payload = bytes(1024)

    @app.task(name=STOCK_TASK)  # type: ignore[untyped-decorator]
    def noop(text: str) -> bytes:
        return payload

    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
            "--hostname=stock@%h",
        ]
    )


def _query(n: int) -> str:
    return " ".join(WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(4 + n % 9)) + f" {n}"


class Counter:
    """Distinct query numbers across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def take(self) -> int:
        """Return the next number."""
        with self._lock:
            self._next += 1
            return self._next


@dataclass
class Kept:
    """Every text and vector embedq returned, for the check at the end.

    Two flat lists of untracked objects (str, ndarray): a (text, vector) tuple per request would
    be one more object for Python's collector until its next pass, and with hundreds of thousands
    of requests kept, those tuples made the collector's full passes, which stop every thread of
    this process for tens of milliseconds, 2-3 times as frequent: the harness would add to the
    tail it measures.
    """

    texts: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, text: str, vectors: np.ndarray) -> None:
        """Keep one request's text and vectors."""
        self.texts.append(text)
        self.vectors.append(vectors)


@dataclass
class Run:
    """Latencies (ms) of one contender in one round, its wall time and the tasks it took."""

    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    tasks: int | None = None

    @property
    def per_s(self) -> float:
        """Requests per second."""
        return len(self.latencies_ms) / self.wall_s

    def q(self, quantile: float) -> float:
        """A percentile of the latencies."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


def threaded(call: Callable[[str], object], threads: int, seconds: float, counter: Counter) -> Run:
    """Run ``call(text)`` from ``threads`` threads, one request at a time each, for ``seconds``."""
    run = Run()
    lock = threading.Lock()
    gate = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def loop() -> None:
        gate.wait()
        mine = []
        while time.perf_counter() < stop_at[0]:
            text = _query(counter.take())
            start = time.perf_counter()
            call(text)
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            run.latencies_ms.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    stop_at[0] = time.perf_counter() + seconds
    start = time.perf_counter()
    gate.wait()
    for worker in workers:
        worker.join()
    run.wall_s = time.perf_counter() - start
    return run


def asyncio_tasks(client: EmbeddingClient, tasks: int, seconds: float, counter: Counter, kept: Kept) -> Run:
    """Run ``tasks`` asyncio tasks in one loop, each awaiting one query at a time, for ``seconds``."""
    run = Run()

    async def one(stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            text = _query(counter.take())
            start = time.perf_counter()
            vectors = await client.embed_queries([text]).result_async(timeout_s=60)
            run.latencies_ms.append((time.perf_counter() - start) * 1000)
            kept.add(text, vectors)

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(one(stop_at) for _ in range(tasks)))

    start = time.perf_counter()
    asyncio.run(main())
    run.wall_s = time.perf_counter() - start
    return run


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


@dataclass
class Rounds:
    """Per-round figures of every section."""

    rows: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, name: str, run: Run) -> None:
        """Record one round's run of ``name``."""
        self.rows.setdefault(name, []).append(run)

    def ratio(self, name: str, reference: str, key: Callable[[Run], float]) -> list[float]:
        """Per-round ratio of ``key`` between ``name`` and ``reference``."""
        return [key(a) / key(b) for a, b in zip(self.rows[name], self.rows[reference], strict=True)]


def _print(rounds: Rounds) -> None:
    print("\nper contender: median (min-max) over rounds")
    print(f"{'contender':<34} {'requests/s':>22} {'p50 ms':>20} {'p99 ms':>20}")
    for name, runs in rounds.rows.items():
        print(
            f"{name:<34} {_spread([r.per_s for r in runs], '{:.0f}'):>22} "
            f"{_spread([r.q(0.5) for r in runs]):>20} {_spread([r.q(0.99) for r in runs]):>20}"
            + (
                f"  requests/task {_spread([len(r.latencies_ms) / r.tasks for r in runs], '{:.1f}')}"
                if all(r.tasks for r in runs)
                else ""
            )
        )
    print("\nratios, same round, median (min-max):")
    throughput = rounds.ratio("threads: embedq", "threads: stock no-op", lambda r: r.per_s)
    print(f"  32 threads, requests/s embedq / stock no-op:        {_spread(throughput)}  (target >= 3)")
    asyncio_ratio = rounds.ratio("asyncio: embedq result_async", "threads: stock no-op", lambda r: r.per_s)
    print(f"  asyncio tasks requests/s / stock no-op (threads):   {_spread(asyncio_ratio)}  (target >= 3)")
    frozen = rounds.ratio("asyncio: embedq, heap frozen", "threads: stock no-op", lambda r: r.per_s)
    print(f"  asyncio, heap frozen, requests/s / stock no-op:    {_spread(frozen)}  (target >= 3)")
    for name in ("threads: embedq", "asyncio: embedq result_async", "asyncio: embedq, heap frozen"):
        p99 = [run.q(0.99) for run in rounds.rows[name]]
        print(f"  {name + ', p99 ms:':<50} {_spread(p99)}  (target <= 50)")
    single = rounds.ratio("single: embedq", "single: stock no-op .get()", lambda r: r.q(0.5))
    print(f"  one at a time, p50 embedq / stock .get():           {_spread(single)}  (target <= 1.25)")


def run_benchmark(args: argparse.Namespace) -> None:
    """Start both workers, run the rounds, check every vector, print the figures."""
    from worker.encoding.encoder import StaticEncoder

    encoder = StaticEncoder.from_pretrained()
    with (
        redis_server(args.redis_url) as server_url,
        claimed_database(server_url) as db_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        log_dir = Path(tmp)
        embedq = start_worker(db_url, log_dir, "embedq", model=None, concurrency=2, extra_env={})
        log_path = log_dir / "stock.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_batching", "--serve-stock", db_url],
                cwd=Path(__file__).resolve().parent.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stock = WorkerProcess("stock", process, log_path, None, 2)
        try:
            rounds = _bench(args, db_url, encoder, embedq)
        finally:
            embedq.stop()
            stock.stop()
    _print(rounds)


def _batch_tasks(worker: WorkerProcess) -> int:
    return worker.log_path.read_text(errors="replace").count("embedq.embed_batch[") // 2  # received + done


def _bench(args: argparse.Namespace, db_url: str, encoder: Any, worker: WorkerProcess) -> Rounds:
    app = stock_app(db_url)
    counter = Counter()
    kept = Kept()
    keep_lock = threading.Lock()
    rounds = Rounds()
    with EmbeddingClient(
        db_url, batch_wait_ms=args.batch_wait_ms, batch_max_in_flight=args.batch_max_in_flight
    ) as client:

        def embedq_call(text: str) -> None:
            vectors = client.embed_queries([text]).result(timeout_s=60)
            with keep_lock:
                kept.add(text, vectors)

        def stock_call(text: str) -> None:
            app.send_task(STOCK_TASK, args=[text]).get(timeout=60)

        for call in (embedq_call, stock_call):  # warm pools, connections and the workers
            threaded(call, args.threads, 1.0, counter)
        asyncio_tasks(client, args.tasks, 1.0, counter, kept)
        for round_no in range(args.rounds):
            rounds.add("threads: stock no-op", threaded(stock_call, args.threads, args.seconds, counter))
            before = _batch_tasks(worker)
            run = threaded(embedq_call, args.threads, args.seconds, counter)
            run.tasks = _batch_tasks(worker) - before
            rounds.add("threads: embedq", run)
            before = _batch_tasks(worker)
            run = asyncio_tasks(client, args.tasks, args.seconds, counter, kept)
            run.tasks = _batch_tasks(worker) - before
            rounds.add("asyncio: embedq result_async", run)
            # The same with this process's start-up heap frozen, as README's latency advice says
            # (full collections then skip it); undone after the run.
            gc.collect()
            gc.freeze()
            before = _batch_tasks(worker)
            try:
                run = asyncio_tasks(client, args.tasks, args.seconds, counter, kept)
            finally:
                gc.unfreeze()
            run.tasks = _batch_tasks(worker) - before
            rounds.add("asyncio: embedq, heap frozen", run)
            rounds.add("single: stock no-op .get()", threaded(stock_call, 1, args.single_s, counter))
            rounds.add("single: embedq", threaded(embedq_call, 1, args.single_s, counter))
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
    texts = kept.texts
    got = np.concatenate(kept.vectors)
    expected = encoder.encode(texts)
    mismatched = int(np.sum(np.any(got != expected, axis=1)))
    print(f"vectors checked against the in-process encoder: {len(texts)}, not equal: {mismatched}")
    if mismatched:
        raise SystemExit("some vectors differ from the in-process encoder")
    return rounds


def main() -> None:
    """Parse the arguments and run the benchmark (or serve the stock worker)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per contender and round")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=256, help="asyncio tasks")
    parser.add_argument("--single-s", type=float, default=1.5, help="seconds of one-at-a-time requests")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--batch-max-in-flight", type=int, default=2)
    parser.add_argument("--serve-stock", metavar="DB_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stock:
        serve_stock(args.serve_stock)
        return
    with contextlib.suppress(KeyboardInterrupt):
        run_benchmark(args)


if __name__ == "__main__":
    main()
