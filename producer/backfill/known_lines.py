"""Lines a sealed sync already confirmed: a byte-identical JSONL line is not parsed, hashed or sent again.

A line's digest is keyed by the model and the field names it was read with, so the same bytes
read another way never match. The sync manifest records, with each confirmed document, the
digest of the line it came from; a rerun digests every line (far cheaper than parsing it) and
asks the manifest, a batch of lines at a time, which digests it knows: those lines come out of
the reader as :class:`Unchanged` (just their id), the others are parsed as usual.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Unchanged:
    """A line byte-identical to one whose document a sealed sync confirmed: only its id is read."""

    id: str


class LineIndex(Protocol):
    """Where a reader asks which line digests are known, and reports the digest of each parsed document."""

    model_id: str

    def known_lines(self, digests: Sequence[bytes]) -> dict[bytes, str]:
        """Return the document id of each of ``digests`` recorded as unchanged (empty: none trusted)."""
        ...

    def parsed(self, doc_id: str, digest: bytes) -> None:
        """Note the digest of the line document ``doc_id`` was just parsed from."""
        ...


def line_key(model_id: str, id_field: str | None, text_field: str, metadata: tuple[str, ...] | None) -> bytes:
    """Return the key line digests are made with: the model and the field names (at most 64 bytes)."""
    reading = json.dumps([model_id, id_field, text_field, metadata], ensure_ascii=False)
    return hashlib.sha256(reading.encode("utf-8", "surrogatepass")).digest()


def line_digest(line: bytes, key: bytes) -> bytes:
    """Return the 16-byte digest of one line, without its line ending."""
    return hashlib.blake2b(line.rstrip(b"\r\n"), digest_size=16, key=key).digest()
