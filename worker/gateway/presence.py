"""Whether a worker serves one named model, read from that model's own presence keys.

Listing every live model needs a SCAN, which walks every key of the broker's database (result
keys included: tens of thousands after a minute of traffic), so a request never waits for one:
it reads the two presence keys of the model it names, one MGET, cached for a second.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from producer.errors import MessageDecodeError
from producer.protocol.messages import WorkerPresence
from producer.protocol.names import bulk_queue_for_model, presence_key, queue_for_model


class ServedModel:
    """The dimension of each model a worker serves now, by model id (cached for ``ttl_s``)."""

    def __init__(self, redis: aioredis.Redis, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._served: dict[str, tuple[float, int]] = {}  # model id -> (read at, dim); served ones only
        self._reads: dict[str, asyncio.Future[int | None]] = {}

    async def dim(self, model_id: str) -> int | None:
        """Return the model's dimension if a worker serves it, else None (raises on a broker error).

        While one read refreshes an expired answer, concurrent requests keep the last one, so a
        burst of requests sends one MGET.
        """
        cached = self._served.get(model_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        read = self._reads.get(model_id)
        if read is None:
            read = self._reads[model_id] = asyncio.ensure_future(self._read(model_id))
            read.add_done_callback(lambda done: self._read_done(model_id, done))
        if cached is not None:
            return cached[1]
        return await asyncio.shield(read)

    def _read_done(self, model_id: str, read: asyncio.Future[int | None]) -> None:
        self._reads.pop(model_id, None)
        if not read.cancelled():
            read.exception()  # a failed background read is not an error of its own: the next one retries

    async def _read(self, model_id: str) -> int | None:
        keys = [presence_key(queue_for_model(model_id)), presence_key(bulk_queue_for_model(model_id))]
        dim = None
        for raw in await self._redis.mget(keys):
            if not isinstance(raw, bytes):
                continue
            try:
                presence = WorkerPresence.decode(raw)
            except MessageDecodeError:
                continue
            if presence.model == model_id:
                dim = presence.dim
                break
        if dim is None:
            self._served.pop(model_id, None)
        else:
            self._served[model_id] = (time.monotonic(), dim)
        return dim
