"""A backfill kept in step with its collection through the sync manifest.

Before a run, the manifest is checked against the collection: its hashes are trusted only if
the collection carries the mark the last complete sync sealed (generation, ids, and on Milvus
Lite the write count of its write lock), still holds that many rows (a server: one count; Lite:
no write since, as a count scans the collection there, over a second per 100,000 rows), and a
random sample of the recorded hashes matches what Milvus stores. The
mark is then blanked, so a run that stops half-way leaves nothing to trust. A trusted manifest
leaves unchanged documents out of the queue and names the rows to delete; an untrusted one
forgets its hashes, and each chunk's hashes and the missing ids are read from Milvus instead.
A run that ends complete with every manifest id hashed and as many rows as ids seals a new mark.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from producer.errors import EmbedqError
from producer.settings import Settings
from worker.cli.deletes import delete_missing, milvus_session, open_milvus

if TYPE_CHECKING:
    from producer.backfill import BackfillOptions, BackfillProgress, BackfillSummary
    from producer.backfill.manifest import LocalHashes, SyncManifest
    from producer.client import EmbeddingClient
    from worker.milvus.aliases import MilvusAccess

SAMPLE_CHECKED = 1000
"""Recorded hashes compared with Milvus before a manifest is trusted (one query)."""


def sync_backfill(
    settings: Settings,
    client: EmbeddingClient,
    options: BackfillOptions,
    manifest: SyncManifest,
    *,
    delete: bool,
    on_progress: Callable[[BackfillProgress], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> tuple[BackfillSummary, int | None]:
    """Run a backfill with ``manifest``; with ``delete``, delete the rows the file lacks (None: not safe)."""
    from producer.backfill import run_backfill
    from producer.backfill.idset import SeenIds

    try:
        with SeenIds() as seen:
            hashes = start_sync(settings, options.collection, manifest, client.model)
            # Passages: rows are <id>#<k>, which document hashes do not describe; Milvus decides.
            passages = options.split is not None
            hashes.trusted = hashes.trusted and not passages
            notices = {} if on_notice is None else {"on_notice": on_notice}
            summary = run_backfill(
                client, options, on_progress=on_progress, seen=seen, hashes=hashes, **notices
            )
            deleted = None
            if delete:
                deleted = delete_missing(
                    settings, options.collection, summary, seen, manifest, hashes.trusted, fresh=hashes.fresh
                )
            else:
                manifest.add(seen.ids)
            if summary.complete and summary.failed == 0 and not passages:
                # The collection matched the manifest at the start (trusted), or every row the file
                # lacks was deleted: with no other writer meanwhile, it holds the manifest's ids now.
                known = hashes.trusted or deleted is not None
                try:
                    with milvus_session(settings):
                        seal(settings, options.collection, manifest, count=not known)
                except EmbedqError as exc:  # the run is done; the next one checks every chunk instead
                    logging.getLogger(__name__).warning("sync manifest not sealed: %s", exc)
    finally:
        manifest.close()
    return summary, deleted


def start_sync(settings: Settings, collection: str, manifest: SyncManifest, model_id: str) -> LocalHashes:
    """Check ``manifest`` against ``collection``, blank the collection's mark, return the run's hashes."""
    from producer.backfill.manifest import LocalHashes
    from worker.milvus.catalog import resolve
    from worker.milvus.connection import milvus_errors
    from worker.milvus.sync import set_sync_mark, sync_mark

    trusted = False
    with milvus_session(settings):
        access = open_milvus(settings)
        try:
            with milvus_errors(f"read the sync mark of {collection!r}"):
                physical = resolve(access.client, collection, timeout_s=access.timeout_s)
                if physical is not None:
                    mark = sync_mark(access.client, physical, timeout_s=access.timeout_s)
                    trusted = bool(mark) and _matches(access, physical, manifest, mark)
                    if mark:
                        set_sync_mark(
                            access.client, physical, "", _uncounted(access), timeout_s=access.timeout_s
                        )
        finally:
            access.close()
    manifest.unseal(forget_hashes=not trusted)
    return LocalHashes(manifest, model_id, trusted, fresh=physical is None)


def clear_sync_mark(settings: Settings, collection: str) -> None:
    """Blank ``collection``'s sync mark (a write no manifest records is about to happen)."""
    from worker.milvus.catalog import resolve
    from worker.milvus.connection import milvus_errors
    from worker.milvus.sync import set_sync_mark, sync_mark

    with milvus_session(settings):
        access = open_milvus(settings)
        try:
            with milvus_errors(f"clear the sync mark of {collection!r}"):
                physical = resolve(access.client, collection, timeout_s=access.timeout_s)
                if physical is not None and sync_mark(access.client, physical, timeout_s=access.timeout_s):
                    set_sync_mark(access.client, physical, "", _uncounted(access), timeout_s=access.timeout_s)
        finally:
            access.close()


