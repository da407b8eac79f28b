"""What worker metrics cost: docs/s of a worker with --metrics-port next to one without, in one run.

Usage: python -m bench.bench_metrics [--redis-url redis://localhost:6379] [--rounds 7]
                                      [--requests 800] [--docs 20000] [--scrape-interval-s 15]

Two `run_worker` processes (prefork, concurrency 2) run side by side on the same Redis, each
serving the bundled model on a queue of its own (a symlinked model folder gives a distinct model
id): one with metrics off, one with EMBEDQ_METRICS_PORT set and scraped every
--scrape-interval-s (default 15 s, Prometheus' default and the compose stack's). Only one of them
works at a time; rounds alternate which goes first.

1. small requests: --requests jobs of 4 texts each, all in flight, results collected (per-request
   cost dominates: the worst case for per-request counting);
2. bulk: --docs paragraphs in tasks of 1000 (encoding dominates).

Printed: docs/s per round, the median and the median of per-round on/off ratios (target >= 0.97x);
and the CPU seconds the worker (parent and pool processes) spent per 1000 docs, which the shared
machine's noise disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.bench_queue import WorkerProcess, claimed_database, redis_server, start_worker
from producer.client import EmbeddingClient
from tests.support.corpora import paragraphs
from worker.ports import free_port

SMALL_TEXTS_PER_REQUEST = 4
BULK_TEXTS_PER_TASK = 1000


def _model_alias(tmp: Path, name: str) -> str:
    from worker.encoding.loader import BUNDLED_MODEL_DIR

    alias = tmp / name
    alias.symlink_to(BUNDLED_MODEL_DIR, target_is_directory=True)
    return str(alias)


@contextlib.contextmanager
def scraping(port: int, interval_s: float) -> Iterator[list[int]]:
    """GET /metrics every ``interval_s`` on a thread; yields the list of response sizes."""
    sizes: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                sizes.append(len(response.read()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join()


def small_requests(client: EmbeddingClient, texts: list[str], requests: int) -> float:
    """Docs/s of ``requests`` jobs of SMALL_TEXTS_PER_REQUEST texts, all in flight."""
    start = time.perf_counter()
    jobs = [
        client.embed_documents(texts[i * SMALL_TEXTS_PER_REQUEST : (i + 1) * SMALL_TEXTS_PER_REQUEST])
        for i in range(requests)
    ]
    for job in jobs:
        job.result(timeout_s=300)
    return requests * SMALL_TEXTS_PER_REQUEST / (time.perf_counter() - start)


def bulk(client: EmbeddingClient, texts: list[str]) -> float:
    """Docs/s of one large embed_documents job split into tasks of BULK_TEXTS_PER_TASK."""
    start = time.perf_counter()
    client.embed_documents(texts).result(timeout_s=600)
    return len(texts) / (time.perf_counter() - start)


def _measure(
    name: str,
    run: Callable[[EmbeddingClient], float],
    clients: dict[str, EmbeddingClient],
    workers: dict[str, WorkerProcess],
    rounds: int,
    metrics_port: int,
    scrape_interval_s: float,
) -> None:
    """Alternate off/on runs; print docs/s and worker CPU per doc, each as a median of per-round ratios."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu_per_kdoc: dict[str, list[float]] = {"off": [], "on": []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for round_index in range(rounds):
        order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
        for mode in order:
            cpu_before = workers[mode].cpu_s()
            start = time.perf_counter()
            with scraping(metrics_port, scrape_interval_s) if mode == "on" else contextlib.nullcontext():
                rate = run(clients[mode])
            docs = rate * (time.perf_counter() - start)
            rates[mode].append(rate)
            cpu_per_kdoc[mode].append((workers[mode].cpu_s() - cpu_before) / docs * 1000)
        ratios.append(rates["on"][-1] / rates["off"][-1])
        cpu_ratios.append(cpu_per_kdoc["off"][-1] / cpu_per_kdoc["on"][-1])
        print(
            f"   round {round_index + 1}: docs/s off {rates['off'][-1]:>8,.0f} on {rates['on'][-1]:>8,.0f}"
            f"  on/off {ratios[-1]:.3f}x | worker CPU s per 1000 docs off {cpu_per_kdoc['off'][-1]:.3f}"
            f" on {cpu_per_kdoc['on'][-1]:.3f}  docs/CPU-s on/off {cpu_ratios[-1]:.3f}x",
            flush=True,
        )
    median = statistics.median(ratios)
    print(
        f"   {name}: docs/s median off {statistics.median(rates['off']):,.0f}, on {statistics.median(rates['on']):,.0f};"
        f" on/off {median:.3f}x (median of per-round ratios, range {min(ratios):.3f}-{max(ratios):.3f});"
        f" target >= 0.97x: {'holds' if median >= 0.97 else 'MISSED'}\n"
        f"   {name}: worker docs per CPU-second on/off {statistics.median(cpu_ratios):.3f}x"
        f" (range {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}; CPU of the worker and its pool processes)",
        flush=True,
    )


