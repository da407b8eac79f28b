"""A bulk task's vectors are stored as raw bytes under a key of their own, beside its result record.

Inside the result record, a bulk task's vectors (4 MB for 4,096 texts of a 256-dimension model)
were copied four times on the worker (``tobytes``, msgpack, the Redis client's command buffer
twice) and three times on the producer (the Redis reply, msgpack, the assembled array), each
copy into fresh memory: about as much CPU per 100,000 texts as the producer's whole share of the
queue path. Stored apart, the worker sends them straight from the encoder's array and the
producer reads them straight into the job's array (see :mod:`producer.redis_raw`).

The record keeps everything else (model, dim, count, dtype, token counts) and names the key in
``vectors_key``. The key is the task's (:func:`vectors_key`), written in the transaction that
stores the record and expiring a minute after it, so a record never names a key that expired
first; a rerun of the task (at-least-once) writes the same bytes under the same key.

A producer asks for it per request (``EmbedRequest.vectors_apart``), so a worker never answers
one that cannot read it; a worker does it only for results of at least :data:`APART_MIN_BYTES`
(queries keep their one round trip). Importing this module loads numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from producer.errors import MessageDecodeError
from producer.protocol.names import VECTOR_DTYPE

APART_MIN_BYTES: Final = 64 * 1024
"""Vectors of at least this many bytes (64 rows of a 256-dimension model) are stored apart."""
VECTORS_KEY_PREFIX: Final = "embedq:vectors:"
VECTORS_KEY_FIELD: Final = "vectors_key"
APART_TTL_MARGIN_S: Final = 60
"""The vectors outlive their record by this much, so a record never names an expired key."""


def vectors_key(task_id: str) -> str:
    """Return the result-backend key holding task ``task_id``'s vectors when they are stored apart."""
    return VECTORS_KEY_PREFIX + task_id


class ApartVectors:
    """A task's vectors on their way to the result backend, in the place of the record's bytes.

    Only the worker holds one: the backend writes ``array``'s memory under the task's key and puts
    the key in the record. Its repr is short, for Celery's "succeeded" log line.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.ascontiguousarray(array, dtype=VECTOR_DTYPE)

    @property
    def nbytes(self) -> int:
        """Size of the raw vectors."""
        return int(self.array.nbytes)

    def raw(self) -> memoryview:
        """Return the vectors' bytes without a copy."""
        return memoryview(self.array.data).cast("B")

    def __repr__(self) -> str:
        return f"<{self.array.shape[0]} vectors stored apart>"


def apart_key(record: object) -> tuple[str, int] | None:
    """Return (key, byte size) if ``record`` is a result whose vectors are stored apart, else None.

    Raise MessageDecodeError for a record that names a key but cannot be one of ours.
    """
    if type(record) is not dict or VECTORS_KEY_FIELD not in record:
        return None
    key, dim, count = record[VECTORS_KEY_FIELD], record.get("dim"), record.get("count")
    if not isinstance(key, str) or not key.startswith(VECTORS_KEY_PREFIX) or "vectors" in record:
        raise MessageDecodeError(f"EmbedResult.vectors_key must be a key starting {VECTORS_KEY_PREFIX!r}")
    if type(dim) is not int or type(count) is not int or dim < 1 or count < 0:
        raise MessageDecodeError(f"EmbedResult has dim {dim!r} and count {count!r}")
    return key, count * dim * 4


def with_vectors(record: Mapping[str, Any], raw: bytes) -> dict[str, Any]:
    """Return the record with the vectors read from its key in place of the key (an inline record)."""
    inline = {name: value for name, value in record.items() if name != VECTORS_KEY_FIELD}
    inline["vectors"] = raw
    return inline


def gone_error(task_id: str, key: str) -> MessageDecodeError:
    """Return the error for a result whose vectors are no longer in Redis."""
    return MessageDecodeError(
        f"the vectors of task {task_id} are no longer in Redis (key {key}): they expired with the result "
        "or Redis evicted them (set maxmemory-policy noeviction); send the request again"
    )
