"""Keeping a collection in step with its source: recorded hashes by id, streamed ids, deletes.

Every row written by an upsert task records its content hash (``worker.milvus.content``), so a
later backfill of the same documents can tell, per chunk and with one query, which rows are
unchanged and need neither encoding nor writing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from worker.milvus.content import HASH_KEY
from worker.milvus.schema import ID_FIELD, METADATA_FIELD

if TYPE_CHECKING:
    from pymilvus import MilvusClient

LOOKUP_BATCH = 1000  # ids per query: one filter expression stays well under Milvus' limits
ITERATOR_BATCH = 16384  # the largest page Milvus allows; Lite scans the collection once per page


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
            consistency_level="Strong",
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


def ids_missing_from(
    client: MilvusClient,
    collection: str,
    known: Callable[[Sequence[str]], set[str]],
    *,
    timeout_s: float,
) -> Iterator[list[str]]:
    """Yield, batch by batch, the ids stored in ``collection`` that ``known`` does not report."""
    for batch in iterate_rows(client, collection, [ID_FIELD], timeout_s=timeout_s):
        ids = [str(row[ID_FIELD]) for row in batch]
        present = known(ids)
        missing = [doc_id for doc_id in ids if doc_id not in present]
        if missing:
            yield missing
