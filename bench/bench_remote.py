"""Workers far from the broker: docs/s of a backfill and of a bulk embed job at 0, 1 and 10 ms added RTT.

Usage: python -m bench.bench_remote [--docs 20000] [--rounds 3] [--delays 0,1,10] [--task-texts 4096,1000]
                                    [--queues interactive,bulk | bulk]

This machine's kernel has no ``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc
kind is unknown"), so the distance is a userspace TCP proxy (tests/support/delay_proxy.py) between
the workers and the broker, adding the round-trip time set in its control file (half each way).
The producer talks to the broker directly (it sits next to it); the workers, one worker of
2 pool processes writing into Milvus Lite, reach broker and results only through the proxy.
Per round and delay (the order rotating): a fresh backfill of the corpus (chunk 1000, in-flight
auto) and a bulk embed job of the same texts for each of ``--task-texts`` (texts per task: the
client's default, 4096, and the backfill's chunk of 1000). Printed:
docs/s, and each delay against 0 ms through the same proxy (median of per-round ratios); first,
PING round trips direct and through the proxy at each delay (what the proxy itself adds), and
at the end the median runtime of the tasks (which holds the round trips a pool process makes).
``--queues bulk`` runs a bulk-only worker, which reserves a second chunk per pool process
(prefetch 2); the default worker also reads the queue of queries and keeps prefetch 1.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_backfill import lite_target, load_corpus
from bench.bench_fleet import private_redis
from producer.backfill import BackfillOptions, run_backfill
from producer.client import EmbeddingClient
from worker.ports import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


_SUCCEEDED = re.compile(rb"\] succeeded in ([0-9.]+)s")


def task_runtimes(log: Path, offset: int) -> list[float]:
    """Return the runtime Celery logged for each task since ``offset`` of the log, in seconds.

    It runs from the task's STARTED write to its result's write, both included: the round trips
    a pool process makes to the broker for one task, which no prefetch hides, are in it.
    """
    with log.open("rb") as handle:
        handle.seek(offset)
        return [float(value) for value in _SUCCEEDED.findall(handle.read())]


def busy_share(log: Path, offset: int, wall_s: float, processes: int) -> tuple[float, float, int]:
    """Return the pool's busy share, the idle ms per task and the task count since ``offset`` of the log.

    Busy time is the runtime Celery logs for each task ("succeeded in X s"); the rest of
    ``wall_s`` x ``processes`` is time a pool process waited (for the broker, or for work).
    """
    runtimes = task_runtimes(log, offset)
    capacity_s = wall_s * processes
    idle_ms = (capacity_s - sum(runtimes)) / max(len(runtimes), 1) * 1000
    return sum(runtimes) / capacity_s, idle_ms, len(runtimes)


def ping_ms(url: str, count: int = 300) -> tuple[float, float]:
    """Return the p50 and p90 of ``count`` PINGs to ``url``, in milliseconds."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            client.ping()
            times.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def check_proxy(control: Path, delays: list[float], direct_url: str, far_url: str) -> None:
    """Print PING round trips direct and through the proxy at each delay: what the proxy itself adds."""
    p50, p90 = ping_ms(direct_url)
    line = f"proxy check, PING p50/p90 ms: direct {p50:.2f}/{p90:.2f}"
    for delay in delays:
        _set_delay(control, delay)
        p50, p90 = ping_ms(far_url)
        line += f"; through the proxy at {delay:g} ms {p50:.2f}/{p90:.2f}"
    print(line, flush=True)


def _set_delay(control: Path, delay_ms: float) -> None:
    control.write_text(str(delay_ms))
    time.sleep(0.5)  # the proxy re-reads it every 0.2 s


