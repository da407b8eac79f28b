"""The corpus-lifecycle subcommands: search by a collection's own model, list, delete, reindex.

Heavy imports (pymilvus, the model stack) stay inside the functions, like the other subcommands.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from producer.errors import EXIT_FAILED, ConfigError, InvalidInputError
from producer.protocol.names import BUNDLED_MODEL_ID
from producer.settings import Settings, check_model_id
from worker.cli.commands import note, serving
from worker.cli.deletes import in_milvus_session, open_milvus

if TYPE_CHECKING:
    import numpy as np

    from producer.client import EmbeddingClient
    from worker.milvus.aliases import MilvusAccess

REINDEX_DIR = Path(".embedq/reindex")


def _fields(comma_separated: str) -> list[str]:
    return [name.strip() for name in comma_separated.split(",") if name.strip()]


def _serving_model(settings: Settings, model_id: str) -> Settings:
    """Return settings whose workers serve ``model_id`` (the bundled model's id means: no EMBEDQ_MODEL)."""
    return replace(settings, model=None if model_id == BUNDLED_MODEL_ID else model_id)


@in_milvus_session
def search_command(args: argparse.Namespace, settings: Settings) -> int:
    """Embed the query with the model the collection records and print its nearest documents."""
    from producer.client import EmbeddingClient
    from worker.cli.output import search_hit_lines
    from worker.milvus.catalog import collection_model
    from worker.milvus.filters import check_filter
    from worker.milvus.querying import checked_output_fields, search_text

    filter_expr = check_filter(args.filter) if args.filter is not None else ""  # before anything starts
    fields = checked_output_fields(
        _fields(args.output_fields) if args.output_fields is not None else ["text"]
    )
    access = open_milvus(settings)
    try:
        _, model_id, _ = collection_model(access.client, args.collection)
    finally:
        access.close()  # not held across the start of local workers
    with (
        serving(_serving_model(settings, model_id), needs_milvus=True) as served,
        EmbeddingClient.from_settings(served) as client,
    ):
        access = open_milvus(served)
        try:
            found = search_text(
                access.client,
                args.collection,
                args.query,
                _embedder(client, args.timeout),
                top_k=args.top_k,
                filter_expr=filter_expr,
                output_fields=fields,
                group_by_document=args.group_by_document,
            )
        finally:
            access.close()
        if args.json:
            print(json.dumps(found.hits, ensure_ascii=False), flush=True)
        else:
            empty = f"no documents in collection {args.collection} match"
            print("\n".join(search_hit_lines(found.hits) or [empty]), flush=True)
    return 0


def _embedder(client: EmbeddingClient, timeout_s: float) -> Callable[[str, Sequence[str]], np.ndarray]:
    def embed(model_id: str, texts: Sequence[str]) -> np.ndarray:
        if model_id != client.model:
            raise ConfigError(
                f"the collection now holds vectors of model {model_id!r}, but this command serves "
                f"{client.model!r}: run the search again"
            )
        return client.embed_queries(list(texts)).result(timeout_s=timeout_s)

    return embed


@in_milvus_session
def collections_command(args: argparse.Namespace, settings: Settings) -> int:
    """List the collections with their aliases, model, dimension and row count."""
    from worker.milvus.catalog import list_collections
    from worker.milvus.connection import milvus_errors

    access = open_milvus(settings)
    try:
        with milvus_errors("list collections"):
            infos = list_collections(access.client)
    finally:
        access.close()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos]))
        return 0
    if not infos:
        print("no collections")
        return 0
    rows = [("COLLECTION", "ALIASES", "MODEL", "DIM", "ROWS")]
    for info in infos:
        rows.append(
            (
                info.name,
                ",".join(info.aliases) or "-",
                info.model_id or "(not embedq)",
                str(info.dim or "-"),
                str(info.rows if info.rows is not None else "-"),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


@in_milvus_session
def delete_command(args: argparse.Namespace, settings: Settings) -> int:
    """Delete rows of a collection by id or by filter expression."""
    from worker.milvus.catalog import collection_model
    from worker.milvus.filters import check_filter
    from worker.milvus.sink import open_sink

    filter_expr = check_filter(args.filter) if args.filter is not None else None
    access = open_milvus(settings)
    try:
        physical, model_id, dim = collection_model(access.client, args.collection)
    finally:
        access.close()
    sink = open_sink(settings.milvus_uri, settings.milvus_token, physical, model_id, dim)
    try:
        deleted = sink.delete(args.ids) if filter_expr is None else sink.delete_where(filter_expr)
    finally:
        sink.close()
    print(f"deleted {deleted} rows from {args.collection}")
    return 0


@in_milvus_session
def reindex_command(args: argparse.Namespace, settings: Settings) -> int:
    """Fill a new physical collection with another model, then move the alias to it in one step."""
    from producer.backfill import BackfillOptions, run_backfill
    from producer.backfill.idset import SeenIds
    from producer.client import EmbeddingClient
    from worker.cli.deletes import delete_missing
    from worker.cli.output import BackfillProgressBar
    from worker.milvus.aliases import adopt, current_physical, drop, make_ready, physical_name, point_alias

    model = check_model_id(args.model, "--model")
    if args.source is not None and not args.source.is_file():
        raise ConfigError(f"{args.source} is not a readable file: pass a JSONL, CSV, Parquet or text file")
    served_settings = _serving_model(settings, model)
    target = physical_name(args.collection, served_settings.model_id)
    access = open_milvus(settings)
    try:
        # An old-style collection (no alias yet) is adopted at the switch, not now: see aliases.py.
        old = current_physical(access, args.collection)
        if old is None and args.source is None:
            raise ConfigError(
                f"collection {args.collection!r} does not exist: fill it with `embedq backfill FILE "
                f"--collection {args.collection}`, or give the texts with --from FILE"
            )
        if old is not None and physical_name(args.collection, _model_of(access, old)) == target:
            raise InvalidInputError(
                f"collection {args.collection!r} already holds vectors of model {model!r}: nothing to "
                "reindex (to refresh its texts, run embedq backfill)"
            )
        if old is not None:
            # Lite: rows still in memory are copied for every page read back; and an old-style
            # collection's index is built now, while the new one fills, not during its rename.
            make_ready(access, old)
        source = args.source or _dump_texts(access, args.collection, target)
    finally:
        access.close()  # not held across the start of local workers
    with (
        SeenIds() as seen,
        serving(served_settings, needs_milvus=True) as served,
        EmbeddingClient.from_settings(served) as client,
    ):
        options = BackfillOptions(
            path=source, collection=target, chunk_size=args.chunk_size, skip_unchanged=True
        )
        with BackfillProgressBar(f"{source.name} -> {target}") as bar:
            summary = run_backfill(client, options, on_progress=bar.update, seen=seen)
        if summary.truncated:
            note(
                f"{summary.truncated} rows were longer than model {model!r} reads "
                f"({summary.max_tokens} tokens) and were truncated: a backfill of the source file "
                "with --split-tokens stores them as passages"
            )
        # Rows left in the target by an earlier, different attempt are not in the source: remove them.
        # The source lists rows (passages included), so rows are compared, not documents.
        stale = delete_missing(served, target, summary, seen, None, by_row=True)
    if stale is None:
        note(
            f"reindex incomplete ({summary.failed} documents failed): {args.collection!r} still names "
            f"{old!r}; fix the errors above and run the same command again"
        )
        return EXIT_FAILED
    access = open_milvus(settings)
    try:
        expected = None if args.source is not None else _rows(access, old)
        got = _rows(access, target)
        if expected is not None and got != expected:
            note(
                f"reindex incomplete: {target!r} holds {got} rows, {old!r} {expected} (written to "
                "meanwhile?): the alias was not moved; run the same command again"
            )
            return EXIT_FAILED
        _keep_passages_mark(access, old, target)
        if old == args.collection:
            started = time.monotonic()
            old = adopt(access, args.collection)
            note(f"adopted {args.collection!r}: renamed to {old!r} in {time.monotonic() - started:.1f} s")
        point_alias(access, args.collection, target)
        reused = (
            f"; {summary.unchanged} were already written by an earlier attempt" if summary.unchanged else ""
        )
        print(
            f"reindexed {args.collection}: {got} rows of model {client.model} in {target} (was {old}{reused})"
        )
        if args.drop_old and old is not None:
            drop(access, old)
            print(f"dropped {old}")
    finally:
        access.close()
    return 0


def _keep_passages_mark(access: MilvusAccess, old: str | None, target: str) -> None:
    """Mark ``target`` as holding passages when ``old`` did (its rows were copied, metadata and all)."""
    from worker.milvus.connection import milvus_errors
    from worker.milvus.passages import has_passages, mark_passages

    if old is None:
        return
    with milvus_errors(f"mark {target!r} as holding passages"):
        if has_passages(access.client, old, timeout_s=access.timeout_s):
            mark_passages(access.client, target, access.write_guard, timeout_s=access.timeout_s)


def _model_of(access: MilvusAccess, physical: str) -> str:
    from worker.milvus.catalog import collection_model
    from worker.milvus.connection import milvus_errors

    with milvus_errors(f"read the model of {physical!r}"):
        return collection_model(access.client, physical, timeout_s=access.timeout_s)[1]


def _rows(access: MilvusAccess, physical: str | None) -> int:
    if physical is None:
        return 0
    from worker.milvus.connection import milvus_errors

    with milvus_errors(f"count the rows of {physical!r}"):
        rows = access.client.query(
            physical, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
    return int(rows[0]["count(*)"])


def _dump_texts(access: MilvusAccess, collection: str, target: str) -> Path:
    """Stream the ids, texts and metadata stored in ``collection`` to a JSONL file (bounded memory)."""
    from worker.milvus.catalog import collection_model
    from worker.milvus.connection import milvus_errors
    from worker.milvus.content import visible_metadata
    from worker.milvus.schema import ID_FIELD, METADATA_FIELD, TEXT_FIELD
    from worker.milvus.sync import iterate_rows

    physical, _, _ = collection_model(access.client, collection)
    REINDEX_DIR.mkdir(parents=True, exist_ok=True)
    path = REINDEX_DIR / f"{target}.jsonl"
    partial = path.with_suffix(".partial")
    with milvus_errors(f"read the texts of {collection!r}"), partial.open("w", encoding="utf-8") as out:
        fields = [ID_FIELD, TEXT_FIELD, METADATA_FIELD]
        for batch in iterate_rows(access.client, physical, fields, timeout_s=access.timeout_s):
            for row in batch:
                metadata = visible_metadata(row[METADATA_FIELD] or {})
                record = {**metadata, "id": row[ID_FIELD], "text": row[TEXT_FIELD]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path
