"""Store, read and delete the requests that travel beside their task messages (see protocol.payloads)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery

from producer.celery_config import broker_client
from producer.protocol.payloads import PAYLOAD_TTL_S, PayloadRef, pack_payload, payload_key


def offload_large(
    app: Celery,
    task_id: str,
    request: Mapping[str, Any],
    inline_max_bytes: int | None,
    deadline_s: float | None = None,
) -> Mapping[str, Any]:
    """Return the task argument for ``request``: itself, or, above ``inline_max_bytes``, a stored ref.

    The request is stored before its message is published (the caller's order), so a worker that
    takes the message finds it, and a replica that has the message has the request too. A request
    with a deadline (epoch s) is kept a minute past it (a worker drops it unencoded after), else
    :data:`PAYLOAD_TTL_S`. ``inline_max_bytes`` None keeps every request inline.
    """
    if inline_max_bytes is None:
        return request
    raw = pack_payload(request)
    if len(raw) <= inline_max_bytes:
        return request
    ref = PayloadRef(key=payload_key(task_id), size=len(raw))
    ttl_s = PAYLOAD_TTL_S if deadline_s is None else max(1, math.ceil(deadline_s - time.time()) + 60)
    with broker_client(app) as client:
        client.set(ref.key, raw, ex=ttl_s)
    return ref.encode()


def read_payload(app: Celery, ref: PayloadRef) -> bytes | None:
    """Return the stored bytes of ``ref``, or None if the key is gone (done, expired or evicted)."""
    with broker_client(app) as client:
        raw = client.get(ref.key)
    return None if raw is None else bytes(raw)


def delete_payload(app: Celery, ref: PayloadRef) -> None:
    """Delete a request whose task's outcome is stored (its TTL would, later)."""
    with broker_client(app) as client:
        client.delete(ref.key)
