"""How many chunks a backfill keeps in flight: fixed, or two per live pool process, re-read."""

from __future__ import annotations

import fakeredis
import pytest

from producer.backfill.in_flight import (
    FALLBACK_IN_FLIGHT,
    MAX_AUTO_IN_FLIGHT,
    InFlightLimit,
    auto_limit,
    parse_in_flight,
)
from producer.backfill.model import BackfillOptions
from producer.errors import ConfigError
from producer.protocol.fleet import PoolPresence, live_pool_processes, pool_key, pool_set_key
from worker.queue.fleet import advertise_pool

QUEUE = "embedq.org/m.bulk"


def test_parse_in_flight_takes_auto_or_a_positive_number() -> None:
    assert parse_in_flight("auto") == "auto"
    assert parse_in_flight(" AUTO ") == "auto"
    assert parse_in_flight("12") == 12
    for bad in ("0", "-3", "many", "1.5"):
        with pytest.raises(ConfigError, match="'auto' or a positive whole number"):
            parse_in_flight(bad)


def test_options_default_to_auto_and_refuse_nonsense(tmp_path: object) -> None:
    assert BackfillOptions(tmp_path, "docs").max_in_flight == "auto"  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BackfillOptions(tmp_path, "docs", max_in_flight=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BackfillOptions(tmp_path, "docs", max_in_flight="lots")  # type: ignore[arg-type]


def _pools(*processes: int) -> list[PoolPresence]:
    return [PoolPresence(f"w{i}@h", count) for i, count in enumerate(processes)]


def test_auto_keeps_two_chunks_per_pool_process_with_a_fallback_and_a_ceiling() -> None:
    assert auto_limit([]) == FALLBACK_IN_FLIGHT
    assert auto_limit(_pools(1)) == 2
    assert auto_limit(_pools(2, 8, 10)) == 40
    assert auto_limit(_pools(10**6)) == MAX_AUTO_IN_FLIGHT


def test_a_worker_with_more_processes_than_cpus_gets_one_chunk_per_cpu() -> None:
    # A second chunk per CPU would run on an idle extra process, not wait (slower in bench_fleet).
    assert auto_limit([PoolPresence("w1@a", 4, cpus=2)]) == 2
    assert auto_limit([PoolPresence("w1@a", 4, cpus=2), PoolPresence("w2@b", 2, cpus=8)]) == 2 + 4
    assert auto_limit([PoolPresence("w1@a", 2, cpus=2)]) == 4


def test_auto_limit_follows_the_fleet_and_a_fixed_one_never_reads_it() -> None:
    fleet: list[list[PoolPresence]] = [[]]
    reads = []

    def read() -> list[PoolPresence]:
        reads.append(fleet[0])
        return fleet[0]

    limit = InFlightLimit("auto", read, reread_every_s=0.0)
    assert limit.current() == FALLBACK_IN_FLIGHT
    fleet[0] = _pools(20)
    assert limit.current() == 40 and limit.pool_processes == 20
    fleet[0] = _pools(2)
    assert limit.current() == 4
    fixed = InFlightLimit(7, read)
    reads.clear()
    assert fixed.current() == 7 and reads == []


def test_auto_limit_is_not_reread_on_every_chunk() -> None:
    calls = []
    limit = InFlightLimit("auto", lambda: calls.append(1) or _pools(3), reread_every_s=60.0)
    for _ in range(100):
        assert limit.current() == 6
    assert len(calls) == 1


def test_live_pool_processes_sum_live_workers_and_drop_expired_ones(fake_redis: fakeredis.FakeRedis) -> None:
    assert live_pool_processes(fake_redis, QUEUE) == 0
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w1@a", 2))
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w2@b", 4))
    advertise_pool(fake_redis, ["embedq.other.bulk"], PoolPresence("w3@c", 8))
    assert live_pool_processes(fake_redis, QUEUE) == 6
    assert 0 < fake_redis.ttl(pool_key(QUEUE, "w1@a")) <= 6
    fake_redis.delete(pool_key(QUEUE, "w2@b"))  # its TTL ran out: the worker died or lost the broker
    assert live_pool_processes(fake_redis, QUEUE) == 2
    assert fake_redis.smembers(pool_set_key(QUEUE)) == {b"w1@a"}


def test_a_worker_with_more_processes_than_cpus_counts_its_cpus(fake_redis: fakeredis.FakeRedis) -> None:
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w1@a", 4, cpus=2))
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w2@b", 2, cpus=8))
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w3@c", 3))  # an earlier version: no cpus
    assert live_pool_processes(fake_redis, QUEUE) == 2 + 2 + 3


def test_a_foreign_pool_value_is_not_counted(fake_redis: fakeredis.FakeRedis) -> None:
    advertise_pool(fake_redis, [QUEUE], PoolPresence("w1@a", 2))
    fake_redis.sadd(pool_set_key(QUEUE), "junk")
    fake_redis.set(pool_key(QUEUE, "junk"), b"\xc1not msgpack")
    assert live_pool_processes(fake_redis, QUEUE) == 2


def test_pool_presence_ignores_keys_a_later_version_adds() -> None:
    import msgpack

    raw = msgpack.packb({"hostname": "w@h", "processes": 3, "threads": 9})
    assert PoolPresence.decode(raw) == PoolPresence("w@h", 3)
    assert PoolPresence.decode(PoolPresence("w@h", 3).encode()) == PoolPresence("w@h", 3)
    assert PoolPresence.decode(PoolPresence("w@h", 3, 2).encode()) == PoolPresence("w@h", 3, 2)
