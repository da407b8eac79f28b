"""What worker metrics cost: docs/s of a worker with --metrics-port next to one without, in one run.

Usage: python -m bench.bench_metrics [--redis-url redis://localhost:6379] [--rounds 9]
                                      [--requests 2000] [--docs 30000] [--scrape-interval-s 15] [--aa]

Two `run_worker` processes (prefork, concurrency 2) run side by side on the same Redis, each
serving the bundled model on a queue of its own (a symlinked model folder gives a distinct model
id): one with metrics off, one with EMBEDQ_METRICS_PORT set and scraped every
--scrape-interval-s (default 15 s, Prometheus' default and the compose stack's). Only one of them
works at a time. Each round is four segments in ABBA order (off on on off; the next round on off
off on), so a change in the machine's load during a round weighs on both modes alike; a round's
ratio is each mode's docs over its wall time, on/off.

1. small requests: --requests jobs of 4 texts each per segment, all in flight, results collected
   (per-request cost dominates: the worst case for per-request counting);
2. bulk: --docs paragraphs per segment in tasks of 1000 (encoding dominates); both workers do one
   bulk job before the first round, so neither pays first-time costs inside a round.

Printed per load: each round's docs/s and on/off ratio, the load average; then the median,
interquartile range and range of the per-round ratios, the verdict on the median (target >= 0.97x)
and whether the spread is too wide for a 3% margin to be resolved at all; and the same for docs
per worker CPU-second (parent and pool processes), which the shared machine's noise disturbs less
than wall time. The default segment sizes give each mode about a CPU-second per round: psutil
reads CPU time in 10 ms ticks per process, so much smaller segments blur the CPU ratio (the
bench says so when they do). With --aa both workers run with metrics off: the ratios it prints
are the bench's own bias and spread on this machine (two workers, two queues, the order), the
yardstick for a real run's difference.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.bench_queue import WorkerProcess, claimed_database, redis_server, start_worker
from producer.client import EmbeddingClient
from tests.support.corpora import paragraphs
from worker.ports import free_port

SMALL_TEXTS_PER_REQUEST = 4
BULK_TEXTS_PER_TASK = 1000
TARGET_RATIO = 0.97
MIN_CPU_S_PER_MODE = 1.0  # below this, clock-tick resolution blurs the CPU ratio by over 3%


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


def small_requests(client: EmbeddingClient, texts: list[str], requests: int) -> int:
    """Send ``requests`` jobs of SMALL_TEXTS_PER_REQUEST texts, all in flight; wait for all; return the docs."""
    jobs = [
        client.embed_documents(texts[i * SMALL_TEXTS_PER_REQUEST : (i + 1) * SMALL_TEXTS_PER_REQUEST])
        for i in range(requests)
    ]
    for job in jobs:
        job.result(timeout_s=300)
    return requests * SMALL_TEXTS_PER_REQUEST


def bulk(client: EmbeddingClient, texts: list[str]) -> int:
    """Send one large embed_documents job split into tasks of BULK_TEXTS_PER_TASK; return the docs."""
    client.embed_documents(texts).result(timeout_s=600)
    return len(texts)


@dataclass
class Tally:
    """Docs, wall seconds and worker CPU seconds of one mode (metrics off or on) within a round."""

    docs: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def docs_per_s(self) -> float:
        return self.docs / self.wall_s

    def cpu_s_per_kdoc(self) -> float:
        return self.cpu_s / self.docs * 1000


def _segment(
    mode: str,
    run: Callable[[EmbeddingClient], int],
    clients: dict[str, EmbeddingClient],
    workers: dict[str, WorkerProcess],
    tally: Tally,
    metrics_port: int | None,
    scrape_interval_s: float,
) -> None:
    # The scraper thread starts before the clock and is joined after it: only its scrapes are timed.
    scraper = scraping(metrics_port, scrape_interval_s) if mode == "on" and metrics_port else None
    with scraper or contextlib.nullcontext():
        cpu_before = workers[mode].cpu_s()
        start = time.perf_counter()
        tally.docs += run(clients[mode])
        tally.wall_s += time.perf_counter() - start
        tally.cpu_s += workers[mode].cpu_s() - cpu_before


def spread(values: list[float]) -> str:
    """Median, interquartile range and full range of ``values`` (NaNs left out)."""
    values = [value for value in values if not math.isnan(value)]
    if len(values) < 2:
        return "too few rounds with a ratio"
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (
        f"median {statistics.median(values):.3f}x, interquartile {low:.3f}-{high:.3f},"
        f" range {min(values):.3f}-{max(values):.3f}"
    )


def verdict(ratios: list[float]) -> str:
    """The target's verdict on the median, and whether the spread lets the run tell 3% at all."""
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    holds = "holds" if statistics.median(ratios) >= TARGET_RATIO else "MISSED"
    if high - low > 2 * (1 - TARGET_RATIO):
        return f"{holds}, but the interquartile range is wider than the 3% margin: rerun on a quiet machine"
    return holds


