"""Long documents stored as passages: rows ``<id>#<k>`` (k from 0) whose metadata names their document.

Each passage row's metadata holds the user's metadata plus ``_parent`` (the document id),
``_passage`` (k) and ``_passages`` (how many passages the document has), so filters
(``metadata["_parent"] == "doc-7"``) and JSON output show them. With splitting on, every document
is stored as passages, a short one as the single row ``<id>#0``: the ids of a document depend only
on its passage count, which row ``#0`` records, so finding a document's rows (to replace or delete
them) is one primary-key lookup, never a scan of the JSON metadata.

Milvus groups search results only on a scalar field (Milvus Lite 3.2.2 refuses a JSON key: "type
JSON which is not supported for group_by"; the 2.3 server predates grouping), and a collection's
fields are fixed at creation; so the best passage per document is picked here, from a search
that fetches several hits per wanted document.

The naming rules, free of pymilvus, are in ``worker.milvus.passage_rows``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from producer.errors import SinkUnavailableError
from worker.milvus.content import HASH_KEY
from worker.milvus.passage_rows import (
    PARENT_KEY,
    PASSAGE_COUNT_KEY,
    StoredDocument,
    document_of,
    document_row_ids,
    passage_id,
)
from worker.milvus.schema import ID_FIELD, MAX_TOP_K, METADATA_FIELD
from worker.milvus.sync import ITERATOR_BATCH, LOOKUP_BATCH, count_rows, delete_ids, id_filter

if TYPE_CHECKING:
    from pymilvus import MilvusClient

PASSAGES_PROPERTY = "embedq.passages"
"""Collection property set to "1" once passages are written to it: documents and rows then differ."""
_ITERATOR_ATTEMPTS = 8
_ITERATOR_RETRY_S = 0.5
GROUP_FETCH_FACTOR = 8  # hits fetched per wanted document before grouping; widened when not enough


def stored_documents(
    client: MilvusClient, collection: str, document_ids: Sequence[str], *, timeout_s: float
) -> dict[str, StoredDocument]:
    """Return how each of ``document_ids`` that exists is stored (one query per 500 documents)."""
    found: dict[str, StoredDocument] = {}
    unique = list(dict.fromkeys(document_ids))
    step = LOOKUP_BATCH // 2
    for start in range(0, len(unique), step):
        part = unique[start : start + step]
        wanted = set(part)
        rows = client.query(
            collection,
            filter=id_filter([*part, *(passage_id(doc_id, 0) for doc_id in part)]),
            output_fields=[ID_FIELD, METADATA_FIELD],
            consistency_level="Strong",
            timeout=timeout_s,
        )
        for row in rows:
            row_id, metadata = str(row[ID_FIELD]), row.get(METADATA_FIELD) or {}
            parent, count, recorded = (metadata.get(key) for key in (PARENT_KEY, PASSAGE_COUNT_KEY, HASH_KEY))
            if isinstance(parent, str) and parent in wanted and row_id == passage_id(parent, 0):
                before = found.get(parent, StoredDocument())
                found[parent] = StoredDocument(
                    recorded if isinstance(recorded, str) else None,
                    count if isinstance(count, int) and count > 0 else 1,
                    before.plain_row,
                )
            if row_id in wanted:
                before = found.get(row_id, StoredDocument())
                found[row_id] = StoredDocument(before.content_hash, before.passages, plain_row=True)
    return found


def delete_documents(
    client: MilvusClient,
    collection: str,
    document_ids: Sequence[str],
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> int:
    """Delete documents with all their passages; return how many rows Milvus reports deleted."""
    deleted = 0
    for start in range(0, len(document_ids), LOOKUP_BATCH):
        part = list(document_ids[start : start + LOOKUP_BATCH])
        stored = stored_documents(client, collection, part, timeout_s=timeout_s)
        ids = document_row_ids(part, stored)
        for cut in range(0, len(ids), LOOKUP_BATCH):
            batch = ids[cut : cut + LOOKUP_BATCH]
            deleted += delete_ids(client, collection, batch, write_guard, timeout_s=timeout_s)
    return deleted


def has_passages(client: MilvusClient, collection: str, *, timeout_s: float) -> bool:
    """Return whether ``collection`` is marked as holding passages (a property: no scan of the rows).

    Asking the rows instead (``metadata["_parent"] >= ""``, limit 1) reads every row's JSON when
    there is none: about 6 s for 100,000 rows on Milvus Lite.
    """
    properties = client.describe_collection(collection, timeout=timeout_s).get("properties", {})
    return bool(properties.get(PASSAGES_PROPERTY) == "1")


def mark_passages(
    client: MilvusClient, collection: str, write_guard: AbstractContextManager[object], *, timeout_s: float
) -> None:
    """Mark ``collection`` as holding passages (before the first passage is written)."""
    if has_passages(client, collection, timeout_s=timeout_s):
        return
    with write_guard:
        client.alter_collection_properties(collection, properties={PASSAGES_PROPERTY: "1"}, timeout=timeout_s)


def delete_rows_of_missing_documents(
    client: MilvusClient,
    collection: str,
    known: Callable[[list[str]], set[str]],
    delete: Callable[[list[str]], int],
    *,
    timeout_s: float,
) -> int:
    """Delete the rows whose document ``known`` does not hold; stream the collection once.

    ``known(ids)`` returns those of ``ids`` the source holds (an on-disk set). Memory stays at one
    page of rows. Used where rows and documents differ (passages), so ids cannot be compared directly.
    """
    deleted = 0
    for attempt in range(_ITERATOR_ATTEMPTS):
        expected = count_rows(client, collection, timeout_s=timeout_s)
        seen = 0
        iterator = client.query_iterator(
            collection, batch_size=ITERATOR_BATCH, output_fields=[ID_FIELD, METADATA_FIELD], timeout=timeout_s
        )
        try:
            while batch := iterator.next():
                seen += len(batch)
                deleted += _delete_page(list(batch), known, delete)
        finally:
            iterator.close()
        # The Milvus 2.3 server's iterator reads a snapshot that may miss the last seconds of
        # writes (pymilvus falls back to a client-side timestamp): read again until every row
        # counted before the pass was seen (rows already deleted are not read twice).
        if seen >= expected:
            return deleted
        time.sleep(_ITERATOR_RETRY_S * (attempt + 1))
    raise SinkUnavailableError(
        f"Milvus listed fewer rows of {collection!r} than it counts, {_ITERATOR_ATTEMPTS} times: "
        "run the command again in a minute"
    )


def _delete_page(
    batch: list[dict[str, Any]], known: Callable[[list[str]], set[str]], delete: Callable[[list[str]], int]
) -> int:
    """Delete the rows of one page whose document ``known`` lacks; return the count deleted."""
    documents = {
        str(row[ID_FIELD]): document_of(str(row[ID_FIELD]), row.get(METADATA_FIELD)) for row in batch
    }
    present = known(sorted(set(documents.values())))
    missing = [row_id for row_id, doc_id in documents.items() if doc_id not in present]
    return sum(
        delete(missing[start : start + LOOKUP_BATCH]) for start in range(0, len(missing), LOOKUP_BATCH)
    )


def grouped_search(
    search: Callable[[int], list[dict[str, Any]]], top_k: int
) -> list[tuple[str, dict[str, Any]]]:
    """Return up to ``top_k`` (document id, best raw hit) pairs, best first.

    ``search(limit)`` returns raw pymilvus hits (with the metadata field), most similar first. It is
    asked for several hits per wanted document, and again for more while too few documents came
    back and Milvus could still give more.
    """
    limit = min(MAX_TOP_K, top_k * GROUP_FETCH_FACTOR)
    while True:
        raw = search(limit)
        best: dict[str, dict[str, Any]] = {}
        for hit in raw:
            metadata = (hit.get("entity") or {}).get(METADATA_FIELD)
            best.setdefault(document_of(str(hit["id"]), metadata), hit)
        if len(best) >= top_k or len(raw) < limit or limit >= MAX_TOP_K:
            return list(best.items())[:top_k]
        limit = min(MAX_TOP_K, limit * 4)
