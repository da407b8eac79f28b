"""A worker far from its broker says what that costs its bulk work, measured against a real delayed Redis."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer.settings import Settings
from tests.support.fakes import FakeEncoder
from worker.ports import free_port
from worker.queue.app import build_worker_app
from worker.queue.broker_checks import (
    FAR_BROKER_MS,
    BrokerDistanceNote,
    far_broker_note,
    note_broker_distance,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BULK = "embedq.org/fake.bulk"


@pytest.fixture
def far_redis_url(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """``redis_url`` through a proxy that adds 3 ms of round trip (tests.support.delay_proxy)."""
    server, _, database = redis_url.rpartition("/")
    control = tmp_path / "delay_ms"
    control.write_text("3")
    port = free_port()
    target_port = server.rsplit(":", 1)[1]
    argv = [sys.executable, "-m", "tests.support.delay_proxy", str(port), target_port, str(control)]
    proxy = subprocess.Popen(argv, cwd=REPO_ROOT)
    url = f"redis://127.0.0.1:{port}/{database}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proxy.kill()
        proxy.wait()


def _notes(url: str, queues: list[str] | None) -> list[tuple[int, str]]:
    said: list[tuple[int, str]] = []
    app = build_worker_app(Settings(broker_url=url), FakeEncoder("org/fake"), queues=queues)
    try:
        note_broker_distance(app, BULK, say=lambda level, message: said.append((level, message)))
    finally:
        app.close()
    return said


def test_a_far_worker_serving_queries_and_bulk_is_told_to_run_bulk_only(far_redis_url: str) -> None:
    ((_, note),) = _notes(far_redis_url, None)
    assert "ms away" in note and "--queues bulk" in note and "docs/SCALING.md" in note


def test_a_bulk_only_or_query_only_far_worker_is_not_warned(far_redis_url: str) -> None:
    assert _notes(far_redis_url, ["bulk"]) == []
    assert _notes(far_redis_url, ["interactive"]) == []


def test_a_near_worker_is_not_warned(redis_url: str) -> None:
    assert _notes(redis_url, None) == []


def test_the_note_goes_through_the_workers_logging_and_the_step_is_registered(
    far_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Through logging, not print: a worker with --log-format json keeps one JSON object per line.
    app = build_worker_app(Settings(broker_url=far_redis_url), FakeEncoder("org/fake"))
    try:
        assert any(issubclass(step, BrokerDistanceNote) for step in app.steps["consumer"])
        with caplog.at_level(logging.WARNING, logger="worker.queue.broker_checks"):
            note_broker_distance(app, BULK)
    finally:
        app.close()
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "--queues bulk" in caplog.records[0].getMessage()


def test_an_unreachable_broker_is_left_to_celery() -> None:
    assert _notes(f"redis://127.0.0.1:{free_port()}/0", None) == []


def test_the_note_names_the_distance_and_the_cost() -> None:
    note = far_broker_note(2.0, ["embedq.org/fake", BULK], BULK)
    assert note is not None and "2.0 ms away" in note and "10 ms of round trips" in note
    assert far_broker_note(FAR_BROKER_MS / 2, ["embedq.org/fake", BULK], BULK) is None
    assert far_broker_note(2.0, [BULK], BULK) is None
