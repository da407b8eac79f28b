"""Stream documents out of JSONL, CSV, Parquet or plain-text files, one at a time.

Readers never hold the whole file: memory stays flat however large the corpus. Each record
becomes a :class:`Document`; a record without an id gets a deterministic one (a hash of its
text), so running a backfill again never duplicates rows.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.backfill.ids import document_id
from producer.backfill.known_lines import LineIndex, Unchanged, line_digest, line_key
from producer.backfill.records import (
    COMPRESSED_SUFFIXES,
    bounded_lines,
    json_record,
    open_corpus,
    plain_values,
)
from producer.errors import InvalidInputError
from producer.limits import document_problem, text_problem
from producer.protocol.documents import Document

_LINE_BATCH = 1000  # lines digested, then looked up in the sync manifest, at a time
FORMATS = ("jsonl", "csv", "parquet", "text")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
}


@dataclass(frozen=True)
class FieldNames:
    """Which record fields hold the id, the text and the metadata.

    ``metadata`` None means: every field but the id and the text; a ``metadata`` object is merged
    into the others (its keys win on a clash), so no field of the record is dropped.
    """

    id: str | None = "id"
    text: str = "text"
    metadata: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rejected:
    """A record that cannot become a document (bad JSON, missing text, bad id), with where and why."""

    where: str
    reason: str


def detect_format(path: Path, format_name: str | None) -> str:
    """Return the format to read ``path`` with: ``format_name`` if given, else from the suffix."""
    if format_name is not None:
        if format_name not in FORMATS:
            raise InvalidInputError(f"unknown format {format_name!r}; use one of {', '.join(FORMATS)}")
        return format_name
    suffixes = [suffix.lower() for suffix in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()  # corpus.jsonl.gz reads as JSONL
    detected = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if detected is None:
        raise InvalidInputError(
            f"cannot tell the format of {path.name} from its suffix; pass --format ({', '.join(FORMATS)})"
        )
    return detected


def _document(record: Mapping[str, Any], fields: FieldNames, where: str) -> Document | Rejected:
    try:
        return _checked_document(record, fields, where)
    except InvalidInputError as exc:
        return Rejected(where, str(exc))


def _checked_document(record: Mapping[str, Any], fields: FieldNames, where: str) -> Document:
    text = record.get(fields.text)
    if not isinstance(text, str):
        found = "missing" if text is None else type(text).__name__
        raise InvalidInputError(
            f"{where}: field {fields.text!r} must be a string ({found}); name the text field: --text-field"
        )
    raw_id = record.get(fields.id) if fields.id is not None else None
    if raw_id is None or raw_id == "":
        doc_id = document_id(text)
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool):
        doc_id = str(raw_id)
    else:
        raise InvalidInputError(f"{where}: id field {fields.id!r} must be a string or integer")
    if fields.metadata is not None:
        metadata = {name: record.get(name) for name in fields.metadata if name in record}
    elif isinstance(record.get("metadata"), dict):
        others = {k: v for k, v in record.items() if k not in (fields.text, fields.id, "metadata")}
        metadata = others | record["metadata"]  # the explicit metadata object wins on a key clash
    else:
        metadata = {k: v for k, v in record.items() if k not in (fields.text, fields.id)}
    problem = document_problem(doc_id, text, metadata)
    if problem is not None:
        raise InvalidInputError(f"{where}: {problem}")
    return Document(id=doc_id, text=text, metadata=metadata)


def _jsonl_record(
    line: bytes | None, number: int, name: str, fields: FieldNames
) -> Document | Rejected | None:
    """Return the record of one JSONL line (None: a blank line)."""
    if line is None:
        where = f"{name} line {number}"
        return Rejected(where, f"{where}: the line is longer than the limit of one record: split it")
    if not line.strip():
        return None
    record = json_record(line)
    if isinstance(record, str):
        where = f"{name} line {number}"
        return Rejected(where, f"{where}: {record}")
    return _document(record, fields, f"{name} line {number}")


def _jsonl(path: Path, fields: FieldNames) -> Iterator[Document | Rejected]:
    name = path.name
    with open_corpus(path) as handle:
        for number, line in bounded_lines(handle):
            record = _jsonl_record(line, number, name, fields)
            if record is not None:
                yield record


def _known_jsonl(
    path: Path, fields: FieldNames, index: LineIndex
) -> Iterator[Document | Rejected | Unchanged]:
    """Read JSONL like ``_jsonl``, but a line whose digest ``index`` knows comes as :class:`Unchanged`."""
    key = line_key(index.model_id, fields.id, fields.text, fields.metadata)
    name = path.name
    with open_corpus(path) as handle:
        lines = bounded_lines(handle)
        while batch := list(itertools.islice(lines, _LINE_BATCH)):
            digests = [b"" if line is None else line_digest(line, key) for _, line in batch]
            known = index.known_lines([digest for digest in digests if digest])
            for (number, line), digest in zip(batch, digests, strict=True):
                doc_id = known.get(digest) if known else None
                if doc_id is not None:
                    yield Unchanged(doc_id)
                    continue
                record = _jsonl_record(line, number, name, fields)
                if isinstance(record, Document):
                    index.parsed(record.id, digest)
                if record is not None:
                    yield record


def _csv(path: Path, fields: FieldNames) -> Iterator[Document | Rejected]:
    with io.TextIOWrapper(open_corpus(path), encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or fields.text not in reader.fieldnames:
            raise InvalidInputError(
                f"{path.name}: no column {fields.text!r} (columns: {reader.fieldnames}); use --text-field"
            )
        number = 1
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over csv.field_size_limit: that row alone
                where = f"{path.name} line {number}"
                yield Rejected(where, f"{where}: not a readable CSV row ({exc})")
                continue
            yield _document(row, fields, f"{path.name} line {number}")


def _parquet(path: Path, fields: FieldNames) -> Iterator[Document | Rejected]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidInputError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    parquet = pq.ParquetFile(path)
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield _document(plain_values(record), fields, f"{path.name} row {row}")


def _text(path: Path, fields: FieldNames) -> Iterator[Document | Rejected]:
    with open_corpus(path) as handle:
        for number, line in bounded_lines(handle):
            where = f"{path.name} line {number}"
            text = None if line is None else line.decode("utf-8", errors="replace").rstrip("\r\n")
            too_long = "the line is over the limit of one record: split it"
            problem = too_long if text is None else text_problem(text)
            if problem is not None:
                yield Rejected(where, f"{where}: {problem}")
            elif text is not None and text.strip():
                yield Document(id=document_id(text), text=text)


def count_records(path: Path, format_name: str | None = None) -> int:
    """Count the records of ``path`` quickly (for progress and ETA), without parsing them."""
    fmt = detect_format(path, format_name)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt == "csv":
        with io.TextIOWrapper(open_corpus(path), encoding="utf-8", errors="replace", newline="") as handle:
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    count = 0
    with open_corpus(path) as handle:
        for line in handle:
            count += bool(line.strip())
    return count


_READERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet, "text": _text}


def read_documents(
    path: Path, format_name: str | None = None, fields: FieldNames | None = None
) -> Iterator[Document | Rejected]:
    """Yield the documents of ``path`` in file order, streaming; bad records come as :class:`Rejected`.

    Problems with the file as a whole (missing, unknown format, no text column) raise InvalidInputError.
    """
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file")
    return _READERS[detect_format(path, format_name)](path, fields or FieldNames())


def read_records(
    path: Path, format_name: str | None, fields: FieldNames, lines: LineIndex | None
) -> Iterator[Document | Rejected | Unchanged]:
    """Like ``read_documents``; with ``lines`` (a sync's), a known JSONL line comes as :class:`Unchanged`."""
    records = read_documents(path, format_name, fields)
    if lines is not None and detect_format(path, format_name) == "jsonl":
        return _known_jsonl(path, fields, lines)
    return records
