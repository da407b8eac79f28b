"""The pool-process side of requests stored beside their messages: read before the task, delete after.

Each is a round trip to the broker, which costs a far worker its pool's time: where the results
live on the broker's server (the default), the read goes in the round trip that stores the task's
STARTED state, and the delete in the one that stores its outcome.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from celery import Task, states
from celery.exceptions import Ignore
from celery.states import READY_STATES

from producer.celery_config import results_share_broker
from producer.errors import EmbedqError, MessageDecodeError
from producer.payload_store import delete_payload, read_payload
from producer.protocol.payloads import PAYLOAD_TTL_S, PayloadRef, unpack_payload

log = logging.getLogger(__name__)


def argument_ref(args: tuple[Any, ...]) -> PayloadRef | None:
    """Return the reference if the task's one argument is one, else None (raise if it is malformed)."""
    return PayloadRef.from_argument(args[0]) if len(args) == 1 else None


def _app_traits(task: Task) -> tuple[bool, bool]:
    """Return (broker keys ride on the result backend's round trips, STARTED is tracked), once per task.

    Read from the app's configuration at the task's first run (Celery's conf lookups cost
    microseconds, which the batch path of queries counts).
    """
    traits: tuple[bool, bool] | None = task.__dict__.get("_embedq_traits")
    if traits is None:
        shares = callable(getattr(task.backend, "store_started", None)) and results_share_broker(task.app)
        traits = task.__dict__["_embedq_traits"] = (shares, bool(task.app.conf.task_track_started))
    return traits


def _shares_connection(task: Task) -> bool:
    """Whether broker keys can ride on the result backend's round trips (same server, embedq's backend)."""
    return _app_traits(task)[0]


def _tracks_started(task: Task) -> bool:
    """Whether Celery would store this run's STARTED state (``task_track_started``, a result, not eager)."""
    request = task.request
    if request.is_eager or not _app_traits(task)[1]:
        return False
    ignore = request.ignore_result if request.ignore_result is not None else task.ignore_result
    return not ignore


def start_task(task: Task, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Store the task as STARTED; return its arguments with a stored request read in place of its reference.

    The task's class leaves STARTED to this (``track_started = False``), so that a first attempt
    stores it with ``SET NX`` and, results living on the broker's server, reads the request in
    the same round trip; a retry stores it through Celery.

    A reference whose key is gone after the task's outcome was stored is a redelivery of a task
    that finished (its pool process died between storing and acknowledging): it is dropped
    with ``Ignore`` and the stored outcome stands. Gone with no outcome stored, the request
    expired or was evicted: a MessageDecodeError that says so, stored by task id.
    """
    ref = argument_ref(args)
    request = task.request
    shared = _shares_connection(task)
    raw: bytes | None = None
    read = False
    if _tracks_started(task):
        if request.retries or not shared:
            started = {"pid": os.getpid(), "hostname": request.hostname}
            task.backend.store_result(request.id, started, states.STARTED, request=request)
        else:
            raw = task.backend.store_started(request.id, request, None if ref is None else ref.key)
            read = True
    if ref is None:
        return args
    if not read:
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
    if shared:
        task.backend.delete_with_outcome(request.id, ref.key)
    return (unpack_payload(bytes(raw), ref),)


def forget_arguments(task: Task, args: tuple[Any, ...], *, final: bool) -> None:
    """Delete a stored request once its task's outcome is stored; a failure only leaves it to its TTL.

    Not ``final`` (a retry follows), the request stays. A request deleted with the outcome (see
    :func:`start_task`) is not deleted again.
    """
    if _shares_connection(task):
        left = task.backend.take_outcome_delete(task.request.id)
        if left is None or not final:
            return
    if not final:
        return
    try:
        ref = argument_ref(tuple(args))
    except EmbedqError:
        return
    if ref is not None:
        with contextlib.suppress(EmbedqError):
            delete_payload(task.app, ref)
