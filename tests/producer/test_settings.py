from __future__ import annotations

import dataclasses

import pytest

from producer.errors import ConfigError
from producer.protocol.names import BUNDLED_MODEL_ID
from producer.settings import Settings, load_settings, redact_url


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.result_backend == settings.broker_url
    assert settings.model is None and settings.model_id == BUNDLED_MODEL_ID
    assert settings.milvus_uri == "./embedq.db" and settings.milvus_token is None
    assert settings.concurrency is None
    assert settings.visibility_timeout_s > settings.task_time_limit_s
    assert settings == Settings()
    assert Settings(broker_url="redis://broker:6379/4").result_backend == "redis://broker:6379/4"


def test_every_variable_is_read() -> None:
    settings = load_settings(
        {
            "EMBEDQ_BROKER_URL": "rediss://user:pw@redis.example:6380/2",
            "EMBEDQ_RESULT_BACKEND": "redis://results.example:6379/3",
            "EMBEDQ_MODEL": "minishlab/potion-base-8M",
            "EMBEDQ_RESULT_TTL_S": "600",
            "EMBEDQ_MAX_TEXTS_PER_REQUEST": "1_000",
            "EMBEDQ_MAX_TEXT_CHARS": "5000",
            "EMBEDQ_TASK_TIME_LIMIT_S": "30",
            "EMBEDQ_VISIBILITY_TIMEOUT_S": "60",
            "EMBEDQ_MILVUS_URI": "http://milvus:19530",
            "EMBEDQ_MILVUS_TOKEN": "root:Milvus",
            "EMBEDQ_CONCURRENCY": "3",
            "EMBEDQ_MAX_QUEUE_DEPTH": "50",
            "EMBEDQ_RETRY_BACKOFF_S": "0.25",
        }
    )
    assert settings == Settings(
        broker_url="rediss://user:pw@redis.example:6380/2",
        result_backend="redis://results.example:6379/3",
        model="minishlab/potion-base-8M",
        result_ttl_s=600,
        max_texts_per_request=1000,
        max_text_chars=5000,
        task_time_limit_s=30,
        visibility_timeout_s=60,
        milvus_uri="http://milvus:19530",
        milvus_token="root:Milvus",
        concurrency=3,
        max_queue_depth=50,
        retry_backoff_s=0.25,
    )
    assert settings.model_id == "minishlab/potion-base-8M"


def test_empty_values_mean_unset() -> None:
    environ = {"EMBEDQ_MODEL": "", "EMBEDQ_CONCURRENCY": " ", "EMBEDQ_BROKER_URL": ""}
    assert load_settings(environ) == Settings()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"EMBEDQ_RESULT_TTL_S": "1h"}, "EMBEDQ_RESULT_TTL_S"),
        ({"EMBEDQ_MAX_TEXTS_PER_REQUEST": "0"}, "EMBEDQ_MAX_TEXTS_PER_REQUEST"),
        ({"EMBEDQ_MAX_TEXT_CHARS": "-5"}, "EMBEDQ_MAX_TEXT_CHARS"),
        ({"EMBEDQ_CONCURRENCY": "two"}, "EMBEDQ_CONCURRENCY"),
        ({"EMBEDQ_MAX_QUEUE_DEPTH": "1.5"}, "EMBEDQ_MAX_QUEUE_DEPTH"),
        ({"EMBEDQ_TASK_TIME_LIMIT_S": "3600"}, "EMBEDQ_VISIBILITY_TIMEOUT_S"),
        ({"EMBEDQ_VISIBILITY_TIMEOUT_S": "300"}, "EMBEDQ_VISIBILITY_TIMEOUT_S"),
        ({"EMBEDQ_BROKER_URL": "amqp://guest@rabbit//"}, "EMBEDQ_BROKER_URL"),
        ({"EMBEDQ_BROKER_URL": "redis://"}, "EMBEDQ_BROKER_URL"),
        ({"EMBEDQ_BROKER_URL": "redis://host:port/0"}, "EMBEDQ_BROKER_URL"),
        ({"EMBEDQ_RESULT_BACKEND": "redis://host/zero"}, "EMBEDQ_RESULT_BACKEND"),
        ({"EMBEDQ_MODEL": "has space"}, "EMBEDQ_MODEL"),
        ({"EMBEDQ_RETRY_BACKOFF_S": "0"}, "EMBEDQ_RETRY_BACKOFF_S"),
        ({"EMBEDQ_RETRY_BACKOFF_S": "61"}, "EMBEDQ_RETRY_BACKOFF_S"),
        ({"EMBEDQ_RETRY_BACKOFF_S": "1s"}, "EMBEDQ_RETRY_BACKOFF_S"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ)


def test_visibility_timeout_must_exceed_time_limit() -> None:
    with pytest.raises(ConfigError, match=r"\(100\) must exceed EMBEDQ_TASK_TIME_LIMIT_S \(100\)"):
        Settings(task_time_limit_s=100, visibility_timeout_s=100)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().model = "x"  # type: ignore[misc]


def test_credentials_never_show() -> None:
    settings = load_settings(
        {
            "EMBEDQ_BROKER_URL": "redis://admin:s3cret@redis:6379/0",
            "EMBEDQ_RESULT_BACKEND": "rediss://:t0ken@redis:6380/1",
            "EMBEDQ_MILVUS_TOKEN": "root:Milv4s",
        }
    )
    text = repr(settings) + str(settings)
    for secret in ("s3cret", "t0ken", "Milv4s"):
        assert secret not in text
    assert "redis://admin:***@redis:6379/0" in text
    with pytest.raises(ConfigError) as raised:
        load_settings({"EMBEDQ_BROKER_URL": "http://admin:s3cret@redis:6379/0"})
    assert "s3cret" not in str(raised.value) and "admin:***@redis" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:p@ss@host/0", "redis://user:***@host/0"),
        ("redis://token@host/0", "redis://***@host/0"),
        (
            "rediss://host/0?password=pw&ssl_cert_reqs=required",
            "rediss://host/0?password=%2A%2A%2A&ssl_cert_reqs=required",
        ),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
