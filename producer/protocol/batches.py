"""The coalesced-request message: several small requests in one task, each with its own id.

A client process merges the small requests its threads and asyncio tasks send close together
into one :class:`BatchRequest`; the worker validates and answers each :class:`BatchItem` on its
own (its result stored under its own id, as if it had been a task of its own) and then tells the
client process on its reply channel which ids are done (:func:`encode_notice`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgpack

from producer.errors import MessageDecodeError
from producer.protocol.messages import _fields, _single_argument, _typed, _unpack
from producer.protocol.names import KINDS, WIRE_VERSION, Kind

TASK_EMBED_BATCH: Final = "embedq.embed_batch"
REPLY_CHANNEL_PREFIX: Final = "embedq:reply:"


def reply_channel(client_id: str) -> str:
    """Return the pub/sub channel on which workers announce the results of one client process."""
    return REPLY_CHANNEL_PREFIX + client_id


@dataclass(frozen=True)
class BatchItem:
    """One caller's request inside a batch: its id, kind, texts and deadline (epoch s, or None)."""

    id: str
    kind: Kind
    texts: tuple[str, ...]
    deadline_s: float | None = None

    def encode(self) -> list[Any]:
        """Return the msgpack-safe form ``[id, kind, texts, deadline]``."""
        return [self.id, self.kind, list(self.texts), self.deadline_s]

    @classmethod
    def decode(cls, value: object, index: int) -> BatchItem:
        """Rebuild an item; raise MessageDecodeError naming ``items[index]`` if malformed."""
        what = f"BatchRequest.items[{index}]"
        if not isinstance(value, list) or len(value) != 4:
            raise MessageDecodeError(f"{what} must be [id, kind, texts, deadline]")
        item_id, kind, texts, deadline_s = value
        if not isinstance(item_id, str) or not item_id or len(item_id) > 255:
            raise MessageDecodeError(f"{what}.id must be a non-empty str of at most 255 characters")
        if kind not in KINDS:
            raise MessageDecodeError(f"{what}.kind must be one of {list(KINDS)}, got {kind!r}")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise MessageDecodeError(f"{what}.texts must be a list of str")
        if deadline_s is not None and (
            isinstance(deadline_s, bool)
            or not isinstance(deadline_s, int | float)
            or not math.isfinite(deadline_s)
        ):
            raise MessageDecodeError(f"{what}.deadline must be a number of seconds since the epoch or null")
        return cls(item_id, cast(Kind, kind), tuple(texts), None if deadline_s is None else float(deadline_s))


@dataclass(frozen=True)
class BatchRequest:
    """Small requests for one model, encoded together; results announced on ``reply_to`` (or not)."""

    model: str
    items: tuple[BatchItem, ...]
    reply_to: str | None = None

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task argument."""
        return {
            "v": WIRE_VERSION,
            "model": self.model,
            "items": [item.encode() for item in self.items],
            "reply_to": self.reply_to,
        }

    @classmethod
    def decode(cls, payload: object) -> BatchRequest:
        """Rebuild a batch from a task argument; raise MessageDecodeError if malformed."""
        what = "BatchRequest"
        fields = _fields(payload, what, frozenset({"model", "items", "reply_to"}))
        reply_to = fields["reply_to"]
        if reply_to is not None and not isinstance(reply_to, str):
            raise MessageDecodeError(f"{what}.reply_to must be str or null, got {type(reply_to).__name__}")
        items = _typed(fields, "items", list, what)
        if not items:
            raise MessageDecodeError(f"{what}.items is empty")
        decoded = tuple(BatchItem.decode(item, index) for index, item in enumerate(items))
        if len({item.id for item in decoded}) != len(decoded):
            raise MessageDecodeError(f"{what}.items repeat an id")
        return cls(_typed(fields, "model", str, what), decoded, reply_to)

    @classmethod
    def from_task_args(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> BatchRequest:
        """Decode the arguments of a batch task: exactly one positional request map."""
        return cls.decode(_single_argument(args, kwargs, "a batch task"))


def encode_notice(stored: Sequence[tuple[str, bytes]]) -> bytes:
    """Pack ``(id, stored result bytes)`` pairs into one reply-channel message."""
    return cast(bytes, msgpack.packb([WIRE_VERSION, [[item_id, raw] for item_id, raw in stored]]))


def decode_notice(raw: bytes) -> list[tuple[str, bytes]]:
    """Unpack a reply-channel message; raise MessageDecodeError if malformed."""
    value = _unpack(raw, "a reply notice")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or value[0] != WIRE_VERSION
        or not isinstance(value[1], list)
    ):
        raise MessageDecodeError("a reply notice must be [version, [[id, result], ...]]")
    pairs: list[tuple[str, bytes]] = []
    for pair in value[1]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise MessageDecodeError("a reply notice entry must be [id, result bytes]")
        pairs.append((pair[0], pair[1] if isinstance(pair[1], bytes) else str(pair[1]).encode()))
    return pairs