def _measure(
    name: str,
    run: Callable[[EmbeddingClient], int],
    clients: dict[str, EmbeddingClient],
    workers: dict[str, WorkerProcess],
    rounds: int,
    metrics_port: int | None,
    scrape_interval_s: float,
) -> None:
    """Rounds of four segments in ABBA order (off on on off, then on off off on): a drift of the
    machine's load within a round weighs on both modes alike. Per round: docs/s on/off (total docs
    over total wall time of each mode) and docs per worker CPU-second on/off; then their median,
    interquartile range and range over the rounds.
    """
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    cpu_seconds: list[float] = []
    medians: dict[str, list[float]] = {"off": [], "on": []}
    for round_index in range(rounds):
        first, second = ("off", "on") if round_index % 2 == 0 else ("on", "off")
        tallies = {"off": Tally(), "on": Tally()}
        for mode in (first, second, second, first):
            _segment(mode, run, clients, workers, tallies[mode], metrics_port, scrape_interval_s)
        off, on = tallies["off"], tallies["on"]
        ratios.append(on.docs_per_s() / off.docs_per_s())
        # A mode that used less than one clock tick of CPU has no ratio (segments far too small).
        cpu_ratios.append(off.cpu_s / on.cpu_s * on.docs / off.docs if off.cpu_s and on.cpu_s else math.nan)
        medians["off"].append(off.docs_per_s())
        medians["on"].append(on.docs_per_s())
        cpu_seconds.append(min(off.cpu_s, on.cpu_s))
        print(
            f"   round {round_index + 1} ({first} {second} {second} {first}): docs/s off {off.docs_per_s():>8,.0f}"
            f" on {on.docs_per_s():>8,.0f}  on/off {ratios[-1]:.3f}x | worker CPU s per 1000 docs"
            f" off {off.cpu_s_per_kdoc():.3f} on {on.cpu_s_per_kdoc():.3f}  docs/CPU-s on/off {cpu_ratios[-1]:.3f}x"
            f" | load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    # Without a metrics port (--aa) both workers run with metrics off: there is no target to judge.
    judged = (
        f"target >= {TARGET_RATIO}x: {verdict(ratios)}"
        if metrics_port
        else "A/A: the bench's own bias and spread"
    )
    print(
        f"   {name}: docs/s median off {statistics.median(medians['off']):,.0f},"
        f" on {statistics.median(medians['on']):,.0f}\n"
        f"   {name}: docs/s on/off per round: {spread(ratios)}; {judged}\n"
        f"   {name}: worker docs per CPU-second on/off per round: {spread(cpu_ratios)}"
        " (CPU of the worker and its pool processes)",
        flush=True,
    )
    if statistics.median(cpu_seconds) < MIN_CPU_S_PER_MODE:
        # psutil reads CPU time in clock ticks (10 ms) per process: three processes per worker.
        print(
            f"   {name}: each mode used only {statistics.median(cpu_seconds):.2f} CPU-s per round (median):"
            f" the 10 ms ticks alone make the CPU ratio uncertain by about"
            f" {3 * 0.01 / statistics.median(cpu_seconds):.0%}; use more --requests/--docs per segment",
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
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000, help="small jobs per segment")
    parser.add_argument("--docs", type=int, default=30_000, help="bulk paragraphs per segment")
    parser.add_argument("--scrape-interval-s", type=float, default=15.0)
    parser.add_argument(
        "--aa",
        action="store_true",
        help="calibration: both workers with metrics off; the on/off ratios then show the bench's own"
        " bias and spread, which a real run's difference must exceed to mean anything",
    )
    args = parser.parse_args()
    corpus = paragraphs(args.docs)[: args.docs]
    with (
        redis_server(args.redis_url) as server_url,
        claimed_database(server_url) as db_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        log_dir = Path(tmp)
        metrics_port = None if args.aa else free_port()
        off_model = _model_alias(log_dir, "metrics-off")
        on_model = _model_alias(log_dir, "metrics-on")
        on_env = {} if metrics_port is None else {"EMBEDQ_METRICS_PORT": str(metrics_port)}
        workers = {
            "off": start_worker(db_url, log_dir, "off", model=off_model, concurrency=2, extra_env={}),
            "on": start_worker(db_url, log_dir, "on", model=on_model, concurrency=2, extra_env=on_env),
        }
        mode_note = (
            "A/A calibration: metrics OFF in both workers ('on' is only a name here)"
            if args.aa
            else f"metrics scraped every {args.scrape_interval_s:g} s while the metrics-on worker works"
        )
        print(
            f"corpus: {len(corpus):,} stdlib docstring paragraphs; redis {db_url}; two workers, concurrency 2 each; "
            + mode_note,
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
            print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
            for client in clients.values():  # warm up both paths: code, tokenizer caches, result sizes
                small_requests(client, corpus, 50)
                bulk(client, corpus[: 4 * BULK_TEXTS_PER_TASK])
            print(
                f"\n1. small requests: {args.requests} jobs x {SMALL_TEXTS_PER_REQUEST} texts per segment,"
                " all in flight",
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
            print(
                f"\n2. bulk: {len(corpus):,} paragraphs per segment in tasks of {BULK_TEXTS_PER_TASK}",
                flush=True,
            )
            _measure(
                "bulk",
                lambda c: bulk(c, corpus),
                clients,
                workers,
                args.rounds,
                metrics_port,
                args.scrape_interval_s,
            )
            if metrics_port is not None:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=5
                ) as response:
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
