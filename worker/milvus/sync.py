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


def delete_missing_ids(
    client: MilvusClient,
    collection: str,
    sorted_ids: Iterable[list[str]],
    delete: Callable[[list[str]], int],
    *,
    timeout_s: float,
) -> int:
    """Delete the rows whose ids are not among ``sorted_ids`` (batches in ascending order); return the count.

    The id space is cut into ranges at the batches' first ids; each range is asked once for its
    stored ids that are not in its batch (``id >= a and id < b and id not in [...]``), so the
    answer holds only the missing ids and memory stays at one batch (Milvus, like SQLite and
    Python, orders strings by their UTF-8 bytes). No ids at all deletes nothing: an empty source
    is more likely a mistake than a wish to empty the collection.
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
        listed = ", ".join(json.dumps(doc_id, ensure_ascii=False) for doc_id in current)
        expression = " and ".join([*bounds, f"{ID_FIELD} not in [{listed}]"])
        while True:
            rows = client.query(
                collection,
                filter=expression,
                output_fields=[ID_FIELD],
                limit=MISSING_PAGE,
                consistency_level="Strong",
                timeout=timeout_s,
            )
            missing = [str(row[ID_FIELD]) for row in rows]
            if missing:
                deleted += delete(missing)
            if len(missing) < MISSING_PAGE:
                break
        lower, current = upper, following
    return deleted
