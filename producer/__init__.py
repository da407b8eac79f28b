"""embedq producer: enqueue texts for the embedding workers and read their vectors back.

The public names are imported on first use, so that ``import producer.errors`` (which a worker
and the gateway do) costs only that module and never loads Celery.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.client import EmbeddingClient
    from producer.embedding_function import Model2VecEmbeddingFunction
    from producer.errors import (
        BrokerUnavailableError,
        ConfigError,
        DeadlineExceededError,
        EmbedqError,
        InvalidInputError,
        MessageDecodeError,
        ModelLoadError,
        ModelMismatchError,
        NoWorkerError,
        OverloadedError,
        PermanentError,
        ResultTimeoutError,
        SinkUnavailableError,
        TaskFailedError,
        TransientError,
    )
    from producer.job import Job, JobStatus
    from producer.settings import Settings, load_settings

_ERRORS = (
    "BrokerUnavailableError",
    "ConfigError",
    "DeadlineExceededError",
    "EmbedqError",
    "InvalidInputError",
    "MessageDecodeError",
    "ModelLoadError",
    "ModelMismatchError",
    "NoWorkerError",
    "OverloadedError",
    "PermanentError",
    "ResultTimeoutError",
    "SinkUnavailableError",
    "TaskFailedError",
    "TransientError",
)
_HOME: dict[str, str] = {
    "EmbeddingClient": "producer.client",
    "Model2VecEmbeddingFunction": "producer.embedding_function",
    "Job": "producer.job",
    "JobStatus": "producer.job",
    "Settings": "producer.settings",
    "load_settings": "producer.settings",
    **dict.fromkeys(_ERRORS, "producer.errors"),
}

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "DeadlineExceededError",
    "EmbeddingClient",
    "EmbedqError",
    "InvalidInputError",
    "Job",
    "JobStatus",
    "MessageDecodeError",
    "Model2VecEmbeddingFunction",
    "ModelLoadError",
    "ModelMismatchError",
    "NoWorkerError",
    "OverloadedError",
    "PermanentError",
    "ResultTimeoutError",
    "Settings",
    "SinkUnavailableError",
    "TaskFailedError",
    "TransientError",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
