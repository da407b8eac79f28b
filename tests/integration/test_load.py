"""Many producers at once against a real worker: every request completes with the right vectors.

The workload (tests/support/load.py) is bench/bench_load.py's (20 producer threads x 50 single
queries, with 3 bulk jobs of 3,000 paragraphs in flight); the benchmark prints the latency
figures, this test checks the vectors.
"""

from __future__ import annotations

import pytest

from producer import EmbeddingClient
from tests.support.corpora import paragraphs
from tests.support.load import mismatches, mixed_load
from tests.support.workers import WorkerProcess
from worker.encoding.encoder import StaticEncoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PRODUCERS, REQUESTS, BULK_JOBS, BULK_TEXTS = 20, 50, 3, 3_000


def test_many_producers_and_bulk_jobs_all_get_the_right_vectors(
    worker: WorkerProcess, redis_url: str
) -> None:
    corpus = paragraphs(BULK_JOBS * BULK_TEXTS)
    with EmbeddingClient(redis_url) as client:
        run = mixed_load(
            client,
            client,
            corpus,
            producers=PRODUCERS,
            requests=REQUESTS,
            bulk_jobs=BULK_JOBS,
            bulk_texts=BULK_TEXTS,
        )
    assert run.errors == []
    assert len(run.single_vectors) == PRODUCERS * REQUESTS
    assert sorted(map(len, run.bulk_texts)) == [BULK_TEXTS] * BULK_JOBS
    assert len(set(run.single_texts)) == PRODUCERS * REQUESTS  # every request answered once
    assert mismatches(run, StaticEncoder.from_pretrained(None)) == 0
    assert worker.process.poll() is None
