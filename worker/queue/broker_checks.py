"""What a worker checks of its broker before it starts consuming (see producer.broker_checks)."""

from __future__ import annotations

import logging
import sys
from typing import Any, ClassVar

from celery import Celery, bootsteps

from producer.broker_checks import check_broker_policy
from producer.celery_config import broker_client
from producer.errors import EXIT_PERMANENT, ConfigError
from producer.settings import Settings, redact_url

logger = logging.getLogger(__name__)


def _say(level: int, message: str) -> None:
    # Celery sets up logging only once the worker starts; this line comes before, on stderr.
    if level >= logging.INFO:
        print(f"embedq worker: {message}", file=sys.stderr, flush=True)


class DeferredPolicyCheck(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """The policy check of a broker that was down when the worker started: once, when Celery connects.

    An evicting broker then ends the worker with exit code 2 (SystemExit reaches Celery's worker,
    which stops with that code).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    allow_evicting: ClassVar[bool] = False
    done: ClassVar[bool] = False

    def start(self, consumer: Any) -> None:
        """Check the policy on the first connection."""
        if type(self).done:
            return
        app = consumer.app
        shown = redact_url(str(app.conf.broker_url))
        try:
            checked = check_broker_policy(
                lambda: broker_client(app), shown, allow_evicting=self.allow_evicting, unreachable_ok=True
            )
        except ConfigError as exc:
            logger.critical("embedq: error: %s", exc)
            raise SystemExit(EXIT_PERMANENT) from None
        type(self).done = checked


def check_broker_at_start(app: Celery, settings: Settings) -> None:
    """Refuse a broker that evicts queued work or refuses the credentials (ConfigError); note the rest.

    A broker that cannot be reached yet is left to Celery, which waits for it; the policy is then
    checked once, when the worker first connects.
    """
    shown = redact_url(str(app.conf.broker_url))
    checked = check_broker_policy(
        lambda: broker_client(app),
        shown,
        allow_evicting=settings.allow_evicting_broker,
        unreachable_ok=True,
        say=_say,
    )
    if not checked:
        attributes = {"allow_evicting": settings.allow_evicting_broker, "done": False}
        app.steps["consumer"].add(type("DeferredPolicyCheck", (DeferredPolicyCheck,), attributes))
