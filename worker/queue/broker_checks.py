"""What a worker checks of its broker before it starts consuming (see producer.broker_checks)."""

from __future__ import annotations

import logging
import sys

from celery import Celery

from producer.broker_checks import check_broker_policy
from producer.celery_config import broker_client
from producer.settings import Settings, redact_url


def _say(level: int, message: str) -> None:
    # Celery sets up logging only once the worker starts; this line comes before, on stderr.
    if level >= logging.INFO:
        print(f"embedq worker: {message}", file=sys.stderr, flush=True)


def check_broker_at_start(app: Celery, settings: Settings) -> None:
    """Refuse a broker that evicts queued work or refuses the credentials (ConfigError); note the rest.

    A broker that cannot be reached yet is left to Celery, which waits for it.
    """
    shown = redact_url(str(app.conf.broker_url))
    check_broker_policy(
        lambda: broker_client(app),
        shown,
        allow_evicting=settings.allow_evicting_broker,
        unreachable_ok=True,
        say=_say,
    )
