"""Redis Sentinel settings: URL checks, the master name, and the Celery configuration they give."""

from __future__ import annotations

import pytest

from producer.celery_config import backend_url, build_celery_app, celery_conf
from producer.errors import ConfigError
from producer.settings import Settings, load_settings

URL = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3/0"


def test_sentinel_urls_need_a_master_name_and_pass_it_to_broker_and_results() -> None:
    with pytest.raises(ConfigError, match="EMBEDQ_SENTINEL_MASTER is not set"):
        load_settings({"EMBEDQ_BROKER_URL": URL})
    settings = load_settings({"EMBEDQ_BROKER_URL": URL, "EMBEDQ_SENTINEL_MASTER": "mymaster"})
    conf = celery_conf(settings)
    assert conf["broker_url"] == URL
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["result_backend_transport_options"] == {"master_name": "mymaster"}
    assert conf["result_backend"].endswith(":PollingSentinelBackend+" + URL)
    app = build_celery_app(settings, "embedq-test")
    assert backend_url(app) == URL
    assert type(app.backend).__name__ == "PollingSentinelBackend"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://10.0.0.1:26379;redis://10.0.0.2:6379/0", "mixes sentinel and other addresses"),
        ("sentinel://:26379", "names no host"),
        ("sentinel://h:notaport", "invalid sentinel address"),
        ("sentinel://h:26379/zero", "database number"),
        ("redis-cluster://h:7000", "Redis Cluster is not supported by Celery"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Settings(broker_url=url, sentinel_master="m")


def test_a_master_name_without_sentinels_changes_nothing_for_plain_redis() -> None:
    conf = celery_conf(Settings(broker_url="redis://h:6379/0", sentinel_master="m"))
    assert conf["broker_transport_options"]["master_name"] == "m"  # ignored by the plain Redis transport
    assert ":PollingRedisBackend+" in conf["result_backend"]


def test_sentinel_addresses_and_an_async_client_of_the_primary() -> None:
    from redis.asyncio import Redis

    from producer.sentinel import async_redis_for, sentinel_addresses

    assert sentinel_addresses(URL) == ([("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)], 0)
    assert sentinel_addresses("sentinel://h:1;sentinel://k:2/3") == ([("h", 1), ("k", 2)], 3)
    client = async_redis_for(URL, "mymaster", socket_timeout=1.0)
    assert isinstance(client, Redis)
    assert type(client.connection_pool).__name__ == "SentinelConnectionPool"
    plain = async_redis_for("redis://h:6379/2", None)
    assert plain.connection_pool.connection_kwargs["db"] == 2
