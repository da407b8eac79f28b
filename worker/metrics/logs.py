"""``--log-format json``: one JSON object per log line, for the worker and the ``embedq`` command.

Each line carries time, level, logger and message, plus the task id and task name when a Celery
task logs, and the structured fields a record was given under ``extra={"embedq": {...}}`` (task
summaries: model, counts, durations). Celery's own task records are stripped of their argument
and return-value reprs, so texts and vectors never reach the log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

# Celery puts these in the args of its "received"/"succeeded"/"failed" records; they can hold
# texts (a producer that set no argsrepr) or vector bytes (the result repr).
_HIDDEN_ARGS: Final = frozenset({"args", "kwargs", "return_value", "result"})
_TASK_FIELDS: Final = {"id": "task_id", "name": "task", "runtime": "runtime_s"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (never texts, vectors or secrets: see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single-line JSON object."""
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if isinstance(args, Mapping) and _HIDDEN_ARGS & args.keys():
            # One of Celery's task records: keep its ids and runtime as fields, hide the reprs.
            args = {key: ("<hidden>" if key in _HIDDEN_ARGS else value) for key, value in args.items()}
            for key, name in _TASK_FIELDS.items():
                if key in args:
                    fields[name] = args[key]
            template = str(record.msg).replace(": %(return_value)s", "")
            fields["message"] = template % args
        else:
            fields["message"] = record.getMessage()
        fields.update(_current_task_fields())
        extra = getattr(record, "embedq", None)
        if isinstance(extra, Mapping):
            fields.update(extra)
        if record.exc_info:
            error = record.exc_info[1]
            fields["error_type"] = type(error).__name__
            fields["traceback"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)


def _current_task_fields() -> dict[str, Any]:
    """Return the running Celery task's id and name, if a task is running in this thread."""
    from celery import current_task  # cheap: celery is loaded wherever tasks run

    task = current_task
    if task is None or not getattr(task, "request", None) or task.request.id is None:
        return {}
    return {"task_id": task.request.id, "task": task.name}


def use_json_format(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def install_worker_json_logs() -> None:
    """Switch the Celery worker's log handlers to JSON once Celery sets them up.

    Until then (warnings while the worker starts), a JSON handler on the root logger takes the
    records and ``warnings``; Celery replaces it with its own handlers, which are then switched.
    """
    from celery import signals

    logging.captureWarnings(True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]

    def switch(logger: logging.Logger | None = None, **_: Any) -> None:
        # Every logger Celery gave handlers: root, task and billiard's pool logger.
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for each in loggers:
            if isinstance(each, logging.Logger):
                use_json_format(each)

    signals.after_setup_logger.connect(switch, weak=False)
    signals.after_setup_task_logger.connect(switch, weak=False)


class _CliState:
    json_lines = False


def configure_cli_logs(log_format: str, stream: TextIO | None = None) -> None:
    """Set how the ``embedq`` command writes its notes and log records (``text`` or ``json``)."""
    _CliState.json_lines = log_format == "json"
    if _CliState.json_lines:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)


def note(message: str) -> None:
    """Write one ``embedq: ...`` note to stderr, or one JSON object in JSON mode."""
    if _CliState.json_lines:
        level = "error" if message.startswith("error: ") else "info"
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "logger": "embedq",
            "message": message.removeprefix("error: "),
        }
        print(json.dumps(line, ensure_ascii=False), file=sys.stderr, flush=True)
    else:
        print(f"embedq: {message}", file=sys.stderr, flush=True)
