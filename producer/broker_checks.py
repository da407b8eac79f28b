"""What embedq checks of its Redis broker: its eviction policy, and which errors are configuration mistakes.

Under ``maxmemory-policy allkeys-*`` Redis evicts whole queue lists when memory is full: accepted
tasks vanish with no error anywhere. Workers and clients read the policy once at start (see
:func:`eviction_policy_problem`) and refuse such a broker unless told it is on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from producer.errors import BrokerUnavailableError, ConfigError, EmbedqError

logger = logging.getLogger(__name__)

ALLOW_EVICTING_VARIABLE: Final = "EMBEDQ_ALLOW_EVICTING_BROKER"
SAFE_POLICY: Final = "noeviction"
# Redis replies that no retry can fix: a wrong password or user, a missing permission, a database
# number the server does not have.
_CONFIG_REPLIES: Final = ("WRONGPASS", "NOAUTH", "NOPERM", "INVALID PASSWORD", "DB INDEX IS OUT OF RANGE")
_CONFIG_HINT: Final = (
    "check the user, password and database number in EMBEDQ_BROKER_URL (and EMBEDQ_RESULT_BACKEND); "
    "retrying cannot fix this"
)


def is_config_error(exc: BaseException) -> bool:
    """Tell whether a Redis error is a configuration mistake (credentials, permissions, database number)."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return True
    if isinstance(exc, ResponseError):
        reply = str(exc).upper()
        return any(marker in reply for marker in _CONFIG_REPLIES) or "INVALID DB INDEX" in reply
    return False


def refuse_at_once(exc: BaseException, interval: float) -> None:
    """Kombu's connection errback: re-raise a credentials or database mistake instead of retrying it.

    kombu retries a refused AUTH like a broker that is down (redis-py's AuthenticationError is a
    ConnectionError): a wrong password took 6 s of retries to be reported. Anything else is
    left to kombu's retries.
    """
    if is_config_error(exc):
        raise exc


def broker_error(exc: BaseException, shown_url: str, action: str = "reach") -> EmbedqError:
    """Return the embedq error for a failure to ``action`` the broker at ``shown_url`` (already redacted).

    Credentials and database mistakes are a ConfigError (exit 2, said once); anything else may
    go away on its own and is a BrokerUnavailableError (exit 75, retried).
    """
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if is_config_error(exc):
        return ConfigError(f"the Redis broker at {shown_url} refused embedq: {detail}; {_CONFIG_HINT}")
    tls_hint = (
        " (a rediss:// URL needs a Redis that speaks TLS: use redis:// for a plain one)"
        if shown_url.startswith("rediss://") and "timeout" in detail.lower()
        else ""
    )
    return BrokerUnavailableError(
        f"cannot {action} the Redis broker at {shown_url}: {detail}{tls_hint}; "
        "check EMBEDQ_BROKER_URL and that Redis is up"
    )


def eviction_policy_problem(client: Any, shown_url: str, *, allow_evicting: bool) -> tuple[int, str] | None:
    """Read the broker's ``maxmemory-policy``; return ``(log level, one line)`` worth saying, or None.

    Raises ConfigError for an ``allkeys-*`` policy unless ``allow_evicting``. A server that
    refuses ``CONFIG GET`` (managed Redis) gets a note, not a failure.
    """
    try:
        reply = client.config_get("maxmemory-policy")
    except ResponseError as exc:
        if "NOAUTH" in str(exc).upper() or "WRONGPASS" in str(exc).upper():
            raise
        return (
            logging.INFO,
            f"note: the Redis broker at {shown_url} does not allow CONFIG GET, so embedq cannot check its "
            f"maxmemory-policy: make sure it is {SAFE_POLICY}, or queued work can be evicted",
        )
    policy = _decoded(reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy"))
    if policy is None or policy == SAFE_POLICY:
        return None
    if policy.startswith("allkeys-"):
        message = (
            f"the Redis broker at {shown_url} has maxmemory-policy {policy}: when memory is full it evicts "
            f"queued tasks silently. Set maxmemory-policy {SAFE_POLICY} (CONFIG SET maxmemory-policy "
            f"{SAFE_POLICY}, or in redis.conf), or set {ALLOW_EVICTING_VARIABLE}=1 to accept losing work"
        )
        if not allow_evicting:
            raise ConfigError(message)
        return logging.WARNING, f"{message} ({ALLOW_EVICTING_VARIABLE} is set: going on)"
    return (
        logging.WARNING,
        f"the Redis broker at {shown_url} has maxmemory-policy {policy}: when memory is full it can evict "
        f"results (they carry a TTL) before callers read them; {SAFE_POLICY} is safer",
    )


def check_broker_policy(
    open_client: Callable[[], Any],
    shown_url: str,
    *,
    allow_evicting: bool,
    unreachable_ok: bool = False,
    say: Callable[[int, str], None] = logger.log,
) -> bool:
    """Check the broker's eviction policy once and log what is worth saying; ConfigError if it loses work.

    Return False if the broker could not be reached (with ``unreachable_ok``), True otherwise.

    ``open_client`` is a context manager factory lending a Redis client. An unreachable broker
    raises BrokerUnavailableError, unless ``unreachable_ok`` (a worker: Celery waits for it).
    """
    try:
        with open_client() as client:
            said = eviction_policy_problem(client, shown_url, allow_evicting=allow_evicting)
    except RedisError as exc:
        if is_config_error(exc):
            raise broker_error(exc, shown_url) from exc
        say(logging.INFO, f"could not check the broker's maxmemory-policy: {exc}")
        return True
    except BrokerUnavailableError as exc:
        if not unreachable_ok:
            raise
        say(logging.INFO, f"could not check the broker's maxmemory-policy yet: {exc}")
        return False
    if said is not None:
        say(*said)
    return True


def _decoded(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
