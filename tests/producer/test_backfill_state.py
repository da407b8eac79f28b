"""A backfill's confirmed chunks in Redis: each publish adds only what changed; old state still resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, ChunkRecord, job_id_for
from producer.backfill.done_chunks import RECORD, done_key, pack, unpack
from producer.backfill.state import BackfillState, load_progress
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.errors import ConfigError

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(redis_url, model="test/backfill-state", worker_wait_s=None) as embedding_client:
        yield embedding_client


def _options(tmp_path: Path, state_dir: str = "state") -> BackfillOptions:
    corpus = tmp_path / "c.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(10)))
    return BackfillOptions(corpus, "docs", chunk_size=1, state_dir=tmp_path / state_dir)


def _publish(state: BackfillState, status: str = "running") -> None:
    state._last_publish = 0.0  # the next progress() publishes, whatever the throttle says
    state.progress(status, 0, 0, 0, 0.0, [])


def test_each_publish_appends_only_the_chunks_confirmed_since_the_last(
    client: EmbeddingClient, tmp_path: Path
) -> None:
    options = _options(tmp_path)
    job_id = job_id_for(options, client.model)
    state = BackfillState.open(client, job_id, options, 10)
    try:
        with broker_client(client.app) as redis:
            for index in range(3):
                state.confirm(ChunkRecord(index, 1, 0))
            _publish(state)
            assert redis.strlen(done_key(job_id)) == 3 * RECORD.size
            state.confirm(ChunkRecord(3, 0, 1))
            _publish(state)
            _publish(state)  # nothing new: nothing appended
            assert unpack(redis.get(done_key(job_id)), job_id) == [
                *(ChunkRecord(i, 1, 0) for i in range(3)),
                ChunkRecord(3, 0, 1),
            ]
            assert redis.ttl(done_key(job_id)) > 0
            assert not redis.hexists(f"embedq:backfill:{job_id}", "chunks")
    finally:
        state.finish()
    saved = load_progress(client, job_id)
    assert saved is not None and saved["chunks_done"] == 4
    # Another directory (no checkpoint file) resumes from Redis alone, and republishes nothing.
    again = BackfillState.open(client, job_id, _options(tmp_path, "elsewhere"), 10)
    try:
        assert again.confirmed(3) == ChunkRecord(3, 0, 1) and again.confirmed(4) is None
        _publish(again)
        with broker_client(client.app) as redis:
            assert redis.strlen(done_key(job_id)) == 4 * RECORD.size
    finally:
        again.finish()


def test_a_job_saved_in_the_old_format_resumes_and_moves_to_the_records(
    client: EmbeddingClient, tmp_path: Path
) -> None:
    options = _options(tmp_path)
    job_id = job_id_for(options, client.model)
    with broker_client(client.app) as redis:  # what the previous version published
        redis.hset(f"embedq:backfill:{job_id}", mapping={"chunks": json.dumps([[0, 1, 0], [2, 0, 1]])})
    state = BackfillState.open(client, job_id, options, 10)
    try:
        assert state.confirmed(0) == ChunkRecord(0, 1, 0) and state.confirmed(2) == ChunkRecord(2, 0, 1)
        assert state.confirmed(1) is None
        state.confirm(ChunkRecord(1, 1, 0))
        _publish(state)
    finally:
        state.finish()
    with broker_client(client.app) as redis:
        assert not redis.hexists(f"embedq:backfill:{job_id}", "chunks")
        assert sorted(unpack(redis.get(done_key(job_id)), job_id), key=lambda r: r.index) == [
            ChunkRecord(0, 1, 0),
            ChunkRecord(1, 1, 0),
            ChunkRecord(2, 0, 1),
        ]


def test_records_that_are_not_whole_are_refused_with_the_fix() -> None:
    raw = pack([ChunkRecord(5, 1000, 0)])
    assert unpack(raw, "job") == [ChunkRecord(5, 1000, 0)]
    with pytest.raises(ConfigError, match="delete that key"):
        unpack(raw[:-1], "job")
