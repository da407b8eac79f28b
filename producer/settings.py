"""The one frozen Settings object of a process, built from ``EMBEDQ_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from producer.errors import ConfigError
from producer.protocol.names import BUNDLED_MODEL_ID
from producer.redaction import redact_url as redact_url  # re-exported: redact_url has always lived here
from producer.redaction import url_secrets
from producer.sentinel import check_master_name, check_sentinel_url, is_sentinel_url

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
LOG_FORMATS = ("text", "json")
DEFAULT_MILVUS_URI = "./embedq.db"

REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+socket"})
_MAX_MODEL_ID_CHARS = 512
TOKENIZER_CHOICES = ("auto", "fast", "tokenizers")  # EMBEDQ_TOKENIZER: see worker.encoding.fast_tokenizing


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one producer or worker process (secrets hidden from ``repr``)."""

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = ""  # empty: the broker URL
    model: str | None = None
    result_ttl_s: int = 3600
    max_texts_per_request: int = 4096
    max_text_chars: int = 100_000
    task_time_limit_s: int = 300
    visibility_timeout_s: int = 3600
    retry_backoff_s: float = 1.0  # a transient failure's first retry delay; doubles, capped at a minute
    milvus_uri: str = DEFAULT_MILVUS_URI
    milvus_token: str | None = None
    concurrency: int | None = None
    max_queue_depth: int = 10_000
    batch_wait_ms: float | None = 2.0  # None: one task per request, no coalescing
    batch_max_texts: int = 128
    batch_max_chars: int = 200_000
    batch_max_in_flight: int = 2
    metrics_port: int | None = None  # the worker's /metrics, /health and /ready; None: off
    log_format: str = "text"  # or "json": one JSON object per log line
    tokenizer: str = "auto"
    allow_evicting_broker: bool = False  # EMBEDQ_ALLOW_EVICTING_BROKER: accept an allkeys-* broker
    sentinel_master: str | None = None  # the master name, with sentinel:// URLs

    def __post_init__(self) -> None:
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.broker_url)
        check_redis_url(self.broker_url, "EMBEDQ_BROKER_URL")
        check_redis_url(self.result_backend, "EMBEDQ_RESULT_BACKEND")
        check_master_name(self.sentinel_master, (self.broker_url, self.result_backend))
        if self.model is not None:
            check_model_id(self.model, "EMBEDQ_MODEL")
        for name, value in (
            ("EMBEDQ_RESULT_TTL_S", self.result_ttl_s),
            ("EMBEDQ_MAX_TEXTS_PER_REQUEST", self.max_texts_per_request),
            ("EMBEDQ_MAX_TEXT_CHARS", self.max_text_chars),
            ("EMBEDQ_TASK_TIME_LIMIT_S", self.task_time_limit_s),
            ("EMBEDQ_VISIBILITY_TIMEOUT_S", self.visibility_timeout_s),
            ("EMBEDQ_CONCURRENCY", 1 if self.concurrency is None else self.concurrency),
            ("EMBEDQ_MAX_QUEUE_DEPTH", self.max_queue_depth),
            ("EMBEDQ_BATCH_MAX_TEXTS", self.batch_max_texts),
            ("EMBEDQ_BATCH_MAX_CHARS", self.batch_max_chars),
            ("EMBEDQ_BATCH_MAX_IN_FLIGHT", self.batch_max_in_flight),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        self._check_delays()
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError(f"EMBEDQ_METRICS_PORT must be a TCP port 1-65535, got {self.metrics_port!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"EMBEDQ_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.tokenizer not in TOKENIZER_CHOICES:
            raise ConfigError(
                f"EMBEDQ_TOKENIZER must be one of {', '.join(TOKENIZER_CHOICES)}, got {self.tokenizer!r}"
            )
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ConfigError(
                f"EMBEDQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed "
                f"EMBEDQ_TASK_TIME_LIMIT_S ({self.task_time_limit_s}): Redis would hand a running task "
                "to a second worker; raise the visibility timeout or lower the time limit"
            )

    def _check_delays(self) -> None:
        wait_ms = self.batch_wait_ms
        if wait_ms is not None and (isinstance(wait_ms, bool) or not 0 <= wait_ms <= 1000):
            raise ConfigError(f"EMBEDQ_BATCH_WAIT_MS must be between 0 and 1000 or 'off', got {wait_ms!r}")
        backoff_s = self.retry_backoff_s
        if isinstance(backoff_s, bool) or not isinstance(backoff_s, (int, float)) or not 0 < backoff_s <= 60:
            raise ConfigError(
                f"EMBEDQ_RETRY_BACKOFF_S must be above 0 and at most 60 seconds, got {backoff_s!r}"
            )

    @property
    def model_id(self) -> str:
        """The id a worker serving this configuration reports (and routes by)."""
        return self.model if self.model is not None else BUNDLED_MODEL_ID

    def __repr__(self) -> str:
        token = None if self.milvus_token is None else "***"
        return (
            f"Settings(broker_url={redact_url(self.broker_url)!r}, "
            f"result_backend={redact_url(self.result_backend)!r}, model={self.model!r}, "
            f"result_ttl_s={self.result_ttl_s}, max_texts_per_request={self.max_texts_per_request}, "
            f"max_text_chars={self.max_text_chars}, task_time_limit_s={self.task_time_limit_s}, "
            f"visibility_timeout_s={self.visibility_timeout_s}, retry_backoff_s={self.retry_backoff_s}, "
            f"milvus_uri={redact_url(self.milvus_uri)!r}, "
            f"milvus_token={token!r}, concurrency={self.concurrency}, "
            f"max_queue_depth={self.max_queue_depth}, metrics_port={self.metrics_port}, "
            f"log_format={self.log_format!r}, batch_wait_ms={self.batch_wait_ms}, "
            f"batch_max_texts={self.batch_max_texts}, batch_max_chars={self.batch_max_chars}, "
            f"batch_max_in_flight={self.batch_max_in_flight}, "
            f"tokenizer={self.tokenizer!r})"
        )


def check_redis_url(url: str, variable: str) -> str:
    """Return ``url`` if it is a Redis URL Celery can use; else raise ConfigError naming ``variable``."""
    if is_sentinel_url(url):
        return check_sentinel_url(url, variable)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        # The parser's message may quote any piece of a password it misread as host or port.
        detail = "its user info does not parse" if url_secrets(url) else str(exc)
        raise ConfigError(
            f"{variable} is not a valid URL ({redact_url(url)!r}): {detail}; percent-encode special "
            "characters in the password (# as %23, / as %2F, @ as %40)"
        ) from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"{variable} must be a redis://, rediss://, redis+socket:// or sentinel:// URL (Redis Cluster "
            f"is not supported by Celery), got {redact_url(url)!r}"
        )
    if parts.scheme != "redis+socket" and not parts.hostname:
        raise ConfigError(f"{variable} names no host: {redact_url(url)!r} (e.g. redis://localhost:6379/0)")
    db = parts.path.strip("/")
    if parts.scheme != "redis+socket" and db and not db.isdigit():
        raise ConfigError(f"{variable} must end in a database number such as /0, got {redact_url(url)!r}")
    return url


def _text(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = _text(environ, name)
    if raw is None:
        return default
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}") from None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = _text(environ, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None


def _wait_ms(environ: Mapping[str, str], name: str, default: float) -> float | None:
    raw = _text(environ, name)
    if raw is None:
        return default
    if raw.lower() in ("off", "none"):
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of milliseconds or 'off', got {raw!r}") from None


def check_model_id(model: str, variable: str) -> str:
    """Return ``model`` if it can name a model and its queue; else raise ConfigError naming ``variable``."""
    if (
        not isinstance(model, str)
        or not model
        or len(model) > _MAX_MODEL_ID_CHARS
        or any(ch.isspace() or not ch.isprintable() for ch in model)
    ):
        raise ConfigError(
            f"{variable} must be a hub id or folder path of 1 to {_MAX_MODEL_ID_CHARS} printable "
            f"characters without spaces, got {str(model)[:80]!r}"
        )
    return model


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the Settings from ``environ`` (default ``os.environ``); raise ConfigError."""
    env = os.environ if environ is None else environ
    broker_url = _text(env, "EMBEDQ_BROKER_URL") or DEFAULT_BROKER_URL
    concurrency = _text(env, "EMBEDQ_CONCURRENCY")
    metrics_port = _text(env, "EMBEDQ_METRICS_PORT")
    return Settings(
        broker_url=broker_url,
        result_backend=_text(env, "EMBEDQ_RESULT_BACKEND") or broker_url,
        model=_text(env, "EMBEDQ_MODEL"),
        result_ttl_s=_int(env, "EMBEDQ_RESULT_TTL_S", 3600),
        max_texts_per_request=_int(env, "EMBEDQ_MAX_TEXTS_PER_REQUEST", 4096),
        max_text_chars=_int(env, "EMBEDQ_MAX_TEXT_CHARS", 100_000),
        task_time_limit_s=_int(env, "EMBEDQ_TASK_TIME_LIMIT_S", 300),
        visibility_timeout_s=_int(env, "EMBEDQ_VISIBILITY_TIMEOUT_S", 3600),
        retry_backoff_s=_seconds(env, "EMBEDQ_RETRY_BACKOFF_S", 1.0),
        milvus_uri=_text(env, "EMBEDQ_MILVUS_URI") or DEFAULT_MILVUS_URI,
        milvus_token=_text(env, "EMBEDQ_MILVUS_TOKEN"),
        concurrency=None if concurrency is None else _int(env, "EMBEDQ_CONCURRENCY", 0),
        max_queue_depth=_int(env, "EMBEDQ_MAX_QUEUE_DEPTH", 10_000),
        batch_wait_ms=_wait_ms(env, "EMBEDQ_BATCH_WAIT_MS", 2.0),
        batch_max_texts=_int(env, "EMBEDQ_BATCH_MAX_TEXTS", 128),
        batch_max_chars=_int(env, "EMBEDQ_BATCH_MAX_CHARS", 200_000),
        batch_max_in_flight=_int(env, "EMBEDQ_BATCH_MAX_IN_FLIGHT", 2),
        metrics_port=None if metrics_port is None else _int(env, "EMBEDQ_METRICS_PORT", 0),
        log_format=(_text(env, "EMBEDQ_LOG_FORMAT") or "text").lower(),
        tokenizer=(_text(env, "EMBEDQ_TOKENIZER") or "auto").lower(),
        allow_evicting_broker=allow_evicting_broker(env),
        sentinel_master=_text(env, "EMBEDQ_SENTINEL_MASTER"),
    )


def allow_evicting_broker(environ: Mapping[str, str] | None = None) -> bool:
    """Whether EMBEDQ_ALLOW_EVICTING_BROKER opts in to a broker that may evict queued work."""
    env = os.environ if environ is None else environ
    raw = (_text(env, "EMBEDQ_ALLOW_EVICTING_BROKER") or "0").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"EMBEDQ_ALLOW_EVICTING_BROKER must be 1 or 0, got {raw!r}")
