"""Keeping a collection in step with its source: recorded hashes by id, streamed ids, deletes.

Every row written by an upsert task records its content hash (``worker.milvus.content``), so a
later backfill of the same documents can tell, per chunk and with one query, which rows are
unchanged and need neither encoding nor writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from worker.milvus.content import HASH_KEY
from worker.milvus.schema import ID_FIELD, METADATA_FIELD

if TYPE_CHECKING:
    from pymilvus import MilvusClient

LOOKUP_BATCH = 1000  # ids per query: one filter expression stays well under Milvus' limits
ITERATOR_BATCH = 16384  # the largest page Milvus allows; Lite scans the collection once per page
MISSING_PAGE = 16384


def id_filter(ids: Iterable[str]) -> str:
    """Return the filter expression matching rows whose id is in ``ids``."""
    # JSON string literals parse as Milvus string literals (pymilvus would not escape quotes).
    return f"{ID_FIELD} in [{', '.join(json.dumps(i, ensure_ascii=False) for i in ids)}]"


def stored_hashes(
    client: MilvusClient, collection: str, ids: Sequence[str], *, timeout_s: float
) -> dict[str, str]:
    """Return the recorded content hash of each id in ``ids`` that exists (one query per 1000 ids)."""
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), LOOKUP_BATCH):
        rows = client.query(
            collection,
            filter=id_filter(unique[start : start + LOOKUP_BATCH]),
            output_fields=[ID_FIELD, METADATA_FIELD],
            # Session: this client's own writes are seen; rows written earlier by others are long
            # visible, and a row missed would only be written again (Strong waits on every query).
            consistency_level="Session",
            timeout=timeout_s,
        )
        for row in rows:
            recorded = (row.get(METADATA_FIELD) or {}).get(HASH_KEY)
            if isinstance(recorded, str):
                found[str(row[ID_FIELD])] = recorded
    return found


def iterate_rows(
    client: MilvusClient,
    collection: str,
    output_fields: Sequence[str],
    *,
    filter_expr: str = "",
    batch_size: int = ITERATOR_BATCH,
    timeout_s: float,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the rows of ``collection`` in batches, streamed with a query iterator (bounded memory)."""
    iterator = client.query_iterator(
        collection,
        batch_size=batch_size,
        filter=filter_expr,
        output_fields=list(output_fields),
        timeout=timeout_s,
    )
    try:
        while batch := iterator.next():
            yield list(batch)
    finally:
        iterator.close()


def delete_missing_ids(
    client: MilvusClient,
    collection: str,
    sorted_ids: Iterable[list[str]],
    delete: Callable[[list[str]], int],
    *,
    timeout_s: float,
) -> int:
    """Delete the rows whose ids are not among ``sorted_ids`` (batches in ascending order); return the count.

    The id space is cut into ranges at the batches' first ids (Milvus, like SQLite and Python,
    orders strings by their UTF-8 bytes). Each range's stored ids are read in one query and
    compared with its batch; a range holding a page or more of ids is asked instead for the ids
    not in its batch (``id not in [...]``), page by page. Memory stays at one batch and one page.
    No ids at all deletes nothing: an empty source is more likely a mistake than a wish to empty
    the collection.
    """
    deleted = 0
    batches = iter(sorted_ids)
    current = next(batches, None)
    lower: str | None = None
    while current:
        following = next(batches, None)
        upper = following[0] if following else None
        bounds = [] if lower is None else [f"{ID_FIELD} >= {json.dumps(lower, ensure_ascii=False)}"]
        if upper is not None:
            bounds.append(f"{ID_FIELD} < {json.dumps(upper, ensure_ascii=False)}")
        in_range = " and ".join(bounds) or f'{ID_FIELD} != ""'
        stored = _ids(client, collection, in_range, timeout_s)
        if len(stored) < MISSING_PAGE:
            present = set(current)
            missing = [doc_id for doc_id in stored if doc_id not in present]
            deleted += delete(missing) if missing else 0
        else:
            listed = ", ".join(json.dumps(doc_id, ensure_ascii=False) for doc_id in current)
            not_listed = f"{in_range} and {ID_FIELD} not in [{listed}]"
            while missing := _ids(client, collection, not_listed, timeout_s):
                deleted += delete(missing)
                if len(missing) < MISSING_PAGE:
                    break
        lower, current = upper, following
    return deleted


def _ids(client: MilvusClient, collection: str, expression: str, timeout_s: float) -> list[str]:
    rows = client.query(
        collection,
        filter=expression,
        output_fields=[ID_FIELD],
        limit=MISSING_PAGE,
        consistency_level="Strong",
        timeout=timeout_s,
    )
    return [str(row[ID_FIELD]) for row in rows]


def count_rows(client: MilvusClient, collection: str, *, timeout_s: float) -> int:
    """Return the exact row count (strong consistency), without loading or checking the collection."""
    rows = client.query(
        collection, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=timeout_s
    )
    return int(rows[0]["count(*)"])


def delete_ids(
    client: MilvusClient,
    collection: str,
    ids: Sequence[str],
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> int:
    """Delete rows by id under ``write_guard``; return how many Milvus reports deleted (Lite and server)."""
    if not ids:
        return 0
    with write_guard:
        result = client.delete(collection, filter=id_filter(ids), timeout=timeout_s)
    # Milvus Lite returns the list of deleted ids, a Milvus server {"delete_count": n}.
    return int(result["delete_count"]) if isinstance(result, dict) else len(result)


SYNC_PROPERTY = "embedq.sync"
"""Collection property ``<generation>:<rows>`` written when a complete sync ends, blanked when a run starts:
a sync manifest's hashes describe the collection only while it carries the manifest's generation."""


def sync_mark(client: MilvusClient, collection: str, *, timeout_s: float) -> str:
    """Return the sync mark the physical ``collection`` carries ("" if none)."""
    properties = client.describe_collection(collection, timeout=timeout_s).get("properties") or {}
    return str(properties.get(SYNC_PROPERTY, ""))


def set_sync_mark(
    client: MilvusClient,
    collection: str,
    mark: str,
    write_guard: AbstractContextManager[object],
    *,
    timeout_s: float,
) -> None:
    """Record ``mark`` on the physical ``collection`` ("" clears it; Milvus 2.3 cannot drop a property)."""
    with write_guard:
        client.alter_collection_properties(collection, properties={SYNC_PROPERTY: mark}, timeout=timeout_s)
