"""One run at a time per backfill job, with a lock in Redis next to its confirmed chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, job_id_for
from producer.backfill.run_lock import LOCK_TTL_S, BackfillRunningError, lock_key
from producer.backfill.state import BackfillState
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.errors import exit_code

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(redis_url, model="test/run-lock", worker_wait_s=None) as embedding_client:
        yield embedding_client


def test_a_second_run_of_the_same_backfill_is_refused_with_who_holds_it(
    client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "one"}) + "\n")
    options = BackfillOptions(corpus, "docs", state_dir=tmp_path / "state")
    job_id = job_id_for(options, client.model)
    first = BackfillState.open(client, job_id, options, 1)
    try:
        with pytest.raises(BackfillRunningError, match="already running") as caught:
            BackfillState.open(client, job_id, options, 1)
        assert "pid" in str(caught.value) and exit_code(caught.value) == 75
        with broker_client(client.app) as redis:
            assert 0 < redis.ttl(lock_key(job_id)) <= LOCK_TTL_S  # a run that dies frees it on its own
    finally:
        first.finish()
    second = BackfillState.open(client, job_id, options, 1)  # free again once the first one ended
    second.finish()
