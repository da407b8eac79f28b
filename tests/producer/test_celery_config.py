from __future__ import annotations

import ssl

import fakeredis
import pytest
from celery import Celery
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads, prepare_accept_content

from producer.celery_config import backend_url, build_celery_app, celery_conf, results_share_broker
from producer.errors import MessageDecodeError
from producer.job import ResultReader, TaskOutcome
from producer.settings import Settings


def test_msgpack_only_and_late_acks() -> None:
    conf = celery_conf(Settings(task_time_limit_s=120, visibility_timeout_s=900, result_ttl_s=60))
    assert conf["accept_content"] == ["msgpack"] and conf["result_accept_content"] == ["msgpack"]
    assert conf["task_serializer"] == conf["result_serializer"] == "msgpack"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["task_track_started"]
    assert conf["task_retry_on_worker_lost"]  # bounded by max_retries, unlike a bare requeue
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_time_limit"] == 120
    assert conf["broker_transport_options"]["visibility_timeout"] == 900
    assert conf["result_expires"] == 60
    assert conf["task_default_queue"] == "embedq.embedq/minilm-l6-v2-256"


def test_app_refuses_pickle() -> None:
    accept = prepare_accept_content(celery_conf(Settings())["accept_content"])
    content_type, encoding, body = dumps({"a": 1}, serializer="msgpack")
    assert loads(body, content_type, encoding, accept=accept) == {"a": 1}
    content_type, encoding, body = dumps({"a": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=accept)


def test_the_app_is_not_made_the_process_default() -> None:
    from celery import current_app

    app = build_celery_app(Settings(), "embedq-not-current")
    try:
        assert current_app.main != "embedq-not-current"
    finally:
        app.close()


def test_rediss_verifies_certificates_by_default() -> None:
    settings = Settings(broker_url="rediss://:pw@redis.example:6380/0")
    conf = celery_conf(settings)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert conf["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    app = build_celery_app(settings, "test")
    try:
        # Celery refuses to build a rediss:// backend without certificate settings; this one builds.
        assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert backend_url(app) == "rediss://:***@redis.example:6380/0"
    finally:
        app.close()
    assert "broker_use_ssl" not in celery_conf(Settings())


def test_result_backend_keeps_the_configured_database_and_password() -> None:
    app = build_celery_app(Settings(result_backend="redis://:pw@results.example:6390/7"), "test")
    try:
        params = app.backend.connparams
        assert (params["host"], params["port"], params["db"], params["password"]) == (
            "results.example",
            6390,
            7,
            "pw",
        )
    finally:
        app.close()


def test_a_task_start_reads_beside_it_and_never_replaces_a_success(
    fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    backend = fake_app.backend
    reader = ResultReader(fake_app)
    fake_redis.set("embedq:payload:t1", b"request")
    assert backend.store_started("t1", None, "embedq:payload:t1") == b"request"
    assert reader.outcomes(["t1"])[0].state == "started"
    backend.delete_with_outcome("t1", "embedq:payload:t1")
    backend.store_result("t1", {"answer": 1}, "SUCCESS")
    assert fake_redis.exists("embedq:payload:t1") == 0  # deleted with the outcome
    # The same message again (its pool process died before the ack): the success stands.
    assert backend.store_started("t1", None, "embedq:payload:t1") is None
    backend.store_result("t1", MessageDecodeError("gone"), "FAILURE")
    assert reader.outcomes(["t1"])[0] == TaskOutcome("done", value={"answer": 1})
    assert backend.take_outcome_delete("t1") is None


def test_results_share_the_broker_unless_configured_elsewhere() -> None:
    assert results_share_broker(build_celery_app(Settings(broker_url="redis://h:1/0"), "t"))
    other = Settings(broker_url="redis://h:1/0", result_backend="redis://h:1/1")
    assert not results_share_broker(build_celery_app(other, "t"))
