"""Large task arguments travel beside the task message, not inside it.

A bulk task's texts (4,096 paragraphs, about half a megabyte) inside a Celery message on Redis
are base64-encoded into a JSON envelope by the producer, decoded by the worker's parent process,
copied whole into the unacked hash for at-least-once, pickled to the pool process over a pipe,
and decoded again there: the parent process spent as much CPU on that as a pool process spent
encoding. So a request above :data:`INLINE_MAX_BYTES` of msgpack is stored as raw bytes under a
broker key of its own (:func:`payload_key` of the task id), and the message carries a
:class:`PayloadRef` to it: the pool process reads it straight from Redis, and deletes it once
the task's result (or failure) is stored.

Importing this module loads msgpack only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from producer.errors import MessageDecodeError
from producer.limits import MESSAGE_MAX_DEPTH, depth_exceeds
from producer.protocol.names import WIRE_VERSION

INLINE_MAX_BYTES: Final = 64 * 1024
"""A request whose msgpack is larger than this is stored beside its message."""
PAYLOAD_TTL_S: Final = 7 * 24 * 3600
"""How long a stored request waits for a worker before Redis expires it (a week of backlog)."""
PAYLOAD_KEY_PREFIX: Final = "embedq:payload:"
PAYLOAD_MAX_BYTES: Final = 512 * 1024 * 1024
"""Redis' own limit on a string value: nothing larger can have been stored."""


def payload_key(task_id: str) -> str:
    """Return the broker key holding the request of task ``task_id`` when it travels beside its message."""
    return PAYLOAD_KEY_PREFIX + task_id


@dataclass(frozen=True)
class PayloadRef:
    """The task argument that stands for a request stored under ``key`` (``size`` bytes of msgpack)."""

    key: str
    size: int

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task argument."""
        return {"v": WIRE_VERSION, "ref": self.key, "bytes": self.size}

    @classmethod
    def from_argument(cls, value: object) -> PayloadRef | None:
        """Return the reference if ``value`` is one (a map with a ``ref`` key), else None; raise if bad."""
        if not isinstance(value, Mapping) or "ref" not in value:
            return None
        if set(value) != {"v", "ref", "bytes"}:
            raise MessageDecodeError(
                f"PayloadRef has keys {sorted(map(str, value))}, expected ['bytes', 'ref', 'v']"
            )
        if value["v"] != WIRE_VERSION:
            raise MessageDecodeError(
                f"PayloadRef has wire version {value['v']!r}, this side speaks {WIRE_VERSION}: "
                "run the same embedq version on producers and workers"
            )
        key, size = value["ref"], value["bytes"]
        if not isinstance(key, str) or not key.startswith(PAYLOAD_KEY_PREFIX):
            raise MessageDecodeError(
                f"PayloadRef.ref must be a key starting {PAYLOAD_KEY_PREFIX!r}, got {key!r:.80}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= PAYLOAD_MAX_BYTES:
            raise MessageDecodeError(f"PayloadRef.bytes must be a positive int, got {size!r:.40}")
        return cls(key=key, size=size)


def pack_payload(payload: Mapping[str, Any]) -> bytes:
    """Return a request's msgpack bytes, as the worker's :func:`unpack_payload` reads them."""
    raw: bytes = msgpack.packb(payload, use_bin_type=True)
    return raw


def unpack_payload(raw: bytes, ref: PayloadRef) -> object:
    """Decode the stored bytes of ``ref``; raise MessageDecodeError if they are not a sane request."""
    if len(raw) != ref.size:
        raise MessageDecodeError(
            f"the request stored under {ref.key} holds {len(raw)} bytes, its task says {ref.size}"
        )
    try:
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError) as exc:  # msgpack's ExtraData, StackError, ... are ValueErrors
        raise MessageDecodeError(f"the request stored under {ref.key} is not valid msgpack: {exc}") from exc
    if depth_exceeds(payload, MESSAGE_MAX_DEPTH):
        raise MessageDecodeError(
            f"the request stored under {ref.key} nests deeper than {MESSAGE_MAX_DEPTH} levels"
        )
    return payload
