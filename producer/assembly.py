"""VectorAssembler: a job's vectors copied into one array as each task's result arrives.

A bulk job's results arrive over its run (25 tasks of 4 MB for 100k texts). Joining them at the
end cost one pass over the whole array (allocation, page faults, copy) after the last result was
in, on the caller's critical path; copying each part in while the others are still computed moves
that work into the wait, and drops each part's message bytes as soon as they are copied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import accumulate, chain
from typing import Any

import numpy as np

from producer.errors import ModelMismatchError
from producer.protocol.messages import EmbedResult
from producer.protocol.names import VECTOR_DTYPE
from producer.protocol.vectors_apart import apart_key, with_vectors

_LITTLE_ENDIAN = np.dtype(VECTOR_DTYPE).isnative


class VectorAssembler:
    """Collects the ``EmbedResult`` of each task of a job, in task order, into one (n, dim) array.

    ``task_rows`` (texts per task, known to the client that split the job) lets parts be copied
    into a preallocated array as they arrive; without it (a job reattached by id), or if a part
    has another row count, the parts are kept and joined at the end. A foreign model or a mixed
    dimension is reported by :meth:`finish`, so a task's own failure is raised first.
    """

    def __init__(self, job_id: str, model: str, task_count: int, task_rows: Sequence[int] | None) -> None:
        self._job_id = job_id
        self._model = model
        self._task_count = task_count
        self._rows = list(task_rows) if task_rows is not None and len(task_rows) == task_count else None
        # In Python, not numpy: a one-request job is built per query, and np.cumsum cost ~30 µs of it.
        self._starts = None if self._rows is None else list(accumulate(self._rows, initial=0))
        self._out: np.ndarray | None = None
        self._kept: dict[int, EmbedResult] = {}
        self._copied: set[int] = set()
        self._tokens: dict[int, tuple[int, ...] | None] = {}
        self._dim: int | None = None
        self._problem: ModelMismatchError | None = None

    def __contains__(self, index: int) -> bool:
        return index in self._copied or index in self._kept

    def add(self, index: int, result: EmbedResult) -> None:
        """Take task ``index``'s result: copy it into place if it can be, else keep it for the end."""
        place = self._place(index, result)
        if place is not None:
            place[...] = result.view()
            self._copied.add(index)
        else:
            self._kept[index] = result

    def add_apart(self, index: int, record: dict[str, Any], read: Callable[[memoryview], None]) -> None:
        """Take task ``index``'s result whose vectors are stored apart: ``read`` fills a buffer with them.

        The vectors are read straight into their place in the job's array when they fit there.
        """
        key = apart_key(record)
        if key is None:
            raise ValueError("add_apart() takes a result record whose vectors are stored apart")
        # Checked as any result is, over zero bytes of the right size (calloc: no page is touched).
        head = EmbedResult.decode(with_vectors(record, bytes(key[1])))
        # The stored bytes are little-endian floats: elsewhere add() converts them.
        place = self._place(index, head) if _LITTLE_ENDIAN else None
        if place is not None:
            read(memoryview(place.data).cast("B"))
            self._copied.add(index)
            return
        buffer = bytearray(key[1])
        read(memoryview(buffer))
        self.add(index, replace(head, vectors=bytes(buffer)))

    def _place(self, index: int, result: EmbedResult) -> np.ndarray | None:
        """Check ``result`` against the job; return its rows of the job's array, or None to keep it apart."""
        if result.model != self._model:
            self._problem = self._problem or ModelMismatchError(
                f"job {self._job_id} returned vectors of model {result.model!r}, expected {self._model!r}: "
                "reattach with a client for that model"
            )
        if self._dim is None:
            self._dim = result.dim
        elif result.dim != self._dim:
            dims = f"{self._dim} and {result.dim}"
            mixed = ModelMismatchError(f"job {self._job_id} mixes vectors of {dims} dimensions")
            self._problem = self._problem or mixed
        self._tokens[index] = result.tokens
        if self._problem is None and self._starts is not None and self._rows is not None:
            if result.count == self._rows[index]:
                if self._out is None:
                    self._out = np.empty((self._starts[-1], result.dim), dtype=np.float32)
                return self._out[self._starts[index] : self._starts[index + 1]]
            self._rows = None  # a part of unexpected size: join everything at the end instead
        return None

    def finish(self) -> tuple[np.ndarray, tuple[int, ...] | None]:
        """Return the (n, dim) float32 array in task order and the token counts (None if any are missing)."""
        if self._problem is not None:
            raise self._problem
        if len(self._copied) + len(self._kept) != self._task_count:
            raise ValueError(f"job {self._job_id}: finish() before every task's result was added")
        if self._task_count == 1 and self._out is not None:  # one request's vectors: the common case
            return self._out, self._tokens[0]
        tokens_per_task = [self._tokens[index] for index in range(self._task_count)]
        tokens = (
            tuple(chain.from_iterable(part for part in tokens_per_task if part is not None))
            if all(part is not None for part in tokens_per_task)
            else None
        )
        if not self._kept and self._out is not None:
            return self._out, tokens
        parts = [self._part(index) for index in range(self._task_count)]
        if len(parts) == 1:
            return parts[0].astype(np.float32), tokens
        return np.concatenate(parts, axis=0, dtype=np.float32), tokens

    def _part(self, index: int) -> np.ndarray:
        if index in self._kept:
            return self._kept[index].view()
        assert self._out is not None and self._starts is not None  # a copied part lives in _out
        return self._out[self._starts[index] : self._starts[index + 1]]
