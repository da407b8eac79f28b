"""document_id: stable ids for documents sent without one."""

from __future__ import annotations

import hashlib

import pytest

from producer.backfill.ids import document_id
from producer.errors import InvalidInputError


def test_the_same_text_always_gets_the_same_id() -> None:
    assert document_id("hello world") == document_id("hello world")
    assert document_id("hello world") == hashlib.sha256(b"hello world").hexdigest()[:32]


def test_different_texts_get_different_ids() -> None:
    texts = ["a", "a ", "A", "", "héllo", "hello", "🙂"]
    assert len({document_id(text) for text in texts}) == len(texts)


def test_ids_are_32_lowercase_hex_characters() -> None:
    doc_id = document_id("x" * 100_000)
    assert len(doc_id) == 32
    assert set(doc_id) <= set("0123456789abcdef")


def test_non_text_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="str"):
        document_id(b"bytes")  # type: ignore[arg-type]
