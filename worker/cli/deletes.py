"""Deleting the rows a synced file no longer holds, after a complete read only, with bounded memory."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from producer.settings import Settings

if TYPE_CHECKING:
    from producer.backfill import BackfillSummary
    from producer.backfill.idset import SeenIds
    from producer.backfill.manifest import SyncManifest
    from worker.milvus.aliases import MilvusAccess

SYNC_DIR = Path(".embedq/sync")
DELETE_BATCH = 1000
Command = Callable[[argparse.Namespace, Settings], int]
ID_RANGE_BATCH = 8_000  # file ids per id range: its stored ids fit one page of 16,384 unless many are gone


@contextlib.contextmanager
def milvus_session(settings: Settings) -> Iterator[None]:
    """Share the Lite server of a Lite URI for this command; the last command using it stops it."""
    from worker.local.cluster import shared_lite_server
    from worker.milvus.lite_server import is_lite_path

    if not is_lite_path(settings.milvus_uri):
        yield
        return
    with shared_lite_server(Path(settings.milvus_uri).expanduser().resolve()):
        yield


def in_milvus_session(command: Command) -> Command:
    """Run a subcommand inside ``milvus_session`` (so a Lite server it starts also stops)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        with milvus_session(settings):
            return command(args, settings)

    return run


def open_milvus(settings: Settings) -> MilvusAccess:
    """Connect to EMBEDQ_MILVUS_URI (a Lite path through the shared Lite server)."""
    from worker.milvus.aliases import open_access

    # pymilvus' query iterator warns on every Lite iteration that it uses a client-side timestamp.
    logging.getLogger("pymilvus").setLevel(logging.ERROR)

    return open_access(settings.milvus_uri, settings.milvus_token)


def manifest_for(settings: Settings, collection: str) -> SyncManifest:
    """Return the sync manifest of ``collection`` at EMBEDQ_MILVUS_URI (a Lite path made absolute)."""
    from producer.backfill.manifest import SyncManifest
    from worker.milvus.lite_server import is_lite_path

    uri = settings.milvus_uri
    if is_lite_path(uri):
        uri = str(Path(uri).expanduser().resolve())
    return SyncManifest.for_collection(SYNC_DIR, uri, collection)


def delete_missing(
    settings: Settings,
    collection: str,
    summary: BackfillSummary,
    seen: SeenIds,
    manifest: SyncManifest | None,
    manifest_trusted: bool = False,
    *,
    fresh: bool = False,
    by_row: bool = False,
) -> int | None:
    """Delete the rows of ``collection`` whose ids the backfill's file did not hold; None if unsafe.

    Only after a complete read: every record read, none rejected, every chunk confirmed. With a
    trusted manifest (``worker.cli.sync``: the collection still carries the manifest's mark), the
    ids to delete are the manifest's ids the file lacks (two sorted sets on disk, no scan of
    Milvus); otherwise the collection's ids are read range by range. The manifest then holds the
    file's ids (after a failed run: also the ids it read, which may have been written).
    ``fresh``: the collection did not exist before this backfill, so no row can be missing.
    In a collection of passages, documents are compared (a row's document is its ``_parent``),
    unless ``by_row``: the file lists rows, passages included (a reindex's dump of a collection).
    """
    if not (summary.complete and seen.complete and summary.failed == 0):
        if manifest is not None:
            manifest.add(seen.ids)
        return None
    deleted = 0
    if not fresh:
        with milvus_session(settings):
            trusted = manifest if manifest_trusted else None
            deleted = _delete_missing(settings, collection, seen, trusted, by_row)
    if manifest is not None:
        manifest.replace(seen.ids)
    return deleted


def _delete_missing(
    settings: Settings, collection: str, seen: SeenIds, manifest: SyncManifest | None, by_row: bool
) -> int:
    from worker.milvus.catalog import collection_model
    from worker.milvus.connection import milvus_errors
    from worker.milvus.passages import delete_documents, delete_rows_of_missing_documents, has_passages
    from worker.milvus.sync import count_rows, delete_ids, delete_missing_ids

    access = open_milvus(settings)
    try:
        physical, _, _ = collection_model(access.client, collection)
        timeout_s = access.timeout_s

        def delete(ids: list[str]) -> int:
            return delete_ids(access.client, physical, ids, access.write_guard, timeout_s=timeout_s)

        with milvus_errors(f"delete the ids missing from {collection!r}"):
            if not by_row and has_passages(access.client, physical, timeout_s=timeout_s):
                # Rows are passages <id>#<k>: documents are compared, not row ids.
                if manifest is not None:
                    return sum(
                        delete_documents(
                            access.client, physical, batch, access.write_guard, timeout_s=timeout_s
                        )
                        for batch in manifest.missing(seen.ids, DELETE_BATCH)
                    )
                return delete_rows_of_missing_documents(
                    access.client, physical, seen.ids.known, delete, timeout_s=timeout_s
                )
            if manifest is not None:
                return sum(delete(batch) for batch in manifest.missing(seen.ids, DELETE_BATCH))
            # Every id of the file is stored now: as many rows as ids means none is missing.
            if count_rows(access.client, physical, timeout_s=timeout_s) <= len(seen.ids):
                return 0
            return delete_missing_ids(
                access.client, physical, seen.ids.batches(ID_RANGE_BATCH), delete, timeout_s=timeout_s
            )
    finally:
        access.close()
