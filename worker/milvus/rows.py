"""The rows of one upsert: checked against the field limits, deduplicated by id, split by size."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from producer.errors import InvalidInputError, ModelMismatchError
from producer.limits import ID_MAX_BYTES, TEXT_MAX_BYTES, metadata_problem
from worker.milvus.schema import ID_FIELD, METADATA_FIELD, TEXT_FIELD, VECTOR_FIELD


def build_rows(
    ids: Sequence[str],
    texts: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    vectors: np.ndarray,
    *,
    collection: str,
    model_id: str,
    dim: int,
) -> Rows:
    """Validate one upsert request and keep its rows (the last occurrence of a repeated id wins)."""
    valid_ids = checked_ids(ids)
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D array (rows, dim), got shape {matrix.shape}")
    if matrix.shape[1] != dim:
        raise ModelMismatchError(
            f"vectors have dimension {matrix.shape[1]}, but collection {collection!r} holds "
            f"{dim}-dimensional vectors of model {model_id!r}: encode with that model or "
            "use another collection"
        )
    if not len(valid_ids) == len(texts) == len(metadata) == matrix.shape[0]:
        raise InvalidInputError(
            f"upsert needs one id, text, metadata and vector per row, got {len(valid_ids)} ids, "
            f"{len(texts)} texts, {len(metadata)} metadata and {matrix.shape[0]} vectors"
        )
    if not np.isfinite(matrix).all():
        raise InvalidInputError("vectors contain NaN or infinity: check the encoder output")
    last_row = {doc_id: row for row, doc_id in enumerate(valid_ids)}
    kept = sorted(last_row.values())
    sizes = [
        len(valid_ids[row])
        + checked_text(texts[row], row)
        + len(checked_metadata(metadata[row], row))
        + 4 * dim
        + 64
        for row in kept
    ]
    if len(kept) == len(valid_ids):
        return Rows(valid_ids, list(texts), list(metadata), matrix, sizes)
    return Rows(
        [valid_ids[row] for row in kept],
        [texts[row] for row in kept],
        [metadata[row] for row in kept],
        matrix[np.array(kept, dtype=np.intp)],
        sizes,
    )


@dataclass
class Rows:
    """Validated rows of one upsert, column by column, with each row's estimated request bytes."""

    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray
    sizes: list[int]

    def slice(self, start: int, end: int) -> Rows:
        """Return rows ``start`` to ``end`` (exclusive)."""
        return Rows(
            self.ids[start:end],
            self.texts[start:end],
            self.metadata[start:end],
            self.vectors[start:end],
            self.sizes[start:end],
        )

    def head(self, count: int) -> Rows:
        """Return the first ``count`` rows."""
        return self.slice(0, count)

    def batches(self, max_bytes: int) -> Iterator[Rows]:
        """Split into requests of at most ``max_bytes`` (estimated), at least one row each."""
        start, size = 0, 0
        for end, nbytes in enumerate(self.sizes):
            if end > start and size + nbytes > max_bytes:
                yield self.slice(start, end)
                start, size = end, 0
            size += nbytes
        yield self.slice(start, len(self.sizes))

    def as_dicts(self) -> list[dict[str, Any]]:
        """Return the rows as ``MilvusClient.upsert`` takes them."""
        return [
            {ID_FIELD: doc_id, VECTOR_FIELD: vector, TEXT_FIELD: text, METADATA_FIELD: meta}
            for doc_id, vector, text, meta in zip(
                self.ids, self.vectors, self.texts, self.metadata, strict=True
            )
        ]


def checked_ids(ids: Sequence[str]) -> list[str]:
    """Return the ids as a list; each must be a non-empty str within the id field's byte limit."""
    checked = list(ids)
    for position, doc_id in enumerate(checked):
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidInputError(f"id #{position} must be a non-empty str, got {doc_id!r}")
        if len(doc_id.encode("utf-8", "surrogatepass")) > ID_MAX_BYTES:
            raise InvalidInputError(
                f"id #{position} is longer than {ID_MAX_BYTES} bytes: shorten it, or leave it out so the "
                "id is derived from the text"
            )
    return checked


def checked_text(text: object, row: int) -> int:
    """Return the UTF-8 size of a row's text, which must fit the text field."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text #{row} must be a str, got {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > TEXT_MAX_BYTES:
        raise InvalidInputError(
            f"text #{row} is {size} bytes, over the {TEXT_MAX_BYTES}-byte limit of the text field: split it"
        )
    return size


def checked_metadata(meta: object, row: int) -> str:
    """Return a row's metadata as JSON; it must be a dict of plain JSON values."""
    if not isinstance(meta, dict):
        raise InvalidInputError(f"metadata #{row} must be a dict, got {type(meta).__name__}")
    problem = metadata_problem(meta)
    if problem is not None:
        raise InvalidInputError(f"metadata #{row}: {problem}")
    try:
        return json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"metadata #{row} is not JSON-serialisable ({exc}): use plain JSON values"
        ) from exc
