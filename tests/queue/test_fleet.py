"""A worker refuses to join a queue whose live workers serve other files under its model name."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from producer.errors import ModelMismatchError
from producer.protocol.fleet import PoolPresence, pool_key, pool_set_key
from worker.queue.fleet import advertise_pool, check_fleet_model, started_later, withdraw_pool

QUEUES = ("embedq.m", "embedq.m.bulk")
OURS, THEIRS = "0" * 64, "f" * 64


def _advertise(redis: fakeredis.FakeRedis, hostname: str, fingerprint: str | None, ttl_ms: int) -> None:
    for queue in QUEUES:
        redis.set(pool_key(queue, hostname), PoolPresence(hostname, 2, 2, fingerprint).encode(), px=ttl_ms)
        redis.sadd(pool_set_key(queue), hostname)


def test_a_live_worker_with_other_files_is_named_in_the_refusal(fake_redis: fakeredis.FakeRedis) -> None:
    _advertise(fake_redis, "w1@a/1", THEIRS, 6000)
    stop = threading.Event()

    def keep_refreshing() -> None:  # what a live worker's presence step does
        while not stop.wait(0.1):
            _advertise(fake_redis, "w1@a/1", THEIRS, 6000)

    refresher = threading.Thread(target=keep_refreshing)
    refresher.start()
    try:
        started = time.monotonic()
        with pytest.raises(ModelMismatchError) as refused:
            check_fleet_model(fake_redis, QUEUES, "m", OURS, poll_s=0.05)
        assert time.monotonic() - started < 3  # refused once the key is seen refreshed, not after the TTL
    finally:
        stop.set()
        refresher.join()
    assert "w1@a/1" in str(refused.value) and "ffffffffffff" in str(refused.value)
    assert "000000000000" in str(refused.value) and THEIRS not in str(refused.value)


def test_a_stopped_workers_record_is_waited_out_and_same_files_or_old_versions_pass(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    _advertise(fake_redis, "gone@a/1", THEIRS, 300)  # stopped without withdrawing: expires
    _advertise(fake_redis, "same@b/2", OURS, 6000)
    _advertise(fake_redis, "old@c/3", None, 6000)  # an earlier version advertises no fingerprint
    check_fleet_model(fake_redis, QUEUES, "m", OURS, poll_s=0.05)


def test_a_stopping_worker_withdraws_its_record(fake_redis: fakeredis.FakeRedis) -> None:
    advertise_pool(fake_redis, QUEUES, PoolPresence("w1@a/1", 2, 2, THEIRS))
    withdraw_pool(fake_redis, QUEUES, "w1@a/1")
    check_fleet_model(fake_redis, QUEUES, "m", OURS, wait_s=0)


def test_of_two_workers_that_both_passed_the_start_check_the_later_one_stops() -> None:
    earlier = {"k": PoolPresence("w1@a/1", 2, 2, THEIRS, started_at=100.0)}
    later = {"k": PoolPresence("w2@b/2", 2, 2, THEIRS, started_at=200.0)}
    assert started_later(earlier, 150.0, "w9@z/9")
    assert not started_later(later, 150.0, "w9@z/9")
    tie = {"k": PoolPresence("w1@a/1", 2, 2, THEIRS, started_at=150.0)}
    assert started_later(tie, 150.0, "w2@b/2") != started_later(
        {"k": PoolPresence("w2@b/2", 2, 2, OURS, started_at=150.0)}, 150.0, "w1@a/1"
    )
    record = PoolPresence("w1@a/1", 2, 2, THEIRS, started_at=1.5)
    assert PoolPresence.decode(record.encode()) == record
