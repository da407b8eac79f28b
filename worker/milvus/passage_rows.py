"""The rows of a document stored as passages: their ids ``<id>#<k>``, metadata, and leftovers.

No pymilvus here: the worker's tasks import these rules before any Milvus connection is needed
(queries and deletes are in ``worker.milvus.passages``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PARENT_KEY, PASSAGE_KEY, PASSAGE_COUNT_KEY = "_parent", "_passage", "_passages"
SPLIT_KEY = "_embedq_split"
"""Mixed into a split document's content hash only (never stored): the split parameters."""


def passage_id(document_id: str, index: int) -> str:
    """Return the row id of passage ``index`` of ``document_id``."""
    return f"{document_id}#{index}"


def passage_metadata(metadata: dict[str, Any], document_id: str, index: int, count: int) -> dict[str, Any]:
    """Return a passage row's metadata: the document's, plus its document id, place and count."""
    return {**metadata, PARENT_KEY: document_id, PASSAGE_KEY: index, PASSAGE_COUNT_KEY: count}


def split_hash_metadata(metadata: dict[str, Any], max_tokens: int, overlap_tokens: int) -> dict[str, Any]:
    """Return the metadata a split document's content hash is computed on (so new split options re-split)."""
    return {**metadata, SPLIT_KEY: [max_tokens, overlap_tokens]}


def document_of(row_id: str, metadata: dict[str, Any] | None) -> str:
    """Return the id of the document a row belongs to: its ``_parent``, else the row's own id."""
    parent = (metadata or {}).get(PARENT_KEY)
    return parent if isinstance(parent, str) else row_id


@dataclass(frozen=True)
class StoredDocument:
    """How a document is stored: row ``<id>#0``'s content hash and passage count, and a plain ``<id>`` row."""

    content_hash: str | None = None
    passages: int = 0
    plain_row: bool = False


def document_row_ids(document_ids: Iterable[str], stored: dict[str, StoredDocument]) -> list[str]:
    """Return every row id the documents have: their own ids and their stored passages."""
    ids: list[str] = []
    for doc_id in document_ids:
        known = stored.get(doc_id, StoredDocument())
        ids.extend([doc_id] if known.plain_row else [])
        ids.extend(passage_id(doc_id, k) for k in range(known.passages))
    return ids


def stale_row_ids(document_id: str, passages: int, stored: StoredDocument | None) -> list[str]:
    """Return the rows left over once ``document_id`` is stored as ``passages`` passages."""
    if stored is None:
        return []
    plain = [document_id] if stored.plain_row else []
    return plain + [passage_id(document_id, k) for k in range(passages, stored.passages)]
