"""embedq producer: enqueue texts for the embedding workers and read their vectors back."""

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
