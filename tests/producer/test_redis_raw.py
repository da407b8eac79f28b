"""Values sent from and read into the caller's memory, against a real Redis-protocol server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from producer.errors import MessageDecodeError
from producer.redis_raw import execute_transaction, read_into


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def _vectors(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 256)).astype("<f4")


def test_a_memoryview_value_is_stored_as_its_bytes_in_one_transaction(client: redis.Redis) -> None:
    vectors = _vectors(1500, 1)
    replies = execute_transaction(
        client,
        [
            ("SET", "raw:vectors", memoryview(vectors.data).cast("B"), "EX", 60),
            ("SET", "raw:record", b"small", "EX", 30),
            ("DEL", "raw:gone"),
        ],
    )
    assert replies == [b"OK", b"OK", 0]
    assert client.get("raw:vectors") == vectors.tobytes()
    assert client.get("raw:record") == b"small"
    assert 30 < client.ttl("raw:vectors") <= 60
    client.delete("raw:vectors", "raw:record")


def test_a_refused_command_raises_and_leaves_the_connection_usable(client: redis.Redis) -> None:
    client.rpush("raw:list", b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        execute_transaction(client, [("SET", "raw:ok", b"1"), ("INCR", "raw:list")])
    assert client.get("raw:ok") == b"1"  # MULTI/EXEC runs the others: as a pipeline() does
    assert client.ping()
    client.delete("raw:list", "raw:ok")


def test_a_value_is_read_straight_into_the_callers_buffer(client: redis.Redis) -> None:
    vectors = _vectors(4096, 2)
    client.set("raw:in", vectors.tobytes())
    out = np.zeros((4096 + 10, 256), dtype="<f4")
    assert read_into(client, "raw:in", memoryview(out[5:4101].data).cast("B"))
    np.testing.assert_array_equal(out[5:4101], vectors)
    assert not out[:5].any() and not out[4101:].any()
    assert not read_into(client, "raw:missing", memoryview(bytearray(8)))
    client.delete("raw:in")


def test_a_value_of_another_size_or_type_is_refused_and_the_pool_still_works(client: redis.Redis) -> None:
    client.set("raw:short", b"12345")
    with pytest.raises(MessageDecodeError, match="holds 5 bytes, expected 8"):
        read_into(client, "raw:short", memoryview(bytearray(8)))
    client.rpush("raw:list", b"x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        read_into(client, "raw:list", memoryview(bytearray(8)))
    for _ in range(3):  # every pooled connection is clean: the next replies are the right ones
        assert client.get("raw:short") == b"12345"
        buffer = bytearray(5)
        assert read_into(client, "raw:short", memoryview(buffer)) and buffer == b"12345"
    client.delete("raw:short", "raw:list")