def main() -> None:
    """Start broker, proxy and worker; run the rounds; print the ratios."""
    from tests.support.workers import start_worker, stop_worker
    from worker.milvus.sink import open_sink

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delays", default="0,1,10")
    parser.add_argument("--task-texts", default="4096,1000", help="texts per task of the bulk embed jobs")
    parser.add_argument("--queues", default="interactive,bulk", help="the worker's --queues")
    args = parser.parse_args()
    delays = [float(value) for value in args.delays.split(",")]
    task_sizes = [int(value) for value in args.task_texts.split(",")]
    workloads = ["backfill", *(f"embed@{size}" for size in task_sizes)]
    rates: dict[tuple[str, float], list[float]] = {}
    busy: dict[tuple[str, float], list[float]] = {}
    idle: dict[tuple[str, float], list[float]] = {}
    runtime: dict[tuple[str, float], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="embedq-bench-remote-") as tmp_name, private_redis() as redis_url:
        tmp = Path(tmp_name)
        corpus = load_corpus(tmp, args.docs)
        broker_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        proxy_port = free_port()
        control = tmp / "delay_ms"
        control.write_text("0")
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.delay_proxy",
                str(proxy_port),
                str(broker_port),
                str(control),
            ],
            cwd=REPO_ROOT,
        )
        far_url = f"redis://127.0.0.1:{proxy_port}/0"
        try:
            time.sleep(0.5)
            check_proxy(control, delays, redis_url, far_url)
            with lite_target(tmp / "lite") as target:
                worker = start_worker(
                    far_url, tmp / "worker.log", milvus_uri=target.uri, queues=args.queues.split(",")
                )
                try:
                    with contextlib.ExitStack() as clients:
                        client = clients.enter_context(EmbeddingClient(redis_url))
                        embedders = {
                            size: clients.enter_context(EmbeddingClient(redis_url, max_texts_per_task=size))
                            for size in task_sizes
                        }
                        print(
                            f"corpus {len(corpus.ids):,} paragraphs; worker of 2 pool processes ({args.queues}) behind the proxy; "
                            f"delays {delays} ms added RTT rotating, {args.rounds} rounds"
                        )
                        warm = BackfillOptions(corpus.path, "remote_warm", state_dir=tmp / "warm")
                        run_backfill(client, warm)
                        for round_no in range(args.rounds):
                            shift = round_no % len(delays)
                            for delay in delays[shift:] + delays[:shift]:
                                _set_delay(control, delay)
                                tag = f"d{delay:g}_r{round_no}".replace(".", "_")
                                sink = open_sink(target.uri, None, f"remote_{tag}", corpus.model_id, 256)
                                sink.ensure_collection()
                                options = BackfillOptions(
                                    corpus.path, f"remote_{tag}", state_dir=tmp / f"state-{tag}"
                                )
                                offset = worker.log_path.stat().st_size
                                started = time.perf_counter()
                                summary = run_backfill(client, options)
                                wall_s = time.perf_counter() - started
                                backfill_rate = summary.written / wall_s
                                share, idle_ms, _ = busy_share(worker.log_path, offset, wall_s, 2)
                                runtime.setdefault(("backfill", delay), []).extend(
                                    task_runtimes(worker.log_path, offset)
                                )
                                busy.setdefault(("backfill", delay), []).append(share)
                                idle.setdefault(("backfill", delay), []).append(idle_ms)
                                if summary.written != len(corpus.ids):
                                    raise RuntimeError(f"backfill wrote {summary.written}: {summary.errors}")
                                rates.setdefault(("backfill", delay), []).append(backfill_rate)
                                for size in task_sizes:
                                    workload = f"embed@{size}"
                                    offset = worker.log_path.stat().st_size
                                    started = time.perf_counter()
                                    vectors = (
                                        embedders[size].embed_documents(corpus.texts).result(timeout_s=600)
                                    )
                                    wall_s = time.perf_counter() - started
                                    time.sleep(0.2)  # the log line of the last task
                                    share, idle_ms, _ = busy_share(worker.log_path, offset, wall_s, 2)
                                    runtime.setdefault((workload, delay), []).extend(
                                        task_runtimes(worker.log_path, offset)
                                    )
                                    busy.setdefault((workload, delay), []).append(share)
                                    idle.setdefault((workload, delay), []).append(idle_ms)
                                    rates.setdefault((workload, delay), []).append(len(vectors) / wall_s)
                                print(
                                    f"  round {round_no + 1} delay {delay:>4g} ms: "
                                    + "  ".join(
                                        f"{workload} {rates[(workload, delay)][-1]:>7,.0f} docs/s (busy "
                                        f"{busy[(workload, delay)][-1]:.0%}, idle {idle[(workload, delay)][-1]:.0f} ms/task)"
                                        for workload in workloads
                                    ),
                                    flush=True,
                                )
                finally:
                    stop_worker(worker)
        finally:
            proxy.kill()
            proxy.wait()
    for workload in workloads:
        base = rates[(workload, 0.0)]
        for delay in delays:
            values = rates[(workload, delay)]
            ratios = [value / ref for value, ref in zip(values, base, strict=True)]
            print(
                f"{workload:<10} delay {delay:>4g} ms: {statistics.median(values):>7,.0f} docs/s (median), "
                f"vs 0 ms {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
                f"pool busy {statistics.median(busy[(workload, delay)]):.0%}, idle per task "
                f"{statistics.median(idle[(workload, delay)]):.1f} ms (medians); task runtime "
                f"{statistics.median(runtime[(workload, delay)]) * 1000:.1f} ms (median of "
                f"{len(runtime[(workload, delay)])} tasks)"
            )


if __name__ == "__main__":
    main()
