"""A real-text corpus built on the fly from the docstrings of the Python standard library.

Every machine with Python has it, so benchmarks need no download. Paragraphs are docstring
blocks separated by blank lines, whitespace-collapsed, at least 20 characters long.
"""

from __future__ import annotations

import ast
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


if __name__ == "__main__":
    texts = paragraphs()
    unique = len(set(texts))
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"{len(texts)} paragraphs, {unique} unique, mean {mean_chars:.0f} chars")