_COUNTING_COST = """
import os, sys, tempfile, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="embedq-bench-metrics-")
from pathlib import Path
from worker.metrics import recording
from worker.metrics.definitions import build_worker_metrics
from worker.metrics.multiprocess import multiprocess_registry
from prometheus_client import generate_latest
n = int(sys.argv[1])
def per_request():
    recording.observe_queue_wait("m", "embedq.m", 0.002)
    recording.observe_encode("m", 0.0004, 4)
    recording.record_request("m", "document", "ok", 4, 40)
per_request()  # label children and files created outside the timing
recording.disable_recording()
start = time.perf_counter(); [per_request() for _ in range(n)]; off = time.perf_counter() - start
recording.enable_recording(build_worker_metrics(), "m", log_tasks=False)
per_request()
start = time.perf_counter(); [per_request() for _ in range(n)]; on = time.perf_counter() - start
registry = multiprocess_registry(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
start = time.perf_counter(); [generate_latest(registry) for _ in range(50)]; scrape = (time.perf_counter() - start) / 50
print(f"{on / n * 1e6:.1f} {off / n * 1e6:.1f} {scrape * 1e3:.2f}")
"""


def counting_cost(iterations: int = 20_000) -> tuple[float, float, float]:
    """Return (us per request with metrics on, us with them off, ms per /metrics render) in a fresh process."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _COUNTING_COST, str(iterations)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    on_us, off_us, scrape_ms = (float(part) for part in done.stdout.split())
    return on_us, off_us, scrape_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--scrape-interval-s", type=float, default=15.0)
    args = parser.parse_args()
    corpus = paragraphs(args.docs)[: args.docs]
    with (
        redis_server(args.redis_url) as server_url,
        claimed_database(server_url) as db_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        log_dir = Path(tmp)
        metrics_port = free_port()
        off_model = _model_alias(log_dir, "metrics-off")
        on_model = _model_alias(log_dir, "metrics-on")
        on_env = {"EMBEDQ_METRICS_PORT": str(metrics_port)}
        workers = {
            "off": start_worker(db_url, log_dir, "off", model=off_model, concurrency=2, extra_env={}),
            "on": start_worker(db_url, log_dir, "on", model=on_model, concurrency=2, extra_env=on_env),
        }
        print(
            f"corpus: {len(corpus):,} stdlib docstring paragraphs; redis {db_url}; two workers, concurrency 2 each; "
            f"metrics scraped every {args.scrape_interval_s:g} s while the metrics-on worker works",
            flush=True,
        )
        clients = {
            "off": EmbeddingClient(
                db_url, model=off_model, max_texts_per_task=BULK_TEXTS_PER_TASK, bulk_min_texts=None
            ),
            "on": EmbeddingClient(
                db_url, model=on_model, max_texts_per_task=BULK_TEXTS_PER_TASK, bulk_min_texts=None
            ),
        }
        try:
            for (
                client
            ) in clients.values():  # warm up: first tasks load pymilvus-free code paths, tokenizer caches
                small_requests(client, corpus, 50)
            print(
                f"\n1. small requests: {args.requests} jobs x {SMALL_TEXTS_PER_REQUEST} texts, all in flight",
                flush=True,
            )
            _measure(
                "small requests",
                lambda c: small_requests(c, corpus, args.requests),
                clients,
                workers,
                args.rounds,
                metrics_port,
                args.scrape_interval_s,
            )
            print(f"\n2. bulk: {len(corpus):,} paragraphs in tasks of {BULK_TEXTS_PER_TASK}", flush=True)
            _measure(
                "bulk",
                lambda c: bulk(c, corpus),
                clients,
                workers,
                args.rounds,
                metrics_port,
                args.scrape_interval_s,
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                body = response.read()
            print(f"\n/metrics of the metrics-on worker at the end: {len(body):,} bytes", flush=True)
            on_us, off_us, scrape_ms = counting_cost()
            print(
                "\n3. the counting calls of one request alone (queue wait, encode, request; multiprocess mode),"
                f" in a fresh process: {on_us:.1f} us with metrics on, {off_us:.1f} us off;"
                f" one /metrics render of one process's files: {scrape_ms:.2f} ms",
                flush=True,
            )
        finally:
            for client in clients.values():
                client.close()
            for worker in workers.values():
                worker.stop()


if __name__ == "__main__":
    main()
