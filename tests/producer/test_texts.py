from __future__ import annotations

import pytest

from producer.errors import InvalidInputError
from producer.protocol.texts import validate_texts


def _check(texts: object, max_texts: int | None = 10, max_text_chars: int = 20) -> object:
    return validate_texts(texts, max_texts=max_texts, max_text_chars=max_text_chars)


def test_lists_and_tuples_of_str_pass_unchanged() -> None:
    texts = ["", "plain", "ünïcödé ✓", "emoji 😀", " " * 20]
    assert _check(texts) is texts
    assert _check(tuple(texts)) == tuple(texts)
    assert _check([]) == []


@pytest.mark.parametrize(
    ("texts", "complaint"),
    [
        ("a single text", "got a single str: wrap it as [text]"),
        (b"bytes", "got bytes"),
        ({"a": 1}, "got dict"),
        (iter(["a"]), "got list_iterator"),
        (["ok", None], "texts[1] is None"),
        (["ok", "ok", b"raw"], "texts[2] is bytes, not str: decode it"),
        ([1.5], "texts[0] is float, not str"),
        (["ok", "x" * 21], "texts[1] has 21 characters, above the limit of 20"),
        (["ok", "fine", "bad \ud800 here"], "texts[2] holds the surrogate code point U+D800 at character 4"),
        (["\ud83d\ude00"], "texts[0] holds the surrogate code point U+D83D at character 0"),
    ],
)
def test_bad_input_is_rejected_naming_the_item_and_why(texts: object, complaint: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        _check(texts)
    assert complaint in str(raised.value)


def test_count_limit() -> None:
    assert len(_check(["a"] * 10)) == 10  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="got 11 texts, above the limit of 10"):
        _check(["a"] * 11)
    assert len(_check(["a"] * 11, max_texts=None)) == 11  # type: ignore[arg-type]


def test_the_first_bad_item_is_reported() -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is None"):
        _check(["a", None, b"b"])
