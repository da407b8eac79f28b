"""Incremental sync: a rerun with 1% of the texts changed, 1% removed and 1% added, against the first run.

Usage: python -m bench.bench_sync [--docs 100000] [--rounds 3] [--kinds lite,server] [--chunk-size 1000] [--scan]

Per Milvus kind (Milvus Lite through the shared Lite server as workers use it; the Milvus 2.3.5
server of the ``milvus`` wheel), one real worker (prefork, 2 processes) on a real Redis. Each round,
into a fresh collection, both runs being what `embedq backfill FILE --delete-missing` does:
  first   run_backfill of day-1's file (stdlib docstring paragraphs, unique ids) + delete_missing
  rerun   run_backfill of day-2's file (1% of the texts edited, 1% of the ids gone, 1% new) + delete_missing
The rerun trusts the sync manifest the first run sealed: only new and changed documents go
through the queue, removed ids come from the manifest (``--scan``: no manifest, so every chunk's
hashes and the collection's ids are read from Milvus, as a first sync of an existing collection
or one changed by another writer does). After each rerun the collection is checked exactly: row count, no removed id left, the stored text of
every edited and every added document. Printed: the seconds of each run, the per-round ratio
rerun/first (median and spread), the counts of the rerun's summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_backfill import MilvusTarget, lite_target, redis_database, server_target
from producer.backfill import BackfillOptions, BackfillSummary
from producer.backfill.manifest import SyncManifest
from producer.client import EmbeddingClient
from producer.settings import load_settings
from tests.support.corpora import paragraphs
from worker.cli.sync import sync_backfill

_CHANGED = _REMOVED = _ADDED = 0.01


def _write(path: Path, docs: dict[str, str]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for doc_id, text in docs.items():
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path


def _days(count: int, tmp: Path) -> tuple[Path, Path, dict[str, str], set[str], dict[str, str]]:
    texts = paragraphs(count + int(count * _ADDED) + 1)
    day1 = {f"doc-{i}": texts[i] for i in range(count)}
    step = round(1 / _CHANGED)
    removed = {f"doc-{i}" for i in range(1, count, step)}
    edited = {f"doc-{i}": texts[i] + " (edited)" for i in range(2, count, step)}
    added = {f"new-{i}": texts[count + i] for i in range(int(count * _ADDED))}
    day2 = {doc_id: edited.get(doc_id, text) for doc_id, text in day1.items() if doc_id not in removed}
    day2.update(added)
    return (
        _write(tmp / "day1.jsonl", day1),
        _write(tmp / "day2.jsonl", day2),
        day2,
        removed,
        {**edited, **added},
    )


def _sync(
    client: EmbeddingClient,
    uri: str,
    path: Path,
    collection: str,
    state: Path,
    chunk_size: int = 1000,
    use_manifest: bool = True,
) -> tuple[float, BackfillSummary, int | None]:
    settings = load_settings({**os.environ, "EMBEDQ_MILVUS_URI": uri})
    options = BackfillOptions(
        path, collection, chunk_size=chunk_size, max_in_flight=4, state_dir=state, skip_unchanged=True
    )
    # What `embedq backfill FILE --delete-missing` runs; without the manifest, a fresh one each run.
    name = f"manifest-{collection}.sqlite" if use_manifest else f"manifest-{state.name}.sqlite"
    started = time.perf_counter()
    summary, deleted = sync_backfill(
        settings, client, options, SyncManifest(state.parent / name), delete=True
    )
    total_s = time.perf_counter() - started
    print(f"    {collection}: {total_s:.1f} s", flush=True)
    return total_s, summary, deleted


def _check(
    uri: str, collection: str, day2: dict[str, str], removed: set[str], touched: dict[str, str], model_id: str
) -> None:
    from worker.milvus.aliases import open_access
    from worker.milvus.sync import count_rows, id_filter

    # A connection of its own, closed after: a shared one left idle would be refused by the Lite
    # server (too many keepalive pings) and break the next run's connections to it.
    access = open_access(uri, None)
    client = access.client
    try:
        count = count_rows(client, collection, timeout_s=access.timeout_s)
        if count != len(day2):
            raise SystemExit(f"{collection}: {count} rows after the rerun, expected {len(day2)}")
        ids = sorted(removed)
        left = client.query(
            collection, filter=id_filter(ids), output_fields=["id"], consistency_level="Strong"
        )
        if left:
            raise SystemExit(f"{collection}: {len(left)} removed documents still stored")
        wanted = sorted(touched)
        stored: dict[str, str] = {}
        for start in range(0, len(wanted), 1000):
            rows = client.query(
                collection,
                filter=id_filter(wanted[start : start + 1000]),
                output_fields=["text"],
                consistency_level="Strong",
            )
            stored.update({row["id"]: row["text"] for row in rows})
        if stored != touched:
            raise SystemExit(
                f"{collection}: {sum(stored.get(k) != v for k, v in touched.items())} edited/added rows differ"
            )
    finally:
        access.close()


def bench_kind(target: MilvusTarget, redis_url: str, args: argparse.Namespace, tmp: Path) -> list[float]:
    from tests.support.workers import start_worker, stop_worker

    day1, day2_path, day2, removed, touched = _days(args.docs, tmp)
    worker = start_worker(redis_url, tmp / f"worker-{target.kind}.log", milvus_uri=target.uri)
    ratios: list[float] = []
    try:
        with EmbeddingClient(redis_url, max_texts_per_task=10_000) as client:
            _sync(
                client,
                target.uri,
                _write(tmp / "warm.jsonl", dict(list(day2.items())[:2000])),
                "sync_warm",
                tmp / "s-warm",
            )
            for round_no in range(args.rounds):
                name = f"sync_{target.kind}_r{round_no}"
                first_s, first, _ = _sync(
                    client, target.uri, day1, name, tmp / f"s1-{round_no}", args.chunk_size, not args.scan
                )
                rerun_s, rerun, deleted = _sync(
                    client,
                    target.uri,
                    day2_path,
                    name,
                    tmp / f"s2-{round_no}",
                    args.chunk_size,
                    not args.scan,
                )
                _check(target.uri, name, day2, removed, touched, worker.settings.model_id)
                ratios.append(rerun_s / first_s)
                print(
                    f"  {target.kind} round {round_no}: first {first_s:.1f} s ({first.written} written), rerun "
                    f"{rerun_s:.1f} s ({rerun.written} written, {rerun.unchanged} unchanged, {deleted} deleted), "
                    f"ratio {rerun_s / first_s:.3f}",
                    flush=True,
                )
    finally:
        stop_worker(worker)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="lite")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument(
        "--scan",
        action="store_true",
        help="no sync manifest: every chunk's hashes and the removed ids read from Milvus",
    )
    args = parser.parse_args()
    print(
        f"incremental sync: {args.docs} documents, 1% edited / removed / added, {args.rounds} rounds, chunk {args.chunk_size}"
    )
    with tempfile.TemporaryDirectory(prefix="embedq-bench-sync-") as tmp_name, redis_database() as redis_url:
        tmp = Path(tmp_name)
        for kind in args.kinds.split(","):
            starter = lite_target if kind == "lite" else server_target
            with starter(tmp / kind) as target:
                ratios = bench_kind(target, redis_url, args, tmp / kind)
            spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
            print(
                f"{kind}: rerun/first median {statistics.median(ratios):.3f} (spread {spread}, target <= 0.15)"
            )


if __name__ == "__main__":
    main()
