"""The sync manifest: per collection, the ids syncs wrote and the content hash each was written with.

A SQLite file kept between runs next to the checkpoints. Its ids let a sync find the rows a new
file lacks without scanning Milvus; its hashes let a rerun leave unchanged documents out of the
queue altogether. The hashes are trusted only while the collection carries the manifest's
generation (a collection property written when a complete sync ends, cleared when a run starts):
otherwise they are forgotten and each chunk is checked against Milvus as without a manifest.
With each hash it keeps the digest of the JSONL line the document was read from
(``known_lines.py``), so a rerun need not even parse the lines that did not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from producer.backfill.idset import IdSet
from producer.protocol.content import content_hash
from producer.protocol.documents import Document

_CACHE_KIB = 32 * 1024  # SQLite's page cache: the lookups of a rerun stay in memory up to ~1M ids
_LOOKUP_BATCH = 500  # bound parameters per SELECT (SQLite's limit is 999 on old builds)
_SCHEMA = (
    # line: the digest of the line a hashed id was read from (NULL whenever hash is NULL).
    "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, hash TEXT, line BLOB) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_LINE_INDEX = "CREATE INDEX IF NOT EXISTS rows_line ON rows (line, id)"
Confirmed = tuple[str, str, bytes | None]
"""What a confirmed document leaves in the manifest: id, content hash, digest of its line (None: unknown)."""


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
        # v3: rows carry line digests, which an earlier version's inserts (two values) would refuse.
        return cls(state_dir / f"{collection}-{key}.v3.sqlite")

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
                db.execute("UPDATE rows SET hash = NULL, line = NULL WHERE hash IS NOT NULL")

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

    def record(self, confirmed: Iterable[Confirmed]) -> None:
        """Record ids as stored with these hashes, read from these lines (a chunk was confirmed).

        Not committed here but with the run's next other change or when the manifest is closed:
        during a run the collection carries no mark, so a run that dies loses nothing it needs
        (the next one trusts no hash), and one commit per chunk would rewrite the pages of the
        line index each time (random keys: seconds per 100,000 documents).
        """
        self._conn().executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)", confirmed)

    def record_lines(self, confirmed: Iterable[Confirmed]) -> None:
        """Record the lines of ids whose recorded hash they match (left out as unchanged; as ``record``)."""
        self._conn().executemany(
            "UPDATE rows SET line = ?3 WHERE id = ?1 AND hash = ?2",
            (item for item in confirmed if item[2] is not None),
        )

    def lines(self, digests: Sequence[bytes]) -> dict[bytes, str]:
        """Return the id recorded with each of ``digests`` that is known (its hash is known too)."""
        found: dict[bytes, str] = {}
        db = self._conn()
        for start in range(0, len(digests), _LOOKUP_BATCH):
            part = list(digests[start : start + _LOOKUP_BATCH])
            marks = ",".join("?" * len(part))
            found.update(db.execute(f"SELECT line, id FROM rows WHERE line IN ({marks})", part))
        return found

    def forget(self, ids: Iterable[str]) -> None:
        """Forget ids (their rows were deleted)."""
        db = self._conn()
        with db:
            db.executemany("DELETE FROM rows WHERE id = ?", ((doc_id,) for doc_id in ids))

    # -- ids ---------------------------------------------------------------------------------------

    def add(self, seen: IdSet) -> None:
        """Remember the ids of ``seen`` as possibly written (hash unknown unless already recorded)."""
        with self._attached(seen) as db:
            db.execute("INSERT OR IGNORE INTO rows (id) SELECT id FROM seen.ids")

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
            db.execute("INSERT OR IGNORE INTO rows (id) SELECT id FROM seen.ids")

    def close(self) -> None:
        """Close the database file."""
        if self._db is not None:
            self._db.commit()
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")  # a chunk's commit is not an fsync
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA cache_size={-_CACHE_KIB}")
            for statement in _SCHEMA:
                self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(rows)")}
            if "line" not in columns:  # a manifest of an earlier version: no line known yet
                self._db.execute("ALTER TABLE rows ADD COLUMN line BLOB")
            self._db.execute(_LINE_INDEX)
        return self._db

    @contextlib.contextmanager
    def _attached(self, seen: IdSet) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.commit()  # no ATTACH inside a transaction
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
    sent, and a JSONL line recorded with such a hash is not even parsed (``known_lines.py``);
    every confirmed chunk's hashes are recorded either way, with the digests of their lines.
    """

    manifest: SyncManifest
    model_id: str
    trusted: bool
    fresh: bool = False
    """The collection did not exist when the run started: no row can be missing from the file."""
    _lines: dict[str, bytes | None] = field(default_factory=dict)
    """Line digest of each document read but not yet split (None: the id came twice, the line is unclear)."""

    def known_lines(self, digests: Sequence[bytes]) -> dict[bytes, str]:
        """Return the id of each of ``digests`` whose line is recorded unchanged (none unless trusted)."""
        return self.manifest.lines(digests) if self.trusted else {}

    def parsed(self, doc_id: str, digest: bytes) -> None:
        """Note the line a document was parsed from (recorded with its hash once confirmed)."""
        self._lines[doc_id] = digest if doc_id not in self._lines else None

    def split(
        self, documents: Sequence[Document], unchanged: Sequence[str] = ()
    ) -> tuple[list[Document], list[Confirmed], int]:
        """Return the documents to send, what to record once they are confirmed, and how many were left out.

        ``unchanged``: ids of lines the reader found unchanged (left out, counted with the others).
        """
        hashes = [content_hash(self.model_id, doc.text, doc.metadata) for doc in documents]
        lines = [self._lines.pop(doc.id, None) for doc in documents]
        recorded = self.manifest.hashes([doc.id for doc in documents]) if self.trusted else {}
        send = [i for i, doc in enumerate(documents) if recorded.get(doc.id) != hashes[i]]
        if len(send) < len(documents):  # left out: their hash is recorded; record their line with it
            kept = set(range(len(documents))) - set(send)
            self.manifest.record_lines((documents[i].id, hashes[i], lines[i]) for i in sorted(kept))
        read = {doc.id for doc in documents}.union(unchanged)
        left_out = len(read) - len({documents[i].id for i in send})
        return [documents[i] for i in send], [(documents[i].id, hashes[i], lines[i]) for i in send], left_out

    def skip(self, documents: Sequence[Document]) -> None:
        """Forget the lines of documents that are not split (their chunk was done, or sending stopped)."""
        for doc in documents:
            self._lines.pop(doc.id, None)

    def confirmed(self, items: Sequence[Confirmed]) -> None:
        """Record a confirmed chunk's ids, hashes and line digests."""
        self.manifest.record(items)
