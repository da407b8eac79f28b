"""GatewaySettings: the HTTP side's limits and API keys, read once from ``EMBEDQ_*`` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import ConfigError

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CLIENT_BATCH_SIZE = 2048  # OpenAI's limit on inputs per request
DEFAULT_REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class GatewaySettings:
    """API keys (empty: no auth), body and batch limits, and how long a request waits for its vectors."""

    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        for name, value in (
            ("EMBEDQ_MAX_BODY_BYTES", self.max_body_bytes),
            ("EMBEDQ_MAX_CLIENT_BATCH_SIZE", self.max_client_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"EMBEDQ_REQUEST_TIMEOUT_S must be positive, got {self.request_timeout_s!r}")


def parse_api_keys(raw: str | None) -> frozenset[str]:
    """Read ``EMBEDQ_API_KEYS``: comma-separated keys, or the path of a file with one key per line."""
    if raw is None or not raw.strip():
        return frozenset()
    value = raw.strip()
    if value.startswith(("/", "./", "~")) or Path(value).is_file():
        path = Path(value).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"EMBEDQ_API_KEYS names the file {path}, which cannot be read: {exc}") from exc
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"EMBEDQ_API_KEYS names the file {path}, which holds no key: add one per line")
    else:
        keys = [key.strip() for key in value.split(",") if key.strip()]
    return frozenset(keys)


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}") from None


def load_gateway_settings(environ: Mapping[str, str] | None = None) -> GatewaySettings:
    """Build and validate the GatewaySettings from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    return GatewaySettings(
        api_keys=parse_api_keys(env.get("EMBEDQ_API_KEYS")),
        max_body_bytes=int(_number(env, "EMBEDQ_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
        max_client_batch_size=int(
            _number(env, "EMBEDQ_MAX_CLIENT_BATCH_SIZE", DEFAULT_MAX_CLIENT_BATCH_SIZE)
        ),
        request_timeout_s=_number(env, "EMBEDQ_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S),
    )
