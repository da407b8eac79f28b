"""The arguments of the corpus-lifecycle subcommands: collections, delete, reindex."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from worker.cli.lifecycle import collections_command, delete_command, reindex_command

_COLLECTIONS_EPILOG = """\
examples:
  embedq collections
  embedq collections --json
"""

_DELETE_EPILOG = """\
examples:
  embedq delete --collection docs --ids doc-1 doc-2
  embedq delete --collection docs --filter 'metadata["lang"] == "fr"'
"""

_REINDEX_EPILOG = """\
examples:
  embedq reindex --collection docs --model minishlab/potion-base-8M
  embedq reindex --collection docs --model /models/new --from corpus.jsonl --drop-old

docs is an alias: the new model's vectors fill a new collection while searches through docs keep
reading the old one, then docs moves to the new collection in one step. A collection made before
aliases is adopted first (renamed to docs__<model>, with docs an alias of it). Interrupted runs
resume: run the same command again.
"""

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]
    Subcommand = Callable[[Commands, str, str, str], argparse.ArgumentParser]


def add_lifecycle_commands(
    commands: Commands,
    subcommand: Subcommand,
    positive_int: Callable[[str], int],
    positive_float: Callable[[str], float],
) -> None:
    """Register collections, delete and reindex on ``commands``."""
    listing = subcommand(
        commands,
        "collections",
        "List collections with their aliases, model, dimension and row count.",
        _COLLECTIONS_EPILOG,
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=collections_command)

    delete = subcommand(
        commands, "delete", "Delete documents of a collection by id or filter.", _DELETE_EPILOG
    )
    delete.add_argument("--collection", required=True, help="collection or alias")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID", help="ids of the documents to delete")
    which.add_argument(
        "--filter", metavar="EXPR", help="Milvus boolean expression matching the rows to delete"
    )
    delete.set_defaults(run=delete_command)

    reindex = subcommand(
        commands,
        "reindex",
        "Re-embed a collection with another model, then switch its name to it with no downtime.",
        _REINDEX_EPILOG,
    )
    reindex.add_argument("--collection", required=True, help="the name searches use (becomes an alias)")
    reindex.add_argument("--model", required=True, metavar="SOURCE", help="new model folder or Hub id")
    reindex.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="read the texts from FILE (default: the texts stored in the collection)",
    )
    reindex.add_argument("--drop-old", action="store_true", help="drop the old collection after the switch")
    reindex.add_argument(
        "--chunk-size", type=positive_int, default=1000, help="documents per task (default: 1000)"
    )
    reindex.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds to wait for a query (default: 60)"
    )
    reindex.set_defaults(run=reindex_command)
