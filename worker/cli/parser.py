"""The arguments of ``embedq`` and its subcommands, with their help texts."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.commands import (
    backfill_command,
    embed_command,
    status_command,
    worker_command,
)
from worker.cli.lifecycle import search_command
from worker.cli.lifecycle_parser import add_lifecycle_commands

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
  embedq backfill corpus.jsonl --collection docs --delete-missing   # daily sync of an edited file
  embedq backfill articles.jsonl --collection articles --split-tokens 256 --overlap 32

Interrupted (Ctrl-C) or failed runs resume where they stopped: run the same command again.
Documents already stored with the same text and metadata are neither re-embedded nor re-written.
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
  embedq search "static embeddings" --collection docs --filter 'metadata["lang"] == "en"' --json
  embedq search "static embeddings" --collection docs --output-fields text,metadata
  embedq search "static embeddings" --collection articles --group-by-document

The query is embedded with the model the collection records (see embedq collections).
"""


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {raw!r}")
    return value


def _non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {raw!r}")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}")
    return value


def _in_flight(raw: str) -> int | str:
    from producer.backfill.in_flight import parse_in_flight  # imports no Celery
    from producer.errors import ConfigError

    try:
        return parse_in_flight(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(raw: str) -> object:
    from producer.backfill.shards import parse_shard
    from producer.errors import ConfigError

    try:
        return parse_shard(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    worker.set_defaults(run=worker_command)

    embed = _subcommand(commands, "embed", "Embed texts and print their vectors.", _EMBED_EPILOG)
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed; '-' reads one text per line")
    embed.add_argument("--query", action="store_true", help="embed as search queries, not documents")
    embed.add_argument("--json", action="store_true", help="print a JSON list of vectors (lists of floats)")
    embed.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds to wait (default: 60)")
    embed.set_defaults(run=embed_command)

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
        "--max-in-flight",
        type=_in_flight,
        default="auto",
        help="tasks queued at once, or 'auto': two per live pool process of the model's bulk queue, "
        "re-read as workers come and go (default: auto)",
    )
    backfill.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="take only shard K of N of the file (every N-th chunk), so N producers share one corpus; "
        "each shard resumes on its own, `embedq status` on the job id without -shardKofN sums them",
    )
    backfill.add_argument(
        "--delete-missing",
        action="store_true",
        help="after the whole file was read and written without error, delete the rows whose ids it lacks",
    )
    backfill.add_argument(
        "--rewrite-all",
        action="store_true",
        help="re-embed and re-write every document, even those stored with the same content",
    )
    backfill.add_argument(
        "--split-tokens",
        type=_positive_int,
        metavar="N",
        help="store each document as passages of at most N tokens of the model's tokenizer, rows "
        "<id>#0, <id>#1, ... whose metadata _parent holds the document id (N at most the model's max_length)",
    )
    backfill.add_argument(
        "--overlap",
        type=_non_negative_int,
        default=0,
        metavar="M",
        help="tokens consecutive passages share, with --split-tokens (default: 0)",
    )
    backfill.set_defaults(run=backfill_command)

    status = _subcommand(
        commands, "status", "Show the state of an embedding job or a backfill.", _STATUS_EPILOG
    )
    status.add_argument("job_id", metavar="JOB_OR_TASK_ID", help="id printed by embed jobs or backfill")
    status.set_defaults(run=status_command)

    search = _subcommand(
        commands, "search", "Find the documents of a collection nearest to a query.", _SEARCH_EPILOG
    )
    search.add_argument("query", metavar="QUERY", help="the search text")
    search.add_argument("--collection", required=True, help="Milvus collection filled by embedq backfill")
    search.add_argument("--top-k", type=_positive_int, default=10, help="hits to show (default: 10)")
    search.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds to wait (default: 60)")
    search.add_argument(
        "--filter", metavar="EXPR", help='Milvus boolean expression, e.g. metadata["lang"] == "en"'
    )
    search.add_argument(
        "--output-fields",
        metavar="A,B",
        help="fields to show besides id and score: text, metadata (default: text)",
    )
    search.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    search.add_argument(
        "--group-by-document",
        action="store_true",
        help="return the best passage of each document (collections filled with --split-tokens)",
    )
    search.set_defaults(run=search_command)
    add_lifecycle_commands(commands, _subcommand, _positive_int, _positive_float)

    from worker.gateway.serve import SERVE_EPILOG, add_serve_arguments, run_serve

    summary = "Serve the HTTP gateway: OpenAI and TEI embeddings, jobs."
    serve = _subcommand(commands, "serve", summary, SERVE_EPILOG)
    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)
    return parser
