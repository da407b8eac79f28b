"""Redis Sentinel URLs: ``sentinel://host:port;sentinel://host:port[/db]`` plus a master name.

Celery and kombu reach the current primary through the sentinels (broker: ``master_name`` in
``broker_transport_options``; results: in ``result_backend_transport_options``), so a failover
needs no change of configuration. Redis Cluster is a different thing that Celery does not support
as a broker at all (celery issue 2852). Imports nothing heavy: settings validate with it.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from producer.errors import ConfigError

SENTINEL_SCHEME: Final = "sentinel"
DEFAULT_SENTINEL_PORT: Final = 26379


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels rather than one Redis server."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def check_sentinel_url(url: str, variable: str) -> str:
    """Return ``url`` if every ``;``-separated part is ``sentinel://host[:port][/db]``; else ConfigError."""
    parts = [part.strip() for part in url.split(";")]
    example = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0"
    for part in parts:
        try:
            split = urlsplit(part)
            split.port  # noqa: B018 - parsing the port validates it
        except ValueError as exc:
            raise ConfigError(
                f"{variable} has an invalid sentinel address {part!r}: {exc} (e.g. {example})"
            ) from exc
        if split.scheme != SENTINEL_SCHEME or not split.hostname:
            raise ConfigError(
                f"{variable} mixes sentinel and other addresses, or names no host, in {part!r}: "
                f"list every sentinel as sentinel://host:port, separated by ';' (e.g. {example})"
            )
        db = split.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"{variable} must end in a database number such as /0, got {part!r}")
    return url


def check_master_name(master: str | None, urls: tuple[str, ...]) -> str | None:
    """Return the master name, required when any of ``urls`` is a sentinel URL; else ConfigError."""
    if any(is_sentinel_url(url) for url in urls):
        if not master:
            raise ConfigError(
                "EMBEDQ_BROKER_URL or EMBEDQ_RESULT_BACKEND names Redis Sentinels, but "
                "EMBEDQ_SENTINEL_MASTER is not set: set it to the master name the sentinels monitor "
                "(e.g. mymaster)"
            )
        if any(ch.isspace() for ch in master):
            raise ConfigError(f"EMBEDQ_SENTINEL_MASTER must be a name without spaces, got {master!r}")
    return master


def sentinel_addresses(url: str) -> tuple[list[tuple[str, int]], int]:
    """Return the (host, port) of each sentinel of a checked sentinel URL, and its database number."""
    addresses = []
    db = 0
    for part in url.split(";"):
        split = urlsplit(part.strip())
        addresses.append((split.hostname or "", split.port or DEFAULT_SENTINEL_PORT))
        if split.path.strip("/"):
            db = int(split.path.strip("/"))
    return addresses, db


def async_redis_for(url: str, master: str | None, **options: Any) -> Any:
    """Return a ``redis.asyncio`` client of ``url`` (of the sentinels' current primary for sentinel URLs)."""
    import redis.asyncio as aioredis  # the producer's light imports stay light
    from redis.asyncio.sentinel import Sentinel

    if not is_sentinel_url(url):
        return aioredis.Redis.from_url(url, **options)
    addresses, db = sentinel_addresses(url)
    sentinel = Sentinel(addresses, **options)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    return sentinel.master_for(master or "", db=db, **options)
