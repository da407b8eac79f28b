"""Deterministic ids for documents that arrive without one (stdlib only: the producer uses it too)."""

from __future__ import annotations

import hashlib

from producer.errors import InvalidInputError

DOCUMENT_ID_HEX_CHARS = 32
"""Length of a derived id: the first 128 bits of the SHA-256 of the text, in lowercase hex."""


def document_id(text: str) -> str:
    """Return the id for a document without one: a hash of its text, so re-sending it upserts in place."""
    if not isinstance(text, str):
        raise InvalidInputError(
            f"document_id needs the document text as str, got {type(text).__name__}: "
            "decode bytes to str first"
        )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DOCUMENT_ID_HEX_CHARS]
