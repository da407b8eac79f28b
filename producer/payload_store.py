"""Store, read and delete the requests that travel beside their task messages (see protocol.payloads)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from producer.celery_config import broker_client
from producer.protocol.payloads import PAYLOAD_TTL_S, PayloadRef, pack_payload, payload_key

Task = tuple[str, Mapping[str, Any], int]
"""(task id, request map, item count) as the client publishes it."""


def offload_large(
    app: Celery, tasks: Sequence[Task], inline_max_bytes: int | None, deadline_s: float | None = None
) -> list[tuple[str, Any, int]]:
    """Return the tasks, each request above ``inline_max_bytes`` stored on the broker and sent as a ref.

    All stores go in one pipeline, before any message is published: a worker that takes the
    message always finds its request (and a replica that has the message has the request too).
    ``inline_max_bytes`` None keeps every request inline. A request with a deadline (epoch s) is
    kept a minute past it (a worker drops it unencoded after), else :data:`PAYLOAD_TTL_S`.
    """
    if inline_max_bytes is None:
        return [(task_id, request, count) for task_id, request, count in tasks]
    out: list[tuple[str, Any, int]] = []
    stored: list[tuple[str, bytes]] = []
    for task_id, request, count in tasks:
        raw = pack_payload(request)
        if len(raw) <= inline_max_bytes:
            out.append((task_id, request, count))
            continue
        ref = PayloadRef(key=payload_key(task_id), size=len(raw))
        stored.append((ref.key, raw))
        out.append((task_id, ref.encode(), count))
    if stored:
        ttl_s = PAYLOAD_TTL_S if deadline_s is None else max(1, math.ceil(deadline_s - time.time()) + 60)
        with broker_client(app) as client:
            pipe = client.pipeline(transaction=False)
            for key, raw in stored:
                pipe.set(key, raw, ex=ttl_s)
            pipe.execute()
    return out


def read_payload(app: Celery, ref: PayloadRef) -> bytes | None:
    """Return the stored bytes of ``ref``, or None if the key is gone (done, expired or evicted)."""
    with broker_client(app) as client:
        raw = client.get(ref.key)
    return None if raw is None else bytes(raw)


def delete_payload(app: Celery, ref: PayloadRef) -> None:
    """Delete a request whose task's outcome is stored (its TTL would, later)."""
    with broker_client(app) as client:
        client.delete(ref.key)
