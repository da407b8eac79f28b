"""One failover round, shared by the fault test and bench/bench_failover.py.

A backfill and a stream of queries run against workers on a Sentinel broker; the primary is
killed once mid-backfill. The backfill either completes or stops with a transient error, and is
then run again until done; every query answer is compared with the encoder's own vectors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from producer.backfill import BackfillOptions, BackfillProgress, run_backfill
from producer.backfill.run_lock import BackfillRunningError
from producer.client import EmbeddingClient
from producer.errors import TransientError
from producer.settings import Settings
from tests.support.sentinel import SentinelSetup
from worker.encoding.encoder import StaticEncoder

MAX_RERUNS = 4
_MAX_LOCK_WAITS = 90


@dataclass
class QueryTally:
    """What the query stream saw: right answers, wrong answers (never acceptable), transient errors."""

    right: int = 0
    wrong: int = 0
    transient: int = 0
    right_after_failover: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class FailoverRound:
    """How one round went."""

    runs: int
    lock_wait_s: float
    written: int
    skipped: int
    failover_s: float
    stopped_with: list[str]
    queries: QueryTally


def _stream_queries(
    client: EmbeddingClient,
    encoder: StaticEncoder,
    stop: threading.Event,
    failed_over: threading.Event,
    tally: QueryTally,
) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        text = f"query {number} about queues and vectors"
        try:
            vector = client.embed_queries([text]).result(timeout_s=30.0)[0]
        except TransientError as exc:
            tally.transient += 1
            if len(tally.errors) < 5:
                tally.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.1)
            continue
        if np.allclose(vector, encoder.encode([text])[0], atol=1e-6):
            tally.right += 1
            tally.right_after_failover += failed_over.is_set()
        else:
            tally.wrong += 1


def failover_round(
    setup: SentinelSetup,
    settings: Settings,
    corpus: Path,
    collection: str,
    state_dir: Path,
    *,
    kill_after_docs: int,
    chunk_size: int = 200,
) -> FailoverRound:
    """Backfill ``corpus`` while queries stream; kill the primary once ``kill_after_docs`` are done."""
    encoder = StaticEncoder.from_pretrained()
    options = BackfillOptions(corpus, collection, chunk_size=chunk_size, state_dir=state_dir)
    killed: list[int] = []
    failover: list[float] = []
    failed_over = threading.Event()

    def kill_and_wait() -> None:
        old = setup.kill_primary()
        failover.append(setup.wait_for_failover(old))
        failed_over.set()

    def on_progress(progress: BackfillProgress) -> None:
        if not killed and progress.docs_done >= kill_after_docs:
            killed.append(1)
            threading.Thread(target=kill_and_wait, daemon=True).start()

    stop = threading.Event()
    tally = QueryTally()
    stopped_with: list[str] = []
    written = skipped = runs = lock_waits = 0
    with (
        EmbeddingClient.from_settings(settings, worker_wait_s=30.0) as client,
        EmbeddingClient.from_settings(settings, worker_wait_s=30.0) as query_client,
    ):
        queries = threading.Thread(
            target=_stream_queries, args=(query_client, encoder, stop, failed_over, tally), daemon=True
        )
        queries.start()
        try:
            while runs < MAX_RERUNS:
                runs += 1
                try:
                    summary = run_backfill(client, options, on_progress=on_progress)
                except BackfillRunningError:
                    # The run the failover stopped could not free its run lock (the broker was
                    # down); the lock expires within LOCK_TTL_S. Waiting is not another run.
                    runs -= 1
                    lock_waits += 1
                    if lock_waits > _MAX_LOCK_WAITS:
                        raise
                    time.sleep(1.0)
                    continue
                except TransientError as exc:
                    stopped_with.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    failed_over.wait(30.0)
                    continue
                written += summary.written
                skipped = summary.skipped
                if summary.failed == 0 and summary.written + summary.skipped > 0 and killed:
                    break
                stopped_with.append(f"failed {summary.failed}: {summary.errors[:2]}")
                failed_over.wait(30.0)
            failed_over.wait(30.0)
            deadline = time.monotonic() + 30.0
            while tally.right_after_failover < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            queries.join(60.0)
    return FailoverRound(
        runs,
        float(lock_waits),
        written,
        skipped,
        failover[0] if failover else float("nan"),
        stopped_with,
        tally,
    )
