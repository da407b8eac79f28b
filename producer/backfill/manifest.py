"""The sync manifest: per collection, the ids syncs wrote and the content hash each was written with.

A SQLite file kept between runs next to the checkpoints. Its ids let a sync find the rows a new
file lacks without scanning Milvus; its hashes let a rerun leave unchanged documents out of the
queue altogether. The hashes are trusted only while the collection carries the manifest's
generation (a collection property written when a complete sync ends, cleared when a run starts):
otherwise they are forgotten and each chunk is checked against Milvus as without a manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from producer.backfill.idset import IdSet
from producer.protocol.content import content_hash
from producer.protocol.documents import Document

_LOOKUP_BATCH = 500  # bound parameters per SELECT (SQLite's limit is 999 on old builds)
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, hash TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class SyncManifest:
    """The ids that backfills of one collection may have written, with the hash each was confirmed with.

    After a complete sync it holds exactly the file's ids; a failed or partial run only adds the
    ids it read (they may have been written), so a later complete sync still deletes them. A
    hash is NULL where the stored content is not known.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    @classmethod
    def for_collection(cls, state_dir: Path, milvus_uri: str, collection: str) -> SyncManifest:
        """Return the manifest of ``collection`` at ``milvus_uri``, under ``state_dir``."""
        key = hashlib.sha256(f"{milvus_uri}\0{collection}".encode()).hexdigest()[:16]
        return cls(state_dir / f"{collection}-{key}.v2.sqlite")

    def exists(self) -> bool:
        """Whether an earlier sync left this manifest."""
        return self.path.is_file()

    # -- the generation: which collection state the hashes describe --------------------------------

    def generation(self) -> str | None:
        """Return the generation sealed by the last complete sync (None: hashes not to be trusted)."""
        if not self.exists():
            return None
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return None if row is None else str(row[0])

    def unseal(self, *, forget_hashes: bool) -> None:
        """Drop the generation (a run is starting); ``forget_hashes`` also drops every recorded hash."""
        db = self._conn()
        with db:
            db.execute("DELETE FROM meta WHERE key = 'generation'")
            if forget_hashes:
                db.execute("UPDATE rows SET hash = NULL WHERE hash IS NOT NULL")

    def seal(self, generation: str) -> None:
        """Record ``generation``: the collection now holds exactly these ids with these hashes."""
        db = self._conn()
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (generation,))

    def counts(self) -> tuple[int, int]:
        """Return (ids, ids with a known hash)."""
        row = self._conn().execute("SELECT COUNT(*), COUNT(hash) FROM rows").fetchone()
        return int(row[0]), int(row[1])

    def sample(self, size: int) -> list[tuple[str, str]]:
        """Return up to ``size`` random (id, hash) pairs, to compare with what Milvus stores."""
        rows = self._conn().execute(
            "SELECT id, hash FROM rows WHERE hash IS NOT NULL ORDER BY random() LIMIT ?", (size,)
        )
        return [(str(doc_id), str(hash_hex)) for doc_id, hash_hex in rows]

    # -- hashes ------------------------------------------------------------------------------------

    def hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """Return the recorded hash of each of ``ids`` that has one."""
        found: dict[str, str] = {}
        db = self._conn()
        for start in range(0, len(ids), _LOOKUP_BATCH):
            part = list(ids[start : start + _LOOKUP_BATCH])
            marks = ",".join("?" * len(part))
            query = f"SELECT id, hash FROM rows WHERE hash IS NOT NULL AND id IN ({marks})"
            found.update((str(doc_id), str(hash_hex)) for doc_id, hash_hex in db.execute(query, part))
        return found

    def record(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record ids as stored with these hashes (a chunk was confirmed)."""
        db = self._conn()
        with db:
            db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", pairs)

    def forget(self, ids: Iterable[str]) -> None:
        """Forget ids (their rows were deleted)."""
        db = self._conn()
        with db:
            db.executemany("DELETE FROM rows WHERE id = ?", ((doc_id,) for doc_id in ids))

    # -- ids ---------------------------------------------------------------------------------------

    def add(self, seen: IdSet) -> None:
        """Remember the ids of ``seen`` as possibly written (hash unknown unless already recorded)."""
        with self._attached(seen) as db:
            db.execute("INSERT OR IGNORE INTO rows SELECT id, NULL FROM seen.ids")

    def missing(self, seen: IdSet, size: int) -> Iterator[list[str]]:
        """Yield, ``size`` at a time and sorted, the ids of this manifest that ``seen`` lacks."""
        with self._attached(seen) as db:
            cursor = db.execute("SELECT id FROM rows EXCEPT SELECT id FROM seen.ids ORDER BY 1")
            while rows := cursor.fetchmany(size):
                yield [row[0] for row in rows]

    def replace(self, seen: IdSet) -> None:
        """Make this manifest hold exactly the ids of ``seen`` (a complete sync), keeping their hashes."""
        with self._attached(seen) as db:
            db.execute("DELETE FROM rows WHERE id NOT IN (SELECT id FROM seen.ids)")
            db.execute("INSERT OR IGNORE INTO rows SELECT id, NULL FROM seen.ids")

    def close(self) -> None:
        """Close the database file."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")  # a chunk's commit is not an fsync
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        return self._db

    @contextlib.contextmanager
    def _attached(self, seen: IdSet) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("ATTACH DATABASE ? AS seen", (str(seen.path),))
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.execute("DETACH DATABASE seen")


@dataclass
class LocalHashes:
    """What a backfill run needs to skip unchanged documents locally and keep the manifest current.

    With ``trusted``, a document whose hash the manifest holds is counted unchanged without being
    sent; every confirmed chunk's hashes are recorded either way.
    """

    manifest: SyncManifest
    model_id: str
    trusted: bool
    fresh: bool = False
    """The collection did not exist when the run started: no row can be missing from the file."""

    def split(self, documents: Sequence[Document]) -> tuple[list[Document], list[tuple[str, str]], int]:
        """Return the documents to send, their (id, hash) pairs, and how many were left out as unchanged."""
        hashes = [content_hash(self.model_id, doc.text, doc.metadata) for doc in documents]
        recorded = self.manifest.hashes([doc.id for doc in documents]) if self.trusted else {}
        send = [i for i, doc in enumerate(documents) if recorded.get(doc.id) != hashes[i]]
        left_out = len({doc.id for doc in documents}) - len({documents[i].id for i in send})
        return [documents[i] for i in send], [(documents[i].id, hashes[i]) for i in send], left_out

    def confirmed(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Record a confirmed chunk's (id, hash) pairs."""
        self.manifest.record(pairs)
