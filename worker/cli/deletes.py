"""Deleting the rows a synced file no longer holds, after a complete read only, with bounded memory."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from producer.settings import Settings

if TYPE_CHECKING:
    from producer.backfill import BackfillSummary
    from producer.backfill.idset import SeenIds
    from worker.milvus.aliases import MilvusAccess

DELETE_BATCH = 1000


def open_milvus(settings: Settings) -> MilvusAccess:
    """Connect to EMBEDQ_MILVUS_URI (a Lite path through the shared Lite server)."""
    from worker.milvus.aliases import open_access

    # pymilvus' query iterator warns on every Lite iteration that it uses a client-side timestamp.
    logging.getLogger("pymilvus").setLevel(logging.ERROR)

    return open_access(settings.milvus_uri, settings.milvus_token)


def delete_missing(
    settings: Settings, collection: str, summary: BackfillSummary, seen: SeenIds
) -> int | None:
    """Delete the rows of ``collection`` whose ids the backfill's file did not hold; None if unsafe.

    Only after a complete read: every record read, none rejected, every chunk confirmed.
    The ids found missing are kept on disk too, then deleted 1000 at a time.
    """
    from worker.milvus.aliases import errors
    from worker.milvus.catalog import collection_model
    from worker.milvus.sink import open_sink
    from worker.milvus.sync import ids_missing_from

    if not (summary.complete and seen.complete and summary.failed == 0):
        return None
    access = open_milvus(settings)
    missing = seen.missing_set()
    try:
        physical, model_id, dim = collection_model(access.client, collection)
        sink = open_sink(settings.milvus_uri, settings.milvus_token, physical, model_id, dim)
        # Every id of the file is stored now: as many rows as ids means none is missing (no scan).
        if sink.count() > len(seen.ids):
            with errors(f"read the ids of {collection!r}"):
                for batch in ids_missing_from(
                    access.client, physical, seen.ids.known, timeout_s=access.timeout_s
                ):
                    missing.add(batch)
    finally:
        access.close()
    deleted = 0
    try:
        for batch in missing.batches(DELETE_BATCH):
            deleted += sink.delete(batch)
    finally:
        sink.close()
        missing.close()
    return deleted
