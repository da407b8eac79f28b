"""Document limits: one place, per document, never recursing; one bad record is one rejected record."""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producer.backfill.readers import Rejected, count_records, read_documents
from producer.client import EmbeddingClient
from producer.errors import InvalidInputError
from producer.limits import (
    ID_MAX_BYTES,
    METADATA_MAX_DEPTH,
    RECORD_MAX_BYTES,
    TEXT_MAX_BYTES,
    depth_exceeds,
    document_problem,
    metadata_problem,
)
from producer.protocol.documents import Document
from producer.settings import Settings


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_depth_is_measured_without_recursion() -> None:
    assert not depth_exceeds(_nested(METADATA_MAX_DEPTH), METADATA_MAX_DEPTH)
    assert depth_exceeds(_nested(METADATA_MAX_DEPTH + 1), METADATA_MAX_DEPTH)
    assert depth_exceeds(_nested(100_000), METADATA_MAX_DEPTH)  # far past the recursion limit
    assert depth_exceeds([[[[1]]]], 3) and not depth_exceeds([[[1]]], 3)


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"n": 10**30}, "beyond 64 bits"),
        ({"x": float("nan")}, "nan"),
        ({"x": [1, float("inf")]}, "inf"),
        ({"when": dt.datetime(2026, 1, 1)}, "not a JSON value"),
        ({1: "x"}, "keys must be strings"),
        ({"x": "y" * 70_000}, "bytes as JSON"),
        (_nested(METADATA_MAX_DEPTH + 1), "deeper than"),
    ],
)
def test_metadata_milvus_cannot_store_is_named(metadata: dict[Any, Any], words: str) -> None:
    problem = metadata_problem(metadata)
    assert problem is not None and words in problem


def test_the_limits_are_milvus_limits_in_bytes() -> None:
    assert metadata_problem({"n": 2**63 - 1, "f": 1.5, "s": "é", "l": [None, True]}) is None
    assert document_problem("i" * ID_MAX_BYTES, "t", {}) is None
    assert "512-byte" in str(document_problem("é" * ID_MAX_BYTES, "t", {}))
    # Under 100,000 characters (the producer's limit) but over Milvus' 65,535 bytes.
    assert "65535-byte" in str(document_problem("a", "é" * (TEXT_MAX_BYTES // 2 + 1), {}))
    assert document_problem("a", "é" * (TEXT_MAX_BYTES // 2), {}) is None


def test_a_jsonl_corpus_rejects_each_bad_line_alone(tmp_path: Path) -> None:
    bad_lines = {
        2: "x" * (RECORD_MAX_BYTES + 10),  # one huge line: read in pieces, rejected
        4: '{"text": "deep", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
        5: json.dumps({"text": "deep map", "meta": _nested(600)}),
        6: '{"text": "a big number", "n": 123456789012345678901234567890}',
        7: '{"text": "not a number", "x": NaN}',
        8: '{"text": "infinite", "x": Infinity}',
        9: json.dumps({"text": "é" * 40_000}),
        10: json.dumps({"id": "i" * 600, "text": "long id"}),
    }
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as handle:
        for number in range(1, 13):
            handle.write(bad_lines.get(number, json.dumps({"text": f"good {number}"})) + "\n")
    records = list(read_documents(path))
    good = [record for record in records if isinstance(record, Document)]
    rejected = [record for record in records if isinstance(record, Rejected)]
    assert [doc.text for doc in good] == [f"good {n}" for n in (1, 3, 11, 12)]
    assert [record.where for record in rejected] == [f"corpus.jsonl line {n}" for n in sorted(bad_lines)]
    assert all(len(record.reason) < 400 for record in rejected)


def test_a_csv_row_over_the_field_limit_is_one_rejected_row(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerow(["a", "first"])
        writer.writerow(["b", "x" * 200_000])  # beyond csv.field_size_limit
        writer.writerow(["c", "third"])
    records = list(read_documents(path))
    assert [r.id for r in records if isinstance(r, Document)] == ["a", "c"]
    (rejected,) = [r for r in records if isinstance(r, Rejected)]
    assert "line 3" in rejected.where


def test_a_parquet_timestamp_column_becomes_iso_strings(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet"
    when = dt.datetime(2026, 12, 1, 12, 30, tzinfo=dt.UTC)
    table = pa.Table.from_pylist(
        [{"text": "one", "at": when, "day": dt.date(2026, 12, 1)}, {"text": "two", "at": when, "day": None}]
    )
    pq.write_table(table, path)
    records = list(read_documents(path))
    assert all(isinstance(record, Document) for record in records)
    first = records[0]
    assert isinstance(first, Document)
    assert first.metadata == {"at": when.isoformat(), "day": "2026-12-01"}


def test_a_client_refuses_a_document_before_sending(fake_app: Any) -> None:
    client = EmbeddingClient(app=fake_app, worker_wait_s=None)
    with pytest.raises(InvalidInputError, match=r"documents\[1\].*deeper than"):
        client.submit_upsert("c", [Document("a", "fine"), Document("b", "deep", _nested(600))])
    assert Settings().max_text_chars > TEXT_MAX_BYTES  # why the byte limit has to be checked too


@pytest.mark.parametrize(("opener", "name"), [(gzip.open, "corpus.jsonl"), (bz2.open, "corpus.jsonl.bz2")])
def test_a_compressed_corpus_is_read_directly(tmp_path: Path, opener: Any, name: str) -> None:
    # A gzip file named .jsonl failed line by line with no hint; .gz / .bz2 / .xz are read as they are.
    path = tmp_path / name
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"text": f"doc {n}"}) + "\n" for n in range(3)))
    assert [doc.text for doc in read_documents(path)] == ["doc 0", "doc 1", "doc 2"]  # type: ignore[union-attr]
    assert count_records(path) == 3
    gz = tmp_path / "corpus.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8", newline="") as handle:
        handle.write("id,text\na,first\nb,second\n")
    assert [doc.id for doc in read_documents(gz)] == ["a", "b"]  # type: ignore[union-attr]


def test_a_zstd_corpus_without_zstandard_says_how_to_read_it(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInputError, match="zstd -d"):
            list(read_documents(path))
    else:
        pytest.skip("zstandard is installed here: zstd corpora are read directly")
