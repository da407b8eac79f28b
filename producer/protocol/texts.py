"""Checks on texts before they are enqueued (producer) and again before they are encoded (worker)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import filterfalse

from producer.errors import InvalidInputError

# Any surrogate code point: Python strings may hold them (lone or as a pair of two code points),
# but they are not Unicode scalar values and cannot be encoded as UTF-8 or sent as msgpack.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _type_problem(index: int, item: object) -> InvalidInputError:
    if item is None:
        return InvalidInputError(f"texts[{index}] is None: drop it or replace it with an empty string")
    if isinstance(item, bytes | bytearray | memoryview):
        return InvalidInputError(f"texts[{index}] is {type(item).__name__}, not str: decode it to str first")
    return InvalidInputError(f"texts[{index}] is {type(item).__name__}, not str")


def _all_fine(texts: Sequence[object], max_text_chars: int) -> bool:
    """Tell, with a few passes in C instead of a Python loop per text, that every text is valid.

    False means "look text by text" (the slow loop names the first offender), not "invalid".
    """
    if not set(map(type, texts)) <= {str}:
        return False
    strings: Sequence[str] = texts  # type: ignore[assignment]  # every item's type is str
    if max(map(len, strings)) > max_text_chars:
        return False
    return not any(_SURROGATE.search(text) for text in filterfalse(str.isascii, strings))


def validate_texts(texts: object, *, max_texts: int | None, max_text_chars: int) -> Sequence[str]:
    """Return ``texts`` if it is a list or tuple of valid str within the limits, else raise InvalidInputError.

    The error names the first offending item by index and says why.
    """
    if isinstance(texts, str):
        raise InvalidInputError("texts must be a list or tuple of str, got a single str: wrap it as [text]")
    if not isinstance(texts, list | tuple):
        raise InvalidInputError(f"texts must be a list or tuple of str, got {type(texts).__name__}")
    if max_texts is not None and len(texts) > max_texts:
        raise InvalidInputError(
            f"got {len(texts)} texts, above the limit of {max_texts} per request "
            "(EMBEDQ_MAX_TEXTS_PER_REQUEST): send them in smaller batches"
        )
    if texts and _all_fine(texts, max_text_chars):
        return texts
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise _type_problem(index, text)
        if len(text) > max_text_chars:
            raise InvalidInputError(
                f"texts[{index}] has {len(text)} characters, above the limit of {max_text_chars} "
                "(EMBEDQ_MAX_TEXT_CHARS): split or truncate it"
            )
        if not text.isascii():
            match = _SURROGATE.search(text)
            if match is not None:
                raise InvalidInputError(
                    f"texts[{index}] holds the surrogate code point U+{ord(match.group()):04X} at character "
                    f"{match.start()}, which is not valid Unicode: fix the decoding that produced it"
                )
    return texts
