"""`embedq reindex` killed half-way (SIGKILL) and run again: real workers, Redis, Milvus Lite and server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus.exceptions import MilvusException

from producer.protocol.content import HASH_KEY, content_hash
from producer.protocol.names import BUNDLED_MODEL_ID
from tests.support.models import build_model
from tests.support.workers import WorkerProcess, start_worker, stop_worker
from worker.milvus.aliases import MilvusAccess, adopt, open_access, physical_name
from worker.milvus.catalog import collection_model
from worker.milvus.lite_server import stop_lite_server
from worker.milvus.sink import open_sink

pytestmark = pytest.mark.integration

EMBEDQ = Path(sys.executable).parent / "embedq"
_DOCS = 1500


@pytest.fixture
def lite_db(milvus_target: str) -> Iterator[str]:
    """The test's Milvus: a Lite database (its shared server stopped after) or the session's server."""
    try:
        yield milvus_target
    finally:
        stop_lite_server(milvus_target)  # nothing to stop for a server URI


@pytest.fixture
def next_worker(redis_url: str, tmp_path: Path, lite_db: str) -> Iterator[WorkerProcess]:
    model = build_model(tmp_path / "next-model", dim=16, max_length=64)
    worker = start_worker(redis_url, tmp_path / "next-worker.log", str(model), milvus_uri=lite_db)
    try:
        yield worker
    finally:
        stop_worker(worker)


def _fill_old(uri: str, name: str) -> None:
    """An old-style collection of the bundled model (as a backfill makes it), adopted as an alias."""
    from worker.encoding.encoder import StaticEncoder

    texts = [f"note {n} on queues, vectors and search" for n in range(_DOCS)]
    sink = open_sink(uri, None, name, BUNDLED_MODEL_ID, 256)
    try:
        encoder = StaticEncoder.from_pretrained()
        for start in range(0, _DOCS, 1000):
            part = range(start, min(start + 1000, _DOCS))
            sink.upsert(
                [f"doc-{n}" for n in part],
                [texts[n] for n in part],
                [{"n": n} for n in part],
                encoder.encode([texts[n] for n in part]),
            )
    finally:
        sink.close()


def _reindex(worker: WorkerProcess, redis_url: str, uri: str, cwd: Path, name: str) -> subprocess.Popen[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EMBEDQ_")}
    env.update({"EMBEDQ_BROKER_URL": redis_url, "EMBEDQ_MILVUS_URI": uri})
    args = ["reindex", "--collection", name, "--model", worker.settings.model_id, "--chunk-size", "25"]
    return subprocess.Popen(
        [str(EMBEDQ), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _rows(access: MilvusAccess, collection: str) -> int:
    if not access.client.has_collection(collection):
        return 0
    try:  # a server's new collection is loaded when the alias moves, and only once it has its index
        access.client.load_collection(collection)
        rows = access.client.query(
            collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
    except MilvusException:
        return 0  # not indexed yet: nothing written
    return int(rows[0]["count(*)"])


def test_a_reindex_killed_half_way_is_finished_by_the_same_command_reusing_what_it_wrote(
    next_worker: WorkerProcess, redis_url: str, lite_db: str, tmp_path: Path
) -> None:
    name = f"docs_{uuid.uuid4().hex[:8]}"  # a server outlives the test
    _fill_old(lite_db, name)
    model_id = next_worker.settings.model_id
    target = physical_name(name, model_id)
    access = open_access(lite_db, None)
    try:
        old = adopt(access, name)
        assert old == physical_name(name, BUNDLED_MODEL_ID)

        first = _reindex(next_worker, redis_url, lite_db, tmp_path, name)
        deadline = time.monotonic() + 120
        while _rows(access, target) < 100:  # part of the new collection is written
            assert first.poll() is None, f"the reindex ended before it could be killed: {first.communicate()}"
            assert time.monotonic() < deadline, "the reindex wrote nothing in 120 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        partial = _rows(access, target)
        assert 0 < partial < _DOCS
        # The alias was not moved: searches still read the old collection, with the old model.
        assert collection_model(access.client, name)[:2] == (old, BUNDLED_MODEL_ID)

        second = _reindex(next_worker, redis_url, lite_db, tmp_path, name)
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err
        done = f"reindexed {name}: {_DOCS} rows of model {model_id} in {target} (was {old}; "
        assert out.startswith(done), out
        # What the killed command had written, and the chunks its queued tasks wrote after, are reused.
        reused = re.fullmatch(r"(\d+) were already written by an earlier attempt\)", out[len(done) :].strip())
        assert reused is not None and partial <= int(reused[1]) < _DOCS, out

        # The alias moved to the partial collection, now complete; every row is the new model's.
        assert collection_model(access.client, name) == (target, model_id, 16)
        assert access.client.has_collection(old)  # no --drop-old: the old one stays, untouched
        assert _rows(access, old) == _DOCS
        rows = access.client.query(
            target,
            filter='id != ""',
            output_fields=["text", "metadata"],
            consistency_level="Strong",
            limit=16384,
        )
        assert len(rows) == _DOCS
        assert all(
            row["metadata"][HASH_KEY] == content_hash(model_id, row["text"], {"n": row["metadata"]["n"]})
            for row in rows
        )
    finally:
        access.close()
