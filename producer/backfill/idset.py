"""Sets of document ids kept on disk (SQLite), so a 10-million-id corpus costs no memory to remember.

``SeenIds`` records the ids of a backfill's file as it is read, and knows whether the file was
read to its end without a rejected record: only then may rows missing from it be deleted.
``SyncManifest`` keeps, between runs, the ids that syncs of one collection may have written, so a
sync finds the ids to delete by comparing two sorted sets on disk instead of scanning Milvus.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from producer.backfill.readers import Rejected
from producer.protocol.documents import Document

_INSERT_BATCH = 10_000
_LOOKUP_BATCH = 500  # bound parameters per SELECT (SQLite's limit is 999 on old builds)


class IdSet:
    """A set of strings in a SQLite file: add in batches, ask membership in batches, read back in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, ids: Iterable[str]) -> None:
        """Add ids (repeats are kept once)."""
        self._db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((doc_id,) for doc_id in ids))
        self._db.commit()  # visible to other connections (a manifest attaches this file)

    def known(self, ids: Sequence[str]) -> set[str]:
        """Return those of ``ids`` that are in the set."""
        found: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_BATCH):
            part = list(ids[start : start + _LOOKUP_BATCH])
            marks = ",".join("?" * len(part))
            found.update(
                row[0] for row in self._db.execute(f"SELECT id FROM ids WHERE id IN ({marks})", part)
            )
        return found

    def batches(self, size: int) -> Iterator[list[str]]:
        """Yield the ids in sorted order, ``size`` at a time."""
        cursor = self._db.execute("SELECT id FROM ids ORDER BY id")
        while rows := cursor.fetchmany(size):
            yield [row[0] for row in rows]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM ids").fetchone()[0])

    def close(self) -> None:
        """Close the database file (the caller removes it)."""
        self._db.close()


class SeenIds:
    """The ids of the documents a backfill read, on disk, and whether the whole file was read cleanly."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="embedq-ids-", dir=directory))
        self.ids = IdSet(self._dir / "seen.sqlite")
        self.read_to_end = False
        self.rejected = 0

    @property
    def complete(self) -> bool:
        """Whether every record of the file was read and none was rejected (so deletes are safe)."""
        return self.read_to_end and self.rejected == 0

    def recording(self, records: Iterable[Document | Rejected]) -> Iterator[Document | Rejected]:
        """Pass ``records`` through, recording document ids; mark the end once the last one is read."""
        iterator = iter(records)
        while batch := list(itertools.islice(iterator, _INSERT_BATCH)):
            self.ids.add(record.id for record in batch if isinstance(record, Document))
            self.rejected += sum(1 for record in batch if isinstance(record, Rejected))
            yield from batch
        self.read_to_end = True

    def close(self) -> None:
        """Close and remove the files."""
        self.ids.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SeenIds:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncManifest:
    """The ids that syncs of one collection may have written, in a SQLite file kept between runs.

    After a complete sync it holds exactly the file's ids; a failed or partial one only adds the
    ids it read (they may have been written), so a later complete sync still deletes them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_collection(cls, state_dir: Path, milvus_uri: str, collection: str) -> SyncManifest:
        """Return the manifest of ``collection`` at ``milvus_uri``, under ``state_dir``."""
        key = hashlib.sha256(f"{milvus_uri}\0{collection}".encode()).hexdigest()[:16]
        return cls(state_dir / f"{collection}-{key}.sqlite")

    def exists(self) -> bool:
        """Whether an earlier sync left this manifest."""
        return self.path.is_file()

    def add(self, seen: IdSet) -> None:
        """Remember the ids of ``seen`` as possibly written."""
        with self._attached(seen) as db:
            db.execute("INSERT OR IGNORE INTO ids SELECT id FROM seen.ids")

    def missing(self, seen: IdSet, size: int) -> Iterator[list[str]]:
        """Yield, ``size`` at a time and sorted, the ids of this manifest that ``seen`` lacks."""
        with self._attached(seen) as db:
            cursor = db.execute("SELECT id FROM ids EXCEPT SELECT id FROM seen.ids ORDER BY 1")
            while rows := cursor.fetchmany(size):
                yield [row[0] for row in rows]

    def replace(self, seen: IdSet) -> None:
        """Make this manifest hold exactly the ids of ``seen`` (after a complete sync)."""
        with self._attached(seen) as db:
            db.execute("DELETE FROM ids")
            db.execute("INSERT INTO ids SELECT id FROM seen.ids")

    @contextlib.contextmanager
    def _attached(self, seen: IdSet) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("ATTACH DATABASE ? AS seen", (str(seen.path),))
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()
