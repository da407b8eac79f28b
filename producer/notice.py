"""Notice: the outcome of one batched request, completed once from another thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar, cast

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Notice(Generic[T]):
    """The outcome of one batched request, completed once by the client's listener.

    The part of ``concurrent.futures.Future`` the client uses (``done``, ``result``,
    ``add_done_callback``, ``set_result``, ``set_exception``), at a fraction of its cost: a
    Future builds a ``threading.Condition`` for every request, and a client answering
    thousands of requests a second spent about a tenth of a request's CPU on it. A thread that
    waits gets an Event, made when it first waits.
    """

    __slots__ = ("_callbacks", "_done", "_error", "_event", "_outcome")
    # One lock for all notices: every critical section is a few attribute writes.
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._done = False
        self._outcome: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Notice[T]], object]] | None = None
        self._event: threading.Event | None = None

    def done(self) -> bool:
        """Whether the outcome (or an error) is in."""
        return self._done

    def set_result(self, outcome: T) -> None:
        """Complete with ``outcome`` (a second completion is ignored)."""
        self._complete(outcome, None)

    def set_exception(self, error: BaseException) -> None:
        """Complete with ``error`` (a second completion is ignored)."""
        self._complete(None, error)

    def add_done_callback(self, callback: Callable[[Notice[T]], object]) -> None:
        """Call ``callback(self)`` once complete (at once, in this thread, if it already is)."""
        with self._lock:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        callback(self)

    def result(self, timeout: float | None = None) -> T:
        """Wait up to ``timeout`` seconds; return the outcome or raise the error.

        Raises ``TimeoutError`` (as ``concurrent.futures.Future.result`` does) if still not done.
        """
        if not self._done:
            with self._lock:
                if not self._done and self._event is None:
                    self._event = threading.Event()
                event = self._event
            if event is not None and not event.wait(timeout):
                raise TimeoutError()
        if self._error is not None:
            raise self._error
        return cast(T, self._outcome)  # done without an error

    def _complete(self, outcome: T | None, error: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self._outcome, self._error, self._done = outcome, error, True
            callbacks, event = self._callbacks, self._event
            self._callbacks = None
        if event is not None:
            event.set()
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                logger.exception("a callback of request notice failed")
