"""The limits of one document, in one place: checked where a document is read, and again by the worker.

Milvus enforces its own limits only when a whole chunk arrives, failing every good document
with the bad one. These are the same limits, checked per document before anything is sent:
the id and text fields' byte lengths, and metadata that Milvus' JSON field and msgpack can
carry (plain JSON values, finite floats, 64-bit integers, bounded nesting and size).

Every walk here is iterative: a value nested 100,000 deep is measured without recursion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

ID_MAX_BYTES: Final = 512
"""Milvus VARCHAR primary key of an embedq collection."""
TEXT_MAX_BYTES: Final = 65_535
"""Milvus VARCHAR text field of an embedq collection (UTF-8 bytes, not characters)."""
METADATA_MAX_BYTES: Final = 65_536
"""Milvus' JSON field limit (64 KB of serialised JSON)."""
METADATA_MAX_DEPTH: Final = 32
"""Nesting levels of metadata (a map in a map is 2). Deeper values break pickling and JSON."""
MESSAGE_MAX_DEPTH: Final = METADATA_MAX_DEPTH + 8
"""Nesting levels of a whole queue message: the metadata plus the request and task envelope."""
RECORD_MAX_BYTES: Final = 4 * 1024 * 1024
"""One input record (a JSONL line, a CSV row): a text and metadata at their limits, escaped, fit."""
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


_LEAF_TYPES: Final = frozenset({str, bytes, int, float, bool, type(None)})
"""Exact types that hold no children: skipped without an ABC check (a bulk request is 4,096 str)."""


def depth_exceeds(value: object, max_depth: int) -> bool:
    """Tell whether lists, tuples and maps in ``value`` nest deeper than ``max_depth`` levels."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is list or kind is tuple:  # exact types first: the ABC check costs more than the rest
            children: Any = item
        elif kind is dict:
            children = item.values()  # type: ignore[attr-defined]  # kind is dict
        elif isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) not in _LEAF_TYPES)
    return False


def _value_problem(value: object, path: str) -> str | None:
    """Say why one scalar cannot be stored in a JSON field, or None."""
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return None
        return f"{path} is an integer of {len(str(abs(value)))} digits, beyond 64 bits: store it as a string"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, which JSON cannot hold: use null"
    return f"{path} is a {type(value).__name__}, not a JSON value (string, number, bool, null, list, map)"


def metadata_problem(metadata: object) -> str | None:
    """Say why ``metadata`` cannot be stored with a document, or None; never recurses."""
    if not isinstance(metadata, Mapping):
        return f"metadata is a {type(metadata).__name__}, not a map"
    if depth_exceeds(metadata, METADATA_MAX_DEPTH):
        return f"metadata nests deeper than {METADATA_MAX_DEPTH} levels: flatten it"
    stack: list[tuple[object, str]] = [(metadata, "metadata")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"{path} has a key of type {type(key).__name__}: keys must be strings"
                stack.append((child, f"{path}.{key[:40]}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
        else:
            problem = _value_problem(item, path)
            if problem is not None:
                return problem
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > METADATA_MAX_BYTES:
        return f"metadata is {size} bytes as JSON, over the {METADATA_MAX_BYTES}-byte limit: trim it"
    return None


def id_problem(doc_id: object) -> str | None:
    """Say why ``doc_id`` cannot be a document id, or None."""
    if not isinstance(doc_id, str) or not doc_id:
        return "the id must be a non-empty string"
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size > ID_MAX_BYTES:
        return (
            f"the id is {size} bytes, over the {ID_MAX_BYTES}-byte limit: shorten it, or leave it out so "
            "it is derived from the text"
        )
    return None


def text_problem(text: object, max_text_chars: int | None = None) -> str | None:
    """Say why ``text`` cannot be stored as a document's text, or None."""
    if not isinstance(text, str):
        return f"the text is a {type(text).__name__}, not a string"
    if max_text_chars is not None and len(text) > max_text_chars:
        return (
            f"the text has {len(text)} characters, above the limit of {max_text_chars} "
            "(EMBEDQ_MAX_TEXT_CHARS): split it"
        )
    if len(text) * 4 <= TEXT_MAX_BYTES:
        return None  # cannot be over, whatever its characters
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > TEXT_MAX_BYTES:
        return f"the text is {size} bytes in UTF-8, over the {TEXT_MAX_BYTES}-byte limit of Milvus: split it"
    return None


def document_problem(
    doc_id: object, text: object, metadata: object, max_text_chars: int | None = None
) -> str | None:
    """Say why a document cannot be stored (the first problem found), or None."""
    problem = id_problem(doc_id) or text_problem(text, max_text_chars)
    if problem is None and metadata != {}:  # no metadata: nothing to walk (most corpus lines)
        problem = metadata_problem(metadata)
    return problem
