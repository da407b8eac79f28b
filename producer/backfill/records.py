"""Turning raw input into plain records, one at a time, without letting one record stop the run.

A line is read with a bound (a 50 MB line is one rejected record, not 50 MB in memory), JSON
is parsed without letting deep nesting raise out of the reader, and Parquet values that are not
JSON (timestamps, decimals) become strings.
"""

from __future__ import annotations

import bz2
import datetime as dt
import decimal
import gzip
import json
import lzma
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from producer.errors import InvalidInputError
from producer.limits import RECORD_MAX_BYTES

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def open_corpus(path: Path) -> IO[bytes]:
    """Open a corpus file for reading bytes, decompressing gzip, bzip2 and xz (and zstd if installed).

    The compression is told from the file's first bytes, not its name: a gzip file named ``.jsonl``
    is read like any other.
    """
    with path.open("rb") as probe:
        magic = probe.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    if magic.startswith(_ZSTD_MAGIC):
        try:
            import zstandard  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise InvalidInputError(
                f"{path.name} is zstd-compressed: decompress it first (zstd -d {path.name}), "
                "or pip install zstandard to read it directly"
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)  # type: ignore[no-any-return]
    return path.open("rb")


def bounded_lines(handle: IO[bytes], max_bytes: int = RECORD_MAX_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line number, line)`` from a binary file; a line over ``max_bytes`` comes as None.

    The rest of an over-long line is read in pieces and skipped, so memory stays bounded.
    """
    number = 0
    while True:
        line = handle.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield number, line
            continue
        while line and not line.endswith(b"\n"):
            line = handle.readline(max_bytes)
        yield number, None


def json_record(line: bytes) -> dict[str, Any] | str:
    """Parse one JSONL line into a map, or return why it cannot be one."""
    try:
        record = json.loads(line.decode("utf-8", errors="replace"))
    except RecursionError:
        return "the JSON nests too deeply to read: flatten it"
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return value


def plain_values(record: dict[str, Any]) -> dict[str, Any]:
    """Return a Parquet row with dates and times as ISO 8601 strings, decimals and UUIDs as strings.

    Only top-level values are converted; a nested one that is not JSON is refused by the limits.
    """
    return {key: _plain(value) for key, value in record.items()}
