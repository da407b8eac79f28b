"""The upsert task's two encodings: whole documents (counting those cut at max_length), or passages.

With splitting, each changed document is cut into passages by the model's tokenizer and stored as
rows ``<id>#<k>`` (``worker.milvus.passages``). The order of writes keeps a retried or interrupted
chunk correct: passages ``#1..`` first, then the rows a document no longer has (a plain row, or
passages past its new count), and row ``#0`` last. Row ``#0`` carries the document's content hash,
so a document is "unchanged" only once all of its passages were written and its stale ones deleted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from producer.protocol.messages import UpsertRequest
from worker.encoding.splitting import SplitSpec
from worker.metrics.recording import encode_observed, observe_encode
from worker.milvus.content import content_hash
from worker.milvus.passage_rows import (
    PASSAGE_KEY,
    StoredDocument,
    passage_id,
    passage_metadata,
    split_hash_metadata,
    stale_row_ids,
)


@runtime_checkable
class TruncationCountingEncoder(Protocol):
    """An encoder that says which texts it cut at its max_length (worker.encoding.StaticEncoder)."""

    max_length: int | None

    def encode_with_truncation(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the vectors, the tokens pooled per text, and which texts were cut."""


class SplittingEncoder(Protocol):
    """An encoder that cuts texts into passages with its own tokenizer."""

    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 vectors of shape (len(texts), dim)."""

    def split(self, texts: Sequence[str], spec: SplitSpec) -> list[list[str]]:
        """Return each text's passages."""


class PassageSink(Protocol):
    """What the passage path needs of a collection (worker.milvus.sink.MilvusSink)."""

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any]],
        vectors: np.ndarray,
        hashes: Sequence[str] | None = None,
    ) -> int:
        """Write rows; return how many distinct ids were acknowledged."""

    def stored_documents(self, document_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """Return how each stored document is stored (hash and passages of row #0, a plain row)."""

    def delete_rows(self, ids: Sequence[str]) -> int:
        """Delete rows by exact id."""

    def mark_passages(self) -> None:
        """Record that the collection holds passages."""


def encode_counting(
    encoder: Any, model: str, texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Encode ``texts`` (recording the call); return vectors, tokens per text, and how many were cut."""
    if not isinstance(encoder, TruncationCountingEncoder):
        vectors, tokens = encode_observed(encoder, model, texts)
        return vectors, tokens, 0
    started = time.perf_counter()
    vectors, tokens, truncated = encoder.encode_with_truncation(texts)
    observe_encode(model, time.perf_counter() - started, len(texts))
    return vectors, tokens, int(truncated.sum())


@dataclass(frozen=True)
class PassageWrite:
    """What the passage path did: documents written and unchanged, passage rows written, tokens pooled."""

    documents_written: int
    documents_unchanged: int
    passages_written: int
    tokens: np.ndarray | None


def upsert_passages(
    encoder: SplittingEncoder, sink: PassageSink, request: UpsertRequest, texts: Sequence[str]
) -> PassageWrite:
    """Store each document of ``request`` as passages; leave unchanged ones (with skip_unchanged) alone."""
    if request.split is None:
        raise ValueError("upsert_passages needs a request with split set")
    spec = SplitSpec(*request.split)
    # A document repeated within the chunk: its last occurrence wins, as with plain upserts.
    last = {doc_id: index for index, doc_id in enumerate(request.ids)}
    order = sorted(last.values())
    hashes = {
        index: content_hash(
            encoder.model_id, texts[index], split_hash_metadata(request.metadata[index], *request.split)
        )
        for index in order
    }
    stored = sink.stored_documents([request.ids[index] for index in order])
    changed = [
        index
        for index in order
        if not request.skip_unchanged or _recorded_hash(stored.get(request.ids[index])) != hashes[index]
    ]
    if not changed:
        return PassageWrite(0, len(order), 0, None)
    passages = encoder.split([texts[index] for index in changed], spec)
    sink.mark_passages()
    ids: list[str] = []
    rows_texts: list[str] = []
    rows_metadata: list[dict[str, Any]] = []
    rows_hashes: list[str] = []
    stale: list[str] = []
    for index, pieces in zip(changed, passages, strict=True):
        doc_id = request.ids[index]
        for k, piece in enumerate(pieces):
            ids.append(passage_id(doc_id, k))
            rows_texts.append(piece)
            rows_metadata.append(passage_metadata(request.metadata[index], doc_id, k, len(pieces)))
            rows_hashes.append(hashes[index])
        stale += stale_row_ids(doc_id, len(pieces), stored.get(doc_id))
    vectors, tokens, _ = encode_counting(encoder, encoder.model_id, rows_texts)
    first = [row for row, metadata in enumerate(rows_metadata) if metadata[PASSAGE_KEY] == 0]
    rest = [row for row, metadata in enumerate(rows_metadata) if metadata[PASSAGE_KEY] != 0]

    def write(rows: list[int]) -> int:
        if not rows:
            return 0
        return sink.upsert(
            [ids[row] for row in rows],
            [rows_texts[row] for row in rows],
            [rows_metadata[row] for row in rows],
            vectors[rows],
            hashes=[rows_hashes[row] for row in rows],
        )

    written = write(rest)
    if stale:
        sink.delete_rows(stale)
    written += write(first)
    return PassageWrite(len(changed), len(order) - len(changed), written, tokens)


def _recorded_hash(stored: StoredDocument | None) -> str | None:
    return None if stored is None else stored.content_hash
