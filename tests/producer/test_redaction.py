"""One redaction for broker and Milvus URLs: no password shows, however it is spelled."""

from __future__ import annotations

import pytest

from producer.celery_config import broker_client, build_celery_app
from producer.errors import BrokerUnavailableError, ConfigError
from producer.redaction import redact_url
from producer.settings import Settings
from worker.milvus.connection import redact_uri

# Passwords that are not percent-encoded: '#' starts a fragment, '/' a path, '?' a query, '@' a host.
HOSTILE_PASSWORDS = ["ss:w/rd%41#x", "p@ss#w/rd", "a?b=c#d", "x/y/z", "#", "pw@@host"]


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
@pytest.mark.parametrize("scheme", ["redis", "rediss", "http", "https"])
def test_no_part_of_a_password_shows(scheme: str, password: str) -> None:
    url = f"{scheme}://user:{password}@broker.example:6379/0"
    for shown in (redact_url(url), redact_uri(url)):
        assert password not in shown
        assert shown.endswith("@broker.example:6379/0")
        assert shown.startswith(f"{scheme}://")
    assert redact_url(url) == f"{scheme}://user:***@broker.example:6379/0"
    assert redact_uri(url) == f"{scheme}://***@broker.example:6379/0"


def test_the_issue_example_does_not_leak() -> None:
    shown = redact_url("redis://:p@ss:w/rd%41#x@cache.internal:6379/0")
    assert shown == "redis://:***@cache.internal:6379/0"


def test_a_password_in_the_query_is_redacted_with_a_hostile_user_password() -> None:
    shown = redact_url("rediss://u:a#b@host:6380/0?password=pw&ssl_cert_reqs=required")
    assert "a#b" not in shown and "pw&" not in shown and "ssl_cert_reqs=required" in shown


def test_a_url_that_does_not_parse_is_refused_without_showing_the_password() -> None:
    with pytest.raises(ConfigError, match="percent-encode") as caught:
        Settings(broker_url="redis://:s3cr%23t#frag@127.0.0.1:1/0")
    assert "s3cr" not in str(caught.value) and "frag" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_errors_from_the_broker_do_not_show_the_password() -> None:
    # Nothing listens on port 1: the error names the URL, redacted.
    app = build_celery_app(Settings(broker_url="redis://:s3cr%2Ft@127.0.0.1:1/0"), "redaction")
    try:
        with pytest.raises(BrokerUnavailableError) as caught, broker_client(app):
            pass
    finally:
        app.close()
    assert "s3cr" not in str(caught.value)
