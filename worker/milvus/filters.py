"""Checking a Milvus boolean filter expression before it is sent, with an error that says what to fix.

Milvus checks expressions itself, but only once a request reaches it (for a delete, after the
caller has decided to delete). This check catches the usual mistakes first: an unknown field
(metadata keys are reached as ``metadata["key"]``), unbalanced brackets or quotes, a dangling
operator, an unknown function.
"""

from __future__ import annotations

import itertools
import re

from producer.errors import InvalidInputError
from worker.milvus.schema import ID_FIELD, METADATA_FIELD, TEXT_FIELD

FIELDS = frozenset({ID_FIELD, TEXT_FIELD, METADATA_FIELD})
KEYWORDS = frozenset({"and", "or", "not", "in", "like", "true", "false", "is", "null"})
"""Milvus' words, compared in lower case (Milvus also accepts AND, OR, NOT, IN, LIKE)."""
FUNCTIONS = frozenset(
    {
        "json_contains",
        "json_contains_all",
        "json_contains_any",
        "array_contains",
        "array_contains_all",
        "array_contains_any",
        "array_length",
        "exists",
    }
)
_BINARY = frozenset({"==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "*", "/", "%", "**"})
_BINARY_WORDS = frozenset({"and", "or", "in", "like"})
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|&&|\|\||\*\*|[<>+\-*/%!])
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<comma>,)
    )""",
    re.VERBOSE,
)
_EXAMPLE = 'for example metadata["lang"] == "en" and id in ["a", "b"]'
MAX_FILTER_CHARS = 65536


def check_filter(expression: str) -> str:
    """Return ``expression`` stripped if it looks like a valid Milvus filter, else raise InvalidInputError."""
    text = expression.strip()
    if not text:
        raise InvalidInputError(f"the filter is empty: give a boolean expression, {_EXAMPLE}")
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidInputError(f"the filter is {len(text)} characters, over {MAX_FILTER_CHARS}: shorten it")
    tokens = _tokens(text)
    _check_brackets(text, tokens)
    _check_names(text, tokens)
    _check_operators(text, tokens)
    return text


def _fail(expression: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"invalid filter {expression!r}: {problem} ({_EXAMPLE})")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:].lstrip()
            if rest[:1] in "\"'":
                raise _fail(text, f"a string starting at {rest[:20]!r} has no closing quote")
            raise _fail(text, f"unexpected character {rest[:1]!r} at {rest[:20]!r}")
        kind = match.lastgroup
        assert kind is not None  # every alternative is a named group
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _check_brackets(text: str, tokens: list[tuple[str, str]]) -> None:
    stack: list[str] = []
    for kind, value in tokens:
        if kind == "open":
            stack.append(value)
        elif kind == "close" and (not stack or {"(": ")", "[": "]"}[stack.pop()] != value):
            raise _fail(text, f"unbalanced {value!r}")
    if stack:
        raise _fail(text, f"{stack[-1]!r} is never closed")


def _check_names(text: str, tokens: list[tuple[str, str]]) -> None:
    for index, (kind, value) in enumerate(tokens):
        if kind != "name":
            continue
        if value.lower() in KEYWORDS:
            continue
        calls = index + 1 < len(tokens) and tokens[index + 1] == ("open", "(")
        if calls and value.lower() not in FUNCTIONS:
            raise _fail(text, f"unknown function {value!r}; Milvus offers {sorted(FUNCTIONS)}")
        if not calls and value not in FIELDS:
            raise _fail(
                text,
                f"unknown field {value!r}: the fields are {sorted(FIELDS)}; metadata keys are written "
                f'metadata["{value}"] and strings need quotes',
            )


def _check_operators(text: str, tokens: list[tuple[str, str]]) -> None:
    def binary(token: tuple[str, str]) -> bool:
        kind, value = token
        return (kind == "op" and value in _BINARY) or (kind == "name" and value.lower() in _BINARY_WORDS)

    if binary(tokens[0]):
        raise _fail(text, f"it starts with the operator {tokens[0][1]!r}")
    last = tokens[-1]
    if binary(last) or last in {("op", "!"), ("op", "-")} or (last[0] == "name" and last[1].lower() == "not"):
        raise _fail(text, f"it ends with the operator {last[1]!r}: the right-hand side is missing")
    for left, right in itertools.pairwise(tokens):
        if binary(left) and (binary(right) or right[0] in {"close", "comma"}):
            raise _fail(text, f"the operator {left[1]!r} is followed by {right[1]!r}")
        operand_after_literal = right[0] in {"string", "number"} or (
            right[0] == "name" and not binary(right) and right[1].lower() != "is"
        )
        if left[0] in {"string", "number"} and operand_after_literal:
            raise _fail(text, f"{left[1]} is followed by {right[1]} with no operator between them")
