"""The request and result messages producers and workers exchange.

Messages are small frozen dataclasses with explicit ``encode()`` (to a msgpack-safe dict) and
``decode()`` (validating schema and types, raising :class:`MessageDecodeError`). Vectors travel
as raw little-endian float32 bytes, never as lists of floats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgpack
import numpy as np

from producer.errors import MessageDecodeError
from producer.protocol.names import KINDS, VECTOR_DTYPE, WIRE_VERSION, Kind
from producer.protocol.vectors_apart import ApartVectors


def _unpack(raw: bytes, what: str) -> object:
    try:
        return msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError) as exc:
        raise MessageDecodeError(f"{what} is not valid msgpack: {exc}") from exc


def _fields(
    payload: object, what: str, names: frozenset[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    """Check that ``payload`` has exactly the keys ``names`` (plus any of ``optional``) and our version."""
    if not isinstance(payload, Mapping):
        raise MessageDecodeError(f"{what} must be a map, got {type(payload).__name__}")
    keys = set(payload) - optional
    if keys != names | {"v"}:
        missing = sorted(map(str, (names | {"v"}) - keys))
        unknown = sorted(map(str, keys - names - {"v"}))
        raise MessageDecodeError(f"{what} has missing keys {missing} and unknown keys {unknown}")
    if payload["v"] != WIRE_VERSION:
        raise MessageDecodeError(
            f"{what} has wire version {payload['v']!r}, this side speaks {WIRE_VERSION}: "
            "run the same embedq version on producers and workers"
        )
    return payload


def _single_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str) -> object:
    """Return the one positional argument every embedq task takes."""
    if len(args) != 1 or kwargs:
        raise MessageDecodeError(
            f"{what} takes one positional request, got {len(args)} positional and "
            f"keyword arguments {sorted(kwargs)}"
        )
    return args[0]


def _typed(payload: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = payload[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageDecodeError(f"{what}.{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class EmbedRequest:
    """A batch of texts to embed with one model; ``kind`` is ``"document"`` or ``"query"``."""

    model: str
    kind: Kind
    texts: tuple[str, ...]
    vectors_apart: bool = False
    """The producer reads vectors stored apart from the result record (see protocol.vectors_apart)."""

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task argument."""
        record = {"v": WIRE_VERSION, "model": self.model, "kind": self.kind, "texts": list(self.texts)}
        if self.vectors_apart:  # only when asked: a request without it is read by older workers
            record["vectors_apart"] = True
        return record

    @classmethod
    def decode(cls, payload: object) -> EmbedRequest:
        """Rebuild a request from a task argument; raise MessageDecodeError if malformed."""
        fields = _fields(
            payload, "EmbedRequest", frozenset({"model", "kind", "texts"}), frozenset({"vectors_apart"})
        )
        apart = fields.get("vectors_apart", False)
        if type(apart) is not bool:
            raise MessageDecodeError(f"EmbedRequest.vectors_apart must be bool, got {type(apart).__name__}")
        model = _typed(fields, "model", str, "EmbedRequest")
        kind = _typed(fields, "kind", str, "EmbedRequest")
        if kind not in KINDS:
            raise MessageDecodeError(f"EmbedRequest.kind must be one of {list(KINDS)}, got {kind!r}")
        texts = _typed(fields, "texts", list, "EmbedRequest")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                kind_name = type(text).__name__
                raise MessageDecodeError(f"EmbedRequest.texts[{index}] must be str, got {kind_name}")
        return cls(model=model, kind=kind, texts=tuple(texts), vectors_apart=apart)

    @classmethod
    def from_task_args(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> EmbedRequest:
        """Decode the arguments of an embed task: exactly one positional request map."""
        return cls.decode(_single_argument(args, kwargs, "an embed task"))


_VECTOR_NP_DTYPE: Final = np.dtype(VECTOR_DTYPE)


@dataclass(frozen=True)
class EmbedResult:
    """The vectors of one request: ``count`` rows of ``dim`` little-endian float32 as raw bytes."""

    model: str
    dim: int
    count: int
    vectors: bytes
    dtype: str = VECTOR_DTYPE
    tokens: tuple[int, ...] | None = None
    """Tokens the encoder pooled per text (None from workers that do not report them)."""

    def __post_init__(self) -> None:
        if self.tokens is not None and len(self.tokens) != self.count:
            raise MessageDecodeError(f"EmbedResult has {len(self.tokens)} token counts for {self.count} rows")
        if self.dtype != VECTOR_DTYPE:
            raise MessageDecodeError(f"EmbedResult.dtype must be {VECTOR_DTYPE!r}, got {self.dtype!r}")
        if self.dim < 1 or self.count < 0:
            raise MessageDecodeError(f"EmbedResult has dim {self.dim} and count {self.count}")
        expected = self.count * self.dim * 4
        if len(self.vectors) != expected:
            raise MessageDecodeError(
                f"EmbedResult.vectors holds {len(self.vectors)} bytes, expected {expected} "
                f"for {self.count} x {self.dim} float32"
            )

    @staticmethod
    def fast_array(payload: object, model: str) -> tuple[np.ndarray, tuple[int, ...] | None] | None:
        """Return ``(vectors, tokens)`` of a well-formed result of ``model``, or None to take :meth:`decode`.

        The checks of :meth:`decode` and ``__post_init__`` without building the dataclass: the
        path of every answered query. None means "anything unusual": the caller decodes in full,
        which names the problem.
        """
        if type(payload) is not dict or not 6 <= len(payload) <= 7:
            return None
        try:
            dim, count, raw = payload["dim"], payload["count"], payload["vectors"]
            version, its_model, dtype = payload["v"], payload["model"], payload["dtype"]
        except KeyError:
            return None
        tokens = payload.get("tokens")
        if (
            (tokens is None and len(payload) == 7)  # a key of another version
            or version != WIRE_VERSION
            or its_model != model
            or dtype != VECTOR_DTYPE
            or type(dim) is not int
            or type(count) is not int
            or type(raw) is not bytes
            or dim < 1
            or count < 0
            or len(raw) != count * dim * 4
        ):
            return None
        if tokens is not None:
            if type(tokens) is not list or len(tokens) != count:
                return None
            if tokens and (not set(map(type, tokens)) <= {int} or min(tokens) < 0):
                return None
            tokens = tuple(tokens)
        if _VECTOR_NP_DTYPE.isnative:  # one call: a writable array over a copy of the bytes
            return np.ndarray((count, dim), _VECTOR_NP_DTYPE, buffer=bytearray(raw)), tokens
        return np.frombuffer(raw, dtype=_VECTOR_NP_DTYPE).reshape(count, dim).astype(np.float32), tokens

    @classmethod
    def from_array(cls, model: str, vectors: np.ndarray, tokens: Sequence[int] | None = None) -> EmbedResult:
        """Pack an (n, dim) array as little-endian float32 bytes, with optional per-text token counts."""
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
        raw = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes()
        counts = None if tokens is None else tuple(map(int, tokens))
        return cls(
            model=model, dim=int(vectors.shape[1]), count=int(vectors.shape[0]), vectors=raw, tokens=counts
        )

    def view(self) -> np.ndarray:
        """Return the vectors as a read-only (count, dim) array over the message bytes (no copy)."""
        return np.frombuffer(self.vectors, dtype=VECTOR_DTYPE).reshape(self.count, self.dim)

    def to_array(self) -> np.ndarray:
        """Return the vectors as a writable native float32 array of shape (count, dim)."""
        return self.view().astype(np.float32)

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task result."""
        return self.encoded(self.model, self.dim, self.count, self.vectors, self.tokens)

    @staticmethod
    def encoded(
        model: str, dim: int, count: int, vectors: bytes | ApartVectors, tokens: Sequence[int] | None
    ) -> dict[str, Any]:
        """Return the msgpack-safe task result of parts the caller made consistent (no checks).

        For the worker's hot path: a batch answers each of its requests with one of these.
        ``ApartVectors`` in place of the bytes are stored under a key of their own by the result
        backend, which names the key in the record (see protocol.vectors_apart).
        """
        record = {"v": WIRE_VERSION, "model": model, "dim": dim, "count": count, "dtype": VECTOR_DTYPE}
        record["vectors"] = vectors
        if tokens is not None:  # optional, so results stay readable by producers of the previous release
            record["tokens"] = list(tokens)
        return record

    @classmethod
    def decode(cls, payload: object) -> EmbedResult:
        """Rebuild a result from a task result; raise MessageDecodeError if malformed."""
        what = "EmbedResult"
        names = frozenset({"model", "dim", "count", "dtype", "vectors"})
        has_tokens = isinstance(payload, Mapping) and "tokens" in payload
        fields = _fields(payload, what, names | {"tokens"} if has_tokens else names)
        tokens = None
        if has_tokens:
            raw_tokens = _typed(fields, "tokens", list, what)
            # Two passes in C: a 100,000-text job's counts are checked in about a millisecond.
            if raw_tokens and (not set(map(type, raw_tokens)) <= {int} or min(raw_tokens) < 0):
                raise MessageDecodeError(f"{what}.tokens must be a list of non-negative ints")
            tokens = tuple(raw_tokens)
        return cls(
            model=_typed(fields, "model", str, what),
            dim=_typed(fields, "dim", int, what),
            count=_typed(fields, "count", int, what),
            dtype=_typed(fields, "dtype", str, what),
            vectors=_typed(fields, "vectors", bytes, what),
            tokens=tokens,
        )


@dataclass(frozen=True)
class WorkerPresence:
    """What a live worker advertises under :func:`presence_key`: its model and vector dimension."""

    model: str
    dim: int
    max_length: int | None = None
    """Tokens the model reads of a text (None: no limit, or a worker that does not say)."""

    def encode(self) -> bytes:
        """Return the msgpack bytes stored in the presence key."""
        record: dict[str, Any] = {"v": WIRE_VERSION, "model": self.model, "dim": self.dim}
        if self.max_length is not None:
            record["max_length"] = self.max_length
        return cast(bytes, msgpack.packb(record))

    @classmethod
    def decode(cls, raw: bytes) -> WorkerPresence:
        """Rebuild a presence record; raise MessageDecodeError if malformed."""
        what = "WorkerPresence"
        fields = _fields(
            _unpack(raw, what), what, frozenset({"model", "dim"}), optional=frozenset({"max_length"})
        )
        dim = _typed(fields, "dim", int, what)
        if dim < 1:
            raise MessageDecodeError(f"WorkerPresence.dim must be positive, got {dim}")
        max_length = _typed(fields, "max_length", int, what) if "max_length" in fields else None
        return cls(model=_typed(fields, "model", str, what), dim=dim, max_length=max_length)


@dataclass(frozen=True)
class JobManifest:
    """The ordered task ids of a job split into several tasks, stored under :func:`job_key`."""

    task_ids: tuple[str, ...]

    def encode(self) -> bytes:
        """Return the msgpack bytes stored under the job key."""
        return cast(bytes, msgpack.packb({"v": WIRE_VERSION, "task_ids": list(self.task_ids)}))

    @classmethod
    def decode(cls, raw: bytes) -> JobManifest:
        """Rebuild a manifest; raise MessageDecodeError if malformed."""
        fields = _fields(_unpack(raw, "JobManifest"), "JobManifest", frozenset({"task_ids"}))
        task_ids = _typed(fields, "task_ids", list, "JobManifest")
        if not task_ids or not all(isinstance(task_id, str) and task_id for task_id in task_ids):
            raise MessageDecodeError("JobManifest.task_ids must be a non-empty list of task id strings")
        return cls(tuple(task_ids))


def _string_list(fields: Mapping[str, Any], key: str, what: str) -> list[str]:
    values: list[str] = _typed(fields, key, list, what)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise MessageDecodeError(f"{what}.{key}[{index}] must be str, got {type(value).__name__}")
    return values


@dataclass(frozen=True)
class UpsertRequest:
    """Documents to embed with one model and upsert into a Milvus collection, id by id."""

    model: str
    collection: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...]
    skip_unchanged: bool = False
    """Rows whose stored content hash matches are neither encoded nor written (sent only when true,
    so workers of earlier versions keep accepting requests that do not ask for it)."""
    split: tuple[int, int] | None = None
    """(max tokens, overlap tokens): store each document as passages ``<id>#<k>`` (sent only when set)."""

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.texts) == len(self.metadata):
            raise MessageDecodeError(
                f"UpsertRequest has {len(self.ids)} ids, {len(self.texts)} texts and "
                f"{len(self.metadata)} metadata maps: they must pair up"
            )
        if self.split is not None and not (
            len(self.split) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in self.split)
            and 0 <= self.split[1] < self.split[0]
        ):
            raise MessageDecodeError(
                f"UpsertRequest.split must be [max tokens, overlap] with 0 <= overlap < max tokens, "
                f"got {self.split!r}"
            )

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task argument."""
        encoded = {
            "v": WIRE_VERSION,
            "model": self.model,
            "collection": self.collection,
            "ids": list(self.ids),
            "texts": list(self.texts),
            "metadata": list(self.metadata),
        }
        if self.skip_unchanged:
            encoded["skip_unchanged"] = True
        if self.split is not None:
            encoded["split"] = list(self.split)
        return encoded

    @classmethod
    def decode(cls, payload: object) -> UpsertRequest:
        """Rebuild a request from a task argument; raise MessageDecodeError if malformed."""
        what = "UpsertRequest"
        fields = _fields(
            payload,
            what,
            frozenset({"model", "collection", "ids", "texts", "metadata"}),
            optional=frozenset({"skip_unchanged", "split"}),
        )
        metadata = _typed(fields, "metadata", list, what)
        for index, value in enumerate(metadata):
            if not isinstance(value, dict):
                raise MessageDecodeError(
                    f"{what}.metadata[{index}] must be a map, got {type(value).__name__}"
                )
        return cls(
            model=_typed(fields, "model", str, what),
            collection=_typed(fields, "collection", str, what),
            ids=tuple(_string_list(fields, "ids", what)),
            texts=tuple(_string_list(fields, "texts", what)),
            metadata=tuple(metadata),
            skip_unchanged="skip_unchanged" in fields and _typed(fields, "skip_unchanged", bool, what),
            split=tuple(_typed(fields, "split", list, what)) if "split" in fields else None,
        )

    @classmethod
    def from_task_args(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> UpsertRequest:
        """Decode the arguments of an upsert task: exactly one positional request map."""
        return cls.decode(_single_argument(args, kwargs, "an upsert task"))


@dataclass(frozen=True)
class UpsertResult:
    """What an upsert task wrote: rows acknowledged by Milvus (distinct ids) into ``collection``."""

    model: str
    collection: str
    written: int
    unchanged: int = 0
    """Rows skipped because their stored content hash matched (sent only when not zero)."""
    truncated: int = 0
    """Documents written cut at the model's ``max_tokens`` (sent only when not zero)."""
    max_tokens: int | None = None
    """The model's max_length in tokens (sent only with ``truncated``)."""
    passages: int = 0
    """Passage rows written for the documents written, when split (sent only when not zero)."""
    milvus: str | None = None
    """Where the worker writes (its Milvus URI without credentials; a Lite path made absolute).
    Sent only in answer to a request with no documents (a target probe), which older producers never send."""
    collection_uuid: str | None = None
    """The collection's identity (``""``: it does not exist); sent with ``milvus``."""

    def encode(self) -> dict[str, Any]:
        """Return the msgpack-safe task result."""
        encoded: dict[str, Any] = {
            "v": WIRE_VERSION,
            "model": self.model,
            "collection": self.collection,
            "written": self.written,
        }
        for key in ("unchanged", "truncated", "max_tokens", "passages"):
            value = getattr(self, key)
            if value:
                encoded[key] = value
        if self.milvus is not None:
            encoded["milvus"] = self.milvus
            encoded["collection_uuid"] = self.collection_uuid or ""
        return encoded

    @classmethod
    def decode(cls, payload: object) -> UpsertResult:
        """Rebuild a result from a task result; raise MessageDecodeError if malformed."""
        what = "UpsertResult"
        counts = ("unchanged", "truncated", "max_tokens", "passages")
        fields = _fields(
            payload,
            what,
            frozenset({"model", "collection", "written"}),
            optional=frozenset({*counts, "milvus", "collection_uuid"}),
        )
        written = _typed(fields, "written", int, what)
        optional = {key: _typed(fields, key, int, what) for key in counts if key in fields}
        if written < 0 or any(value < 0 for value in optional.values()):
            raise MessageDecodeError(f"{what} counts must not be negative, got {written} and {optional}")
        target = {
            key: _typed(fields, key, str, what) for key in ("milvus", "collection_uuid") if key in fields
        }
        return cls(
            model=_typed(fields, "model", str, what),
            collection=_typed(fields, "collection", str, what),
            written=written,
            **optional,
            **target,
        )
