"""Sets of document ids kept on disk (SQLite), so a 10-million-id corpus costs no memory to remember.

``SeenIds`` records the ids of a backfill's file as it is read, and knows whether the file was
read to its end without a rejected record: only then may rows missing from it be deleted.
The sync manifest kept between runs (``manifest.py``) attaches these files to compare id sets.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from producer.backfill.known_lines import Unchanged
from producer.backfill.readers import Rejected
from producer.protocol.documents import Document

_INSERT_BATCH = 10_000
Record = TypeVar("Record", Document | Rejected, Document | Rejected | Unchanged)
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

    def recording(self, records: Iterable[Record]) -> Iterator[Record]:
        """Pass ``records`` through, recording document ids; mark the end once the last one is read."""
        iterator = iter(records)
        while batch := list(itertools.islice(iterator, _INSERT_BATCH)):
            self.ids.add(record.id for record in batch if isinstance(record, Document | Unchanged))
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
