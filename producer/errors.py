"""The one error hierarchy of embedq, shared by producers and workers.

Two branches: :class:`TransientError` (the same request may succeed later: retry with backoff)
and :class:`PermanentError` (the request itself is wrong: fail fast, never retry). Every error
names the problem and the fix. Errors cross the queue by name (see :func:`error_from_name`), so
a producer gets back the same type the worker raised.
"""

from __future__ import annotations


class EmbedqError(Exception):
    """Base class of every error embedq raises on purpose."""


class TransientError(EmbedqError):
    """A failure that may go away on its own (broker, Milvus or a worker briefly unavailable)."""


class PermanentError(EmbedqError):
    """A failure that retrying the same request cannot fix."""


class ConfigError(PermanentError, ValueError):
    """A setting (environment variable or argument) is invalid; raised at start-up."""


class InvalidInputError(PermanentError, ValueError):
    """The texts or documents of a request are not acceptable (type, count or size)."""


class MessageDecodeError(PermanentError):
    """A queue message or task result is malformed (wrong schema, types or encoding)."""


class ModelLoadError(PermanentError):
    """A model folder or hub id could not be resolved or its files could not be read."""


class ModelMismatchError(PermanentError):
    """A request, result or collection names a different model or dimension than the one at hand."""


class TaskFailedError(PermanentError):
    """A task failed on the worker with an error type this process does not know."""


class BrokerUnavailableError(TransientError):
    """The Redis broker or result backend cannot be reached."""


class SinkUnavailableError(TransientError):
    """The Milvus server or Milvus Lite database cannot be reached or refused a write."""


class OverloadedError(TransientError):
    """The queue is deeper than the configured limit: retry later instead of growing Redis."""


class NoWorkerError(TransientError):
    """No worker consumes the queue a request was sent to."""


class ResultTimeoutError(TransientError, TimeoutError):
    """A result did not arrive within the caller's timeout (the task may still complete)."""


class DeadlineExceededError(ResultTimeoutError):
    """A worker dropped a request unencoded: its caller's deadline passed while it sat in the queue."""


_BY_NAME: dict[str, type[EmbedqError]] = {
    cls.__name__: cls
    for cls in (
        EmbedqError,
        TransientError,
        PermanentError,
        ConfigError,
        InvalidInputError,
        MessageDecodeError,
        ModelLoadError,
        ModelMismatchError,
        TaskFailedError,
        BrokerUnavailableError,
        SinkUnavailableError,
        OverloadedError,
        NoWorkerError,
        ResultTimeoutError,
        DeadlineExceededError,
    )
}


def error_from_name(name: str, message: str) -> EmbedqError:
    """Rebuild an error that crossed the queue as ``(type name, message)``."""
    cls = _BY_NAME.get(name)
    if cls is None:
        return TaskFailedError(f"{name}: {message}")
    return cls(message)


EXIT_FAILED = 1
EXIT_PERMANENT = 2  # fix the input or configuration
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: try again later


def exit_code(error: EmbedqError) -> int:
    """Return a process exit code for an error: 75 to retry later, 2 to fix the input or configuration."""
    if isinstance(error, TransientError):
        return EXIT_TEMPFAIL
    if isinstance(error, PermanentError):
        return EXIT_PERMANENT
    return EXIT_FAILED
