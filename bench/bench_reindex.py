"""Reindex under a search loop: `embedq reindex` to another model while searches run through the alias.

Usage: python -m bench.bench_reindex [--docs 100000] [--kinds lite,server] [--searchers 2] [--drop-old]

Per Milvus kind (Milvus Lite through the shared Lite server; the Milvus 2.3.5 server of the
``milvus`` wheel): a worker of the bundled model backfills ``--docs`` paragraphs into the
physical collection ``docs__<model>`` with ``docs`` an alias of it (what adopting an old-style
collection leaves; ``--adopt`` backfills ``docs`` itself, an old-style collection that the reindex
adopts at its switch; ``--adopt-first`` times that adoption on its own before the reindex), then
`embedq reindex --collection docs --model NEXT` runs as a command
(with a worker of NEXT, a 16-dimensional model built in the temp directory, on the same Redis)
while ``--searchers`` threads search ``docs`` through ``search_text`` (as the CLI and the gateway
do), each query the exact text of a stored document, embedded in this process with the model the
search resolved. Every search is recorded: its model, its top score and any error. Checked:
  errors            none, in any search
  one model         per search: the top hit scores >= 0.99 (the query's own document, found with the
                    same model's vectors; another model's vectors would give a low score or a
                    dimension error); over time: no search that starts after one saw the new model
                    sees the old one
Printed: the reindex's seconds, the searches and their rate, errors, the searches of each model,
the slowest search, and the moment the model changed.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.bench_backfill import MilvusTarget, lite_target, redis_database, server_target
from bench.bench_sync import _write
from producer.backfill import BackfillOptions, run_backfill
from producer.client import EmbeddingClient
from tests.support.corpora import paragraphs

_MIN_SELF_SCORE = 0.99


@dataclass(frozen=True)
class SearchRecord:
    """One search of the loop: when, which model answered, its top score, or its error."""

    started: float
    ended: float
    model_id: str | None
    top_score: float | None
    error: str | None


def _search_loop(
    uri: str,
    texts: Sequence[str],
    encoders: dict[str, object],
    stop: threading.Event,
    out: list[SearchRecord],
) -> None:
    from worker.encoding.encoder import StaticEncoder
    from worker.milvus.aliases import open_access
    from worker.milvus.querying import search_text

    def embed(model_id: str, queries: Sequence[str]) -> np.ndarray:
        encoder = encoders[model_id]
        assert isinstance(encoder, StaticEncoder)
        return encoder.encode(list(queries))

    access = open_access(uri, None)
    rng = random.Random(threading.get_ident())
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                found = search_text(
                    access.client, "docs", rng.choice(texts), embed, top_k=3, output_fields=[]
                )
                score = found.hits[0]["score"] if found.hits else None
                out.append(SearchRecord(started, time.monotonic(), found.model_id, score, None))
            except Exception as exc:  # every failure is what the bench counts
                out.append(
                    SearchRecord(started, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}")
                )
    finally:
        access.close()


def _reindex(redis_url: str, uri: str, model: Path, cwd: Path, drop_old: bool) -> tuple[float, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EMBEDQ_")}
    env.update({"EMBEDQ_BROKER_URL": redis_url, "EMBEDQ_MILVUS_URI": uri})
    args = ["reindex", "--collection", "docs", "--model", str(model), *(["--drop-old"] if drop_old else [])]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"embedq reindex failed ({done.returncode}): {done.stderr[-2000:]}")
    for line in done.stderr.splitlines():
        if "adopted" in line:
            print(f"  {line.strip()}")
    return time.monotonic() - started, done.stdout.strip().splitlines()[-1]


def _report(kind: str, records: list[SearchRecord], reindex_s: float, loop_s: float) -> bool:
    errors = [r for r in records if r.error is not None]
    by_model: dict[str, int] = {}
    for record in records:
        if record.model_id is not None:
            by_model[record.model_id] = by_model.get(record.model_id, 0) + 1
    low = [r for r in records if r.top_score is not None and r.top_score < _MIN_SELF_SCORE]
    models = [r.model_id for r in sorted(records, key=lambda r: r.ended) if r.model_id is not None]
    new_model = models[-1] if models else None
    first_new = min((r.ended for r in records if r.model_id == new_model), default=None)
    stale_after = [
        r
        for r in records
        if first_new is not None and r.model_id not in (None, new_model) and r.started > first_new
    ]
    slowest = max((r.ended - r.started for r in records), default=0.0)
    print(
        f"  {kind}: reindex {reindex_s:.1f} s; {len(records)} searches in {loop_s:.1f} s "
        f"({len(records) / loop_s:.0f}/s, slowest {slowest * 1000:.0f} ms); errors {len(errors)}; "
        f"by model {by_model}; top score < {_MIN_SELF_SCORE}: {len(low)}; "
        f"old model after the new one was seen: {len(stale_after)}",
        flush=True,
    )
    for record in errors[:5]:
        print(f"    error: {record.error}")
    return not errors and not low and not stale_after and len(by_model) == 2


def bench_kind(target: MilvusTarget, redis_url: str, args: argparse.Namespace, tmp: Path) -> bool:
    from tests.support.models import build_model
    from tests.support.workers import start_worker, stop_worker
    from worker.encoding.encoder import StaticEncoder
    from worker.milvus.aliases import adopt, open_access, physical_name, point_alias

    next_model = build_model(tmp / "next-model", dim=16, max_length=64)
    texts = paragraphs(args.docs)[: args.docs]
    corpus = _write(tmp / "docs.jsonl", {f"doc-{i}": text for i, text in enumerate(texts)})
    old_worker = start_worker(redis_url, tmp / "worker-old.log", milvus_uri=target.uri)
    new_worker = start_worker(redis_url, tmp / "worker-new.log", str(next_model), milvus_uri=target.uri)
    try:
        # Filled under its physical name with ``docs`` an alias of it: what the adoption of an
        # old-style collection leaves (with --adopt: an old-style collection, adopted by the reindex).
        old_style = args.adopt or args.adopt_first
        physical = "docs" if old_style else physical_name("docs", old_worker.settings.model_id)
        with EmbeddingClient(redis_url, max_texts_per_task=10_000) as client:
            started = time.monotonic()
            options = BackfillOptions(
                corpus, physical, max_in_flight=4, state_dir=tmp / "state", skip_unchanged=True
            )
            summary = run_backfill(client, options)
            print(
                f"  {target.kind}: backfill of {summary.written} documents {time.monotonic() - started:.1f} s"
            )
        access = open_access(target.uri, None, timeout_s=1800)
        try:
            started = time.monotonic()
            if args.adopt:
                pass  # searched as it is; `embedq reindex` adopts it when the new collection is ready
            elif args.adopt_first:
                adopt(access, "docs")
                print(
                    f"  {target.kind}: adoption of the old-style collection {time.monotonic() - started:.1f} s"
                )
            else:
                point_alias(access, "docs", physical)
        finally:
            access.close()
        encoders: dict[str, object] = {
            old_worker.settings.model_id: StaticEncoder.from_pretrained(None),
            new_worker.settings.model_id: StaticEncoder.from_pretrained(next_model),
        }
        records: list[SearchRecord] = []
        stop = threading.Event()
        loops = [
            threading.Thread(
                target=_search_loop, args=(target.uri, texts, encoders, stop, records), daemon=True
            )
            for _ in range(args.searchers)
        ]
        loop_started = time.monotonic()
        for loop in loops:
            loop.start()
        time.sleep(1.0)
        reindex_s, last_line = _reindex(redis_url, target.uri, next_model, tmp, args.drop_old)
        print(f"  {target.kind}: {last_line}")
        # Go on until the new model has answered a few searches (or a minute passed).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(1 for r in list(records) if r.model_id == new_worker.settings.model_id) >= 10:
                break
            time.sleep(0.2)
        stop.set()
        for loop in loops:
            loop.join(timeout=60)
        return _report(target.kind, records, reindex_s, time.monotonic() - loop_started)
    finally:
        stop_worker(new_worker)
        stop_worker(old_worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--kinds", default="lite")
    parser.add_argument("--searchers", type=int, default=2)
    parser.add_argument("--drop-old", action="store_true")
    parser.add_argument(
        "--adopt", action="store_true", help="backfill an old-style collection: the reindex adopts it"
    )
    parser.add_argument(
        "--adopt-first", action="store_true", help="backfill an old-style collection, time its adoption first"
    )
    args = parser.parse_args()
    print(f"reindex under a search loop: {args.docs} documents, {args.searchers} searching threads")
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="embedq-bench-reindex-") as tmp_name,
        redis_database() as redis_url,
    ):
        tmp = Path(tmp_name)
        for kind in args.kinds.split(","):
            starter = lite_target if kind == "lite" else server_target
            with starter(tmp / kind) as target:
                ok = bench_kind(target, redis_url, args, tmp / kind) and ok
    print("all checks held" if ok else "CHECKS FAILED")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
