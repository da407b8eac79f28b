"""A worker on a Sentinel broker keeps the message guard."""

from __future__ import annotations

from producer.settings import Settings
from tests.support.fakes import FakeEncoder
from worker.queue.app import build_worker_app
from worker.queue.sentinel import GuardedSentinelChannel

URL = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0"


def test_a_sentinel_worker_keeps_the_message_guard() -> None:
    app = build_worker_app(Settings(broker_url=URL, sentinel_master="mymaster"), FakeEncoder())
    assert app.conf.broker_transport.endswith(":GuardedSentinelTransport")
    assert "GuardedChannel" in [cls.__name__ for cls in GuardedSentinelChannel.__mro__]
    assert "SentinelChannel" in [cls.__name__ for cls in GuardedSentinelChannel.__mro__]
