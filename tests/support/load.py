"""A mixed load of many single queries and a few bulk jobs: the load test and bench/bench_load.py share it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from producer.client import EmbeddingClient
from producer.errors import EmbedqError
from worker.encoding.encoder import StaticEncoder

RESULT_TIMEOUT_S = 300.0


@dataclass
class LoadRun:
    """What one round of mixed load sent, got back, and how long each part took."""

    single_texts: list[str] = field(default_factory=list)
    single_vectors: list[np.ndarray] = field(default_factory=list)
    single_latencies_s: list[float] = field(default_factory=list)
    bulk_texts: list[list[str]] = field(default_factory=list)
    bulk_vectors: list[np.ndarray] = field(default_factory=list)
    bulk_durations_s: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    wall_s: float = 0.0


def mixed_load(
    client: EmbeddingClient,
    bulk_client: EmbeddingClient,
    bulk_corpus: Sequence[str],
    *,
    producers: int,
    requests: int,
    bulk_jobs: int,
    bulk_texts: int,
) -> LoadRun:
    """Run ``producers`` threads of single queries and ``bulk_jobs`` bulk jobs on ``bulk_client``, at once."""
    run = LoadRun()
    lock = threading.Lock()

    def single(producer: int) -> None:
        for number in range(requests):
            text = f"producer {producer} asks question {number}: how do static embeddings work?"
            started = time.perf_counter()
            try:
                vector = client.embed_queries([text]).result(timeout_s=RESULT_TIMEOUT_S)[0]
            except EmbedqError as exc:
                with lock:
                    run.errors.append(exc)
                continue
            elapsed_s = time.perf_counter() - started
            with lock:
                run.single_texts.append(text)
                run.single_vectors.append(vector)
                run.single_latencies_s.append(elapsed_s)

    def bulk(job: int) -> None:
        start = job * bulk_texts
        texts = [f"{text} [{job}]" for text in bulk_corpus[start : start + bulk_texts]]
        started = time.perf_counter()
        try:
            vectors = bulk_client.embed_documents(texts).result(timeout_s=RESULT_TIMEOUT_S)
        except EmbedqError as exc:
            with lock:
                run.errors.append(exc)
            return
        elapsed_s = time.perf_counter() - started
        with lock:
            run.bulk_texts.append(texts)
            run.bulk_vectors.append(vectors)
            run.bulk_durations_s.append(elapsed_s)

    threads = [threading.Thread(target=bulk, args=(job,)) for job in range(bulk_jobs)]
    threads += [threading.Thread(target=single, args=(producer,)) for producer in range(producers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.perf_counter() - started
    return run


def mismatches(run: LoadRun, encoder: StaticEncoder) -> int:
    """Count the vectors that differ from the in-process encoder's (0 when every request was right)."""
    wrong = 0
    if run.single_texts:
        expected = encoder.encode(run.single_texts)
        wrong += int(np.sum(np.any(np.stack(run.single_vectors) != expected, axis=1)))
    for texts, vectors in zip(run.bulk_texts, run.bulk_vectors, strict=True):
        wrong += int(np.sum(np.any(vectors != encoder.encode(texts), axis=1)))
    return wrong
