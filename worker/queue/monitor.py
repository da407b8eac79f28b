"""A Celery app for monitoring tools (Flower, ``celery inspect``) that speak embedq's msgpack.

Stock monitors accept only JSON, so they cannot read the workers' msgpack events and replies.
Point them here instead: ``celery -A worker.queue.monitor:app flower``. The app is built from the
``EMBEDQ_*`` environment when the attribute is first read, not at import.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from producer.celery_config import build_celery_app
    from producer.settings import load_settings

    return build_celery_app(load_settings(), "embedq-monitor")
