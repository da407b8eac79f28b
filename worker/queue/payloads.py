"""The pool-process side of requests stored beside their messages: read before the task, delete after."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.states import READY_STATES

from producer.errors import EmbedqError, MessageDecodeError
from producer.payload_store import delete_payload, read_payload
from producer.protocol.payloads import PAYLOAD_TTL_S, PayloadRef, unpack_payload

log = logging.getLogger(__name__)


def argument_ref(args: tuple[Any, ...]) -> PayloadRef | None:
    """Return the reference if the task's one argument is one, else None (raise if it is malformed)."""
    return PayloadRef.from_argument(args[0]) if len(args) == 1 else None


def resolve_arguments(task: Task, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Return the task's arguments with a stored request read in place of its reference.

    A reference whose key is gone after the task's outcome was stored is a redelivery of a task
    that finished (its pool process died between storing and acknowledging): it is dropped
    with ``Ignore`` and the stored outcome stands. Gone with no outcome stored, the request
    expired or was evicted: a MessageDecodeError that says so, stored by task id.
    """
    ref = argument_ref(args)
    if ref is None:
        return args
    raw = read_payload(task.app, ref)
    if raw is None:
        if task.backend.get_task_meta(task.request.id).get("status") in READY_STATES:
            log.info("task %s was already answered: dropping its redelivered message", task.request.id)
            raise Ignore()
        raise MessageDecodeError(
            f"the request of task {task.request.id} is no longer on the broker (key {ref.key}): it expired "
            f"after {PAYLOAD_TTL_S // 3600} h in the queue or the broker evicted it (set maxmemory-policy "
            "noeviction); send the request again"
        )
    return (unpack_payload(raw, ref),)


def forget_arguments(task: Task, args: tuple[Any, ...]) -> None:
    """Delete a stored request once its task's outcome is stored; a failure only leaves it to its TTL."""
    try:
        ref = argument_ref(tuple(args))
    except EmbedqError:
        return
    if ref is not None:
        with contextlib.suppress(EmbedqError):
            delete_payload(task.app, ref)