def _matches(access: MilvusAccess, physical: str, manifest: SyncManifest, mark: str) -> bool:
    """Whether the collection is as the manifest's last seal left it (see the module docstring)."""
    from worker.milvus.sync import count_rows, stored_hashes

    generation = manifest.generation()
    ids, hashed = manifest.counts()
    if generation is None or hashed != ids or mark != _mark(generation, ids, _writes(access)):
        return False
    # Milvus Lite: the write count of its lock file stands for the row count (a scan there).
    if _writes(access) is None and count_rows(access.client, physical, timeout_s=access.timeout_s) != ids:
        return False
    sample = manifest.sample(SAMPLE_CHECKED)
    stored = stored_hashes(
        access.client, physical, [doc_id for doc_id, _ in sample], timeout_s=access.timeout_s
    )
    return all(stored.get(doc_id) == hash_hex for doc_id, hash_hex in sample)


def _mark(generation: str, ids: int, writes: int | None) -> str:
    return f"{generation}:{ids}" if writes is None else f"{generation}:{ids}:{writes}"


def _writes(access: MilvusAccess) -> int | None:
    """Return the writes counted by a Lite database's write lock; None for a Milvus server."""
    from worker.milvus.lite_server import LiteWriteLock

    guard = access.write_guard
    return guard.writes() if isinstance(guard, LiteWriteLock) else None


def _uncounted(access: MilvusAccess) -> AbstractContextManager[object]:
    """Return the write guard for the sync mark itself (not a write to the rows: not counted)."""
    from worker.milvus.lite_server import LiteWriteLock

    guard = access.write_guard
    return guard.uncounted() if isinstance(guard, LiteWriteLock) else guard


def seal(settings: Settings, collection: str, manifest: SyncManifest, *, count: bool = True) -> bool:
    """Seal a new generation if the collection holds exactly the manifest's ids, all hashed.

    ``count``: check that the collection holds as many rows as the manifest ids first (a count is
    a scan on Milvus Lite, about a second per 50,000 rows: skipped where the run already knows).
    """
    from worker.milvus.catalog import resolve
    from worker.milvus.connection import milvus_errors
    from worker.milvus.sync import count_rows, set_sync_mark

    ids, hashed = manifest.counts()
    if hashed != ids or ids == 0:
        return False
    access = open_milvus(settings)
    try:
        with milvus_errors(f"seal the sync mark of {collection!r}"):
            physical = resolve(access.client, collection, timeout_s=access.timeout_s)
            if physical is None:
                return False
            if count and count_rows(access.client, physical, timeout_s=access.timeout_s) != ids:
                return False
            generation = uuid.uuid4().hex
            manifest.seal(generation)
            mark = _mark(generation, ids, _writes(access))
            set_sync_mark(access.client, physical, mark, _uncounted(access), timeout_s=access.timeout_s)
    finally:
        access.close()
    return True
