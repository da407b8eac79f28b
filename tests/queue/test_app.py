from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from producer.errors import InvalidInputError
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import BUNDLED_MODEL_ID, TASK_EMBED_DOCUMENTS, TASK_EMBED_QUERIES
from producer.settings import Settings
from tests.support.fakes import FakeEncoder
from worker.queue.app import PresenceStep, build_worker_app, run_worker


def _queue_names(app: Celery) -> list[str]:
    return [queue.name for queue in app.conf.task_queues]


def test_worker_app_serves_its_models_queues_with_the_settings_limits() -> None:
    encoder = FakeEncoder("org/fake", dim=4)
    app = build_worker_app(Settings(max_text_chars=3), encoder)
    try:
        assert _queue_names(app) == ["embedq.org/fake", "embedq.org/fake.bulk"]
        assert app.conf.task_default_queue == "embedq.org/fake"
        assert {TASK_EMBED_DOCUMENTS, TASK_EMBED_QUERIES} <= set(app.tasks)
        assert app.conf.accept_content == ["msgpack"] and app.conf.task_acks_late
        assert any(issubclass(step, PresenceStep) for step in app.steps["consumer"])
        assert encoder.calls == 0  # the model is never used in the parent process
        app.conf.task_always_eager = True
        request = EmbedRequest("org/fake", "document", ("abcd",))
        outcome = app.tasks[TASK_EMBED_DOCUMENTS].apply(args=[request.encode()])
        assert isinstance(outcome.result, InvalidInputError) and "limit of 3" in str(outcome.result)
    finally:
        app.close()


def test_queues_can_be_overridden() -> None:
    app = build_worker_app(Settings(), FakeEncoder("org/fake"), queues=["embedq.org/fake", "extra"])
    try:
        assert _queue_names(app) == ["embedq.org/fake", "extra"]
    finally:
        app.close()


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        (["interactive"], ["embedq.org/fake"]),
        (["bulk"], ["embedq.org/fake.bulk"]),
        (["bulk", "interactive", "bulk"], ["embedq.org/fake.bulk", "embedq.org/fake"]),
    ],
)
def test_interactive_and_bulk_name_the_models_two_queues(queues: list[str], expected: list[str]) -> None:
    app = build_worker_app(Settings(), FakeEncoder("org/fake"), queues=queues)
    try:
        assert _queue_names(app) == expected
    finally:
        app.close()


@pytest.mark.parametrize(("queues", "prefetch"), [(None, 1), (["interactive"], 1), (["bulk"], 2)])
def test_only_a_bulk_only_worker_reserves_a_second_chunk_per_process(
    queues: list[str] | None, prefetch: int
) -> None:
    # A worker that also serves queries keeps prefetch 1: a query never waits behind a reserved chunk.
    app = build_worker_app(Settings(), FakeEncoder("org/fake"), queues=queues)
    try:
        assert app.conf.worker_prefetch_multiplier == prefetch
    finally:
        app.close()


def test_run_worker_loads_once_and_passes_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str | None] = []
    encoder = FakeEncoder("org/fake")
    started: list[tuple[Celery, list[str]]] = []

    def fake_from_pretrained(source: str | None = None, **_: Any) -> FakeEncoder:
        loaded.append(source)
        return encoder

    from worker.encoding.encoder import StaticEncoder

    monkeypatch.setattr(StaticEncoder, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(Celery, "worker_main", lambda self, argv: started.append((self, argv)))
    run_worker(Settings(model="org/fake", concurrency=5), concurrency=3, queues=["q1"], loglevel="DEBUG")
    ((app, argv),) = started
    assert loaded == ["org/fake"] and encoder.calls == 0
    assert argv[0] == "worker" and "--pool=prefork" in argv
    assert "--concurrency=3" in argv and "--loglevel=DEBUG" in argv
    assert _queue_names(app) == ["q1"]
    assert not any(arg.startswith("--hostname") for arg in argv)  # Celery's celery@<host>
    started.clear()
    run_worker(Settings(model="org/fake", concurrency=5), hostname="w1@%h")
    assert "--concurrency=5" in started[0][1] and "--hostname=w1@%h" in started[0][1]


def test_the_producer_knows_the_bundled_model_id() -> None:
    from worker.encoding.encoder import StaticEncoder
    from worker.encoding.loader import BUNDLED_MODEL_ID as LOADER_BUNDLED_MODEL_ID

    assert LOADER_BUNDLED_MODEL_ID == BUNDLED_MODEL_ID
    assert StaticEncoder.from_pretrained(None).model_id == BUNDLED_MODEL_ID
