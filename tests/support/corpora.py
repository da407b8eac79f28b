"""Real-text corpora built on the fly, for tests and benchmarks: nothing to download.

`paragraphs` are docstring blocks of the Python standard library (every machine with Python has
it), whitespace-collapsed, at least 20 characters long; `module_paragraphs` a few thousand of them
from some modules' members; `write_jsonl_corpus` a backfill file with optional bad lines.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


def _docstrings(path: Path) -> Iterator[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _stdlib_paragraphs(min_chars: int) -> list[str]:
    cache = (
        Path(tempfile.gettempdir()) / f"embedq-corpus-{sys.version_info.major}.{sys.version_info.minor}.txt"
    )
    if cache.exists():
        return cache.read_text(encoding="utf-8").splitlines()
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        for doc in _docstrings(path):
            for block in doc.split("\n\n"):
                text = " ".join(block.split())
                if len(text) >= min_chars:
                    found.append(text)
    cache.write_text("\n".join(found), encoding="utf-8")
    return found


def paragraphs(min_count: int = 100_000, min_chars: int = 20) -> list[str]:
    """Return at least ``min_count`` paragraphs (the stdlib's own, repeated with a suffix if short).

    The stdlib scan takes tens of seconds, so its result is cached in the temp directory.
    """
    found = _stdlib_paragraphs(min_chars)
    out = list(found)
    round_no = 1
    while len(out) < min_count:
        out.extend(f"{text} ({round_no})" for text in found[: min_count - len(out)])
        round_no += 1
    return out


def module_paragraphs() -> list[str]:
    """A few thousand real paragraphs from the docstrings of some stdlib modules."""
    import argparse
    import collections
    import email.message
    import json as json_module
    import pathlib
    import subprocess
    import typing

    out: list[str] = []
    for module in (argparse, collections, email.message, json_module, pathlib, subprocess, typing, os):
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) or ""
            out.extend(" ".join(block.split()) for block in doc.split("\n\n") if block.strip())
    return out


def write_jsonl_corpus(path: Path, count: int, *, bad_every: int | None = None) -> Path:
    with path.open("w") as out:
        for i in range(count):
            if bad_every and i % bad_every == 0:
                out.write("this line is not json\n")
            else:
                record = {
                    "id": f"doc-{i}",
                    "text": f"paragraph {i} about task queues and vectors",
                    "metadata": {"n": i},
                }
                out.write(json.dumps(record) + "\n")
    return path


if __name__ == "__main__":
    texts = paragraphs()
    unique = len(set(texts))
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"{len(texts)} paragraphs, {unique} unique, mean {mean_chars:.0f} chars")
