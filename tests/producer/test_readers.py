"""Corpus readers: formats, field options, derived ids, rejected records, streaming."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producer.backfill.ids import document_id
from producer.backfill.readers import FieldNames, Rejected, count_records, read_documents
from producer.errors import InvalidInputError
from producer.protocol.documents import Document

RECORDS = [
    {"id": "a", "text": "first document", "lang": "en"},
    {"id": 7, "text": "second document", "lang": "fr"},
    {"text": "no id here", "lang": "de"},
]


def _write(path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    elif fmt == "csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "text", "lang"])
            writer.writeheader()
            writer.writerows(RECORDS)
    elif fmt == "parquet":
        table = pa.Table.from_pylist([{**r, "id": None if "id" not in r else str(r["id"])} for r in RECORDS])
        pq.write_table(table, path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_formats_give_the_same_documents(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"corpus.{fmt}", fmt)
    documents = list(read_documents(path))
    assert [d.id for d in documents] == ["a", "7", document_id("no id here")]
    assert [d.text for d in documents] == [r["text"] for r in RECORDS]
    assert [d.metadata for d in documents] == [{"lang": "en"}, {"lang": "fr"}, {"lang": "de"}]
    assert count_records(path) == 3


def test_plain_text_is_one_document_a_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("alpha\n\n  \nbeta\r\n")
    documents = list(read_documents(path))
    assert documents == [Document(document_id("alpha"), "alpha"), Document(document_id("beta"), "beta")]
    assert count_records(path) == 2


def test_field_options(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"key": "k1", "body": "hello", "lang": "en", "noise": 1}) + "\n")
    (document,) = read_documents(path, fields=FieldNames(id="key", text="body", metadata=("lang",)))
    assert document == Document("k1", "hello", {"lang": "en"})


def test_a_metadata_object_is_merged_with_the_other_fields_and_wins_on_a_clash(tmp_path: Path) -> None:
    # Until this version the other fields ("other", "a" outside) were silently dropped.
    path = tmp_path / "c.jsonl"
    record = {"id": "x", "text": "t", "metadata": {"a": [1, 2], "lang": "en"}, "other": 3, "a": "outer"}
    path.write_text(json.dumps(record) + "\n")
    assert next(read_documents(path)).metadata == {"a": [1, 2], "lang": "en", "other": 3}


def test_bad_records_are_rejected_with_where_and_why(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"text": "ok"}\nnot json\n[1, 2]\n{"text": 5}\n{"id": true, "text": "x"}\n{"text": "fine"}\n'
    )
    out = list(read_documents(path))
    assert [type(r) for r in out] == [Document, Rejected, Rejected, Rejected, Rejected, Document]
    reasons = [r.reason for r in out if isinstance(r, Rejected)]
    assert "line 2: not valid JSON" in reasons[0]
    assert "line 3: expected a JSON object" in reasons[1]
    assert "line 4: field 'text' must be a string (int)" in reasons[2]
    assert "line 5: id field 'id' must be a string or integer" in reasons[3]


def test_file_level_problems_raise(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is not a file"):
        read_documents(tmp_path / "missing.jsonl")
    odd = tmp_path / "corpus.xyz"
    odd.write_text("x")
    with pytest.raises(InvalidInputError, match="pass --format"):
        read_documents(odd)
    with pytest.raises(InvalidInputError, match="unknown format"):
        read_documents(odd, "yaml")
    no_text = tmp_path / "c.csv"
    no_text.write_text("id,body\n1,hello\n")
    with pytest.raises(InvalidInputError, match="no column 'text'"):
        list(read_documents(no_text))


def test_the_sample_corpus_reads_cleanly_with_one_document_per_id() -> None:
    sample = Path(__file__).resolve().parents[2] / "examples" / "corpus.jsonl"
    records = list(read_documents(sample))
    assert not [record for record in records if isinstance(record, Rejected)]
    ids = [record.id for record in records if isinstance(record, Document)]
    assert len(ids) == len(set(ids)) == count_records(sample) > 1000
