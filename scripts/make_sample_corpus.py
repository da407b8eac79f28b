"""Regenerate examples/corpus.jsonl: documentation paragraphs of well-known stdlib modules.

Each line is {"id", "text", "metadata": {"module", "object"}}. The text is the Python
Software Foundation's docstrings (PSF licence), used here as a realistic sample corpus.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email.message",
    "functools",
    "hashlib",
    "heapq",
    "http.client",
    "itertools",
    "json",
    "logging",
    "multiprocessing",
    "os",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "zipfile",
)
OUT = Path(__file__).resolve().parent.parent / "examples" / "corpus.jsonl"


def main() -> None:
    """Write one JSON line per docstring paragraph of at least 60 characters."""
    seen: set[str] = set()
    lines = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for object_name, member in [(module_name, module), *inspect.getmembers(module)]:
            foreign = member is not module and (inspect.ismodule(member) or object_name.startswith("_"))
            doc = None if foreign else inspect.getdoc(member)
            if not doc:
                continue
            for number, block in enumerate(doc.split("\n\n"), start=1):
                text = " ".join(block.split())
                if len(text) < 60 or text in seen:
                    continue
                seen.add(text)
                qualified = module_name if member is module else f"{module_name}.{object_name}"
                record = {
                    "id": f"{qualified}#{number}",
                    "text": text,
                    "metadata": {"module": module_name, "object": qualified},
                }
                lines.append(json.dumps(record, ensure_ascii=False))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} documents -> {OUT}")


if __name__ == "__main__":
    main()
