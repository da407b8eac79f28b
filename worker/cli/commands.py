"""What each ``embedq`` subcommand does; heavy imports (model stack, pymilvus) stay inside them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace

from producer.errors import EXIT_FAILED, ConfigError, InvalidInputError
from producer.protocol.texts import validate_texts
from producer.settings import Settings, check_model_id


def note(message: str) -> None:
    """Print one line for the user on stderr, prefixed with embedq (a JSON object with --log-format json)."""
    from worker.metrics.logs import note as write_note

    write_note(message)


def _uses_embedded_cluster(environ: Mapping[str, str]) -> bool:
    return not environ.get("EMBEDQ_BROKER_URL", "").strip()


@contextmanager
def serving(settings: Settings, *, needs_milvus: bool) -> Iterator[Settings]:
    """Yield settings whose broker has workers: EMBEDQ_BROKER_URL's, or an embedded local cluster's."""
    if not _uses_embedded_cluster(os.environ):
        yield settings
        return
    from worker.local.cluster import LocalCluster

    with LocalCluster(settings, needs_milvus=needs_milvus) as cluster:
        note(cluster.describe())
        yield cluster.settings


def worker_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run a Celery worker for the configured model on EMBEDQ_BROKER_URL."""
    from worker.queue.app import run_worker

    if args.model is not None:
        settings = replace(settings, model=check_model_id(args.model, "--model"))
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    queues = _names(args.queues) if args.queues else None
    return run_worker(settings, concurrency=args.concurrency, queues=queues, loglevel=args.loglevel)


def _names(comma_separated: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in comma_separated.split(",") if name.strip())


def _read_texts(arguments: Sequence[str]) -> list[str]:
    if list(arguments) != ["-"]:
        return list(arguments)
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def embed_command(args: argparse.Namespace, settings: Settings) -> int:
    """Embed the texts given (or read from stdin) and print their vectors."""
    from producer.client import EmbeddingClient
    from worker.cli.output import vector_summary, vectors_json

    texts = _read_texts(args.texts)
    # Checked before any local worker starts: a bad line is reported at once, not seconds later.
    if not texts:
        raise InvalidInputError("no texts to embed: pass them as arguments or as lines on stdin with -")
    validate_texts(texts, max_texts=None, max_text_chars=settings.max_text_chars)
    with serving(settings, needs_milvus=False) as served, EmbeddingClient.from_settings(served) as client:
        job = client.embed_queries(texts) if args.query else client.embed_documents(texts)
        vectors = job.result(timeout_s=args.timeout)
        # Printed before the local workers stop (about a second), so the answer shows at once.
        if args.json:
            print(vectors_json(vectors), flush=True)
        else:
            for index, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
                print(vector_summary(index, text, vector), flush=True)
    return 0


def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    """Stream a corpus file through the workers into a Milvus collection."""
    from producer.backfill import BackfillOptions, run_backfill
    from producer.client import EmbeddingClient
    from worker.cli.deletes import manifest_for
    from worker.cli.output import SHOWN_ERRORS, BackfillProgressBar, backfill_summary_line, failure_hint
    from worker.cli.sync import clear_sync_mark, sync_backfill

    if not args.file.is_file():
        raise ConfigError(
            f"{args.file} is not a readable file: pass the path of a JSONL, CSV, Parquet or text file"
        )
    options = BackfillOptions(
        path=args.file,
        collection=args.collection,
        format=args.format,
        id_field=args.id_field or None,
        text_field=args.text_field,
        metadata_fields=None if args.metadata_fields is None else _names(args.metadata_fields),
        chunk_size=args.chunk_size,
        max_in_flight=args.max_in_flight,
        skip_unchanged=not args.rewrite_all,
        shard=args.shard,
        split_tokens=args.split_tokens,
        overlap_tokens=args.overlap,
    )
    manifest = manifest_for(settings, args.collection)
    recording = args.delete_missing or manifest.exists()  # a manifest learns every backfill's ids
    with (
        serving(settings, needs_milvus=True) as served,
        EmbeddingClient.from_settings(served) as client,
        BackfillProgressBar(f"{args.file.name} -> {args.collection}") as bar,
    ):
        deleted = None
        if recording:
            summary, deleted = sync_backfill(
                served,
                client,
                options,
                manifest,
                delete=args.delete_missing,
                on_progress=bar.update,
                on_notice=note,
            )
        else:
            clear_sync_mark(served, args.collection)  # a manifest elsewhere no longer describes it
            summary = run_backfill(client, options, on_progress=bar.update, on_notice=note)
    print(backfill_summary_line(summary, args.collection, deleted))
    if args.delete_missing and deleted is None:
        note("--delete-missing: nothing deleted, as the file was not read and written completely")
    for error in summary.errors[:SHOWN_ERRORS]:
        note(f"failed: {error}")
    if summary.failed:
        note(f"{summary.failed} documents failed; {failure_hint(summary.errors)}")
        return EXIT_FAILED
    return 0


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print the state of a job or a backfill, from the broker or the local progress file."""
    from producer.backfill import DEFAULT_STATE_DIR, backfill_status
    from producer.client import EmbeddingClient
    from worker.cli.output import backfill_progress_lines, job_status_lines

    if _uses_embedded_cluster(os.environ):
        lines = _local_backfill_lines(args.job_id)
        if lines is None:
            raise ConfigError(
                f"EMBEDQ_BROKER_URL is not set and {DEFAULT_STATE_DIR} in this directory holds no backfill "
                f"{args.job_id!r}: job states live on the broker, and without one each command runs an "
                "embedded broker that ends with it. Set EMBEDQ_BROKER_URL to your Redis, or run status "
                "in the directory the backfill ran in"
            )
    else:
        with EmbeddingClient.from_settings(settings, worker_wait_s=None) as client:
            found = backfill_status(client, args.job_id, state_dir=None)
            if found is not None:
                lines = backfill_progress_lines(found)
            else:
                lines = _local_backfill_lines(args.job_id) or job_status_lines(client.status(args.job_id))
    print("\n".join(lines))
    return 0


def _local_backfill_lines(job_id: str) -> list[str] | None:
    """Return the status lines of a backfill from its local progress file, or None if there is none."""
    from producer.backfill import DEFAULT_STATE_DIR, local_backfill_status
    from worker.cli.output import backfill_progress_lines, local_progress_line

    local = local_backfill_status(job_id, DEFAULT_STATE_DIR)
    if local is None:
        return None
    progress, written_at = local
    source = local_progress_line(DEFAULT_STATE_DIR, progress.state, written_at)
    return [*backfill_progress_lines(progress), source]
