"""Filter expressions are checked before anything is sent, with an error that names the fix."""

from __future__ import annotations

import pytest

from producer.errors import InvalidInputError
from worker.milvus.filters import check_filter


@pytest.mark.parametrize(
    "expression",
    [
        'metadata["lang"] == "en"',
        ' id in ["a", "b"] and not (metadata["year"] > 2000) ',
        'json_contains(metadata["tags"], "x") or text like "intro%"',
        'metadata["n"] >= 1.5e3 && metadata["n"] != -2',
        'metadata["x"] is null',
        'id IN ["a"] AND NOT metadata["y"] == true',
    ],
)
def test_valid_expressions_pass_unchanged(expression: str) -> None:
    assert check_filter(expression) == expression.strip()


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "the filter is empty"),
        ('lang == "en"', "unknown field 'lang'"),
        ('metadata["lang"] ==', "ends with the operator '=='"),
        ('metadata["lang" == "en"', "'[' is never closed"),
        ('(metadata["a"] == 1))', "unbalanced ')'"),
        ('metadata["a"] == "x', "has no closing quote"),
        ('contains(metadata["a"], 1)', "unknown function 'contains'"),
        ('metadata["n"] == 1 2', "1 is followed by 2 with no operator"),
        ('and metadata["n"] == 1', "starts with the operator 'and'"),
        ('metadata["n"] == == 1', "the operator '==' is followed by '=='"),
        ('metadata["n"] = 1', "unexpected character '='"),
    ],
)
def test_invalid_expressions_raise_a_clear_error(expression: str, problem: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_filter(expression)
    assert problem in str(raised.value)
    assert 'metadata["lang"] == "en"' in str(raised.value)  # an example of the right form
