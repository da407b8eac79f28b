"""Stand-ins for fast unit tests: a deterministic encoder; the tasks a client sent, read off a fake Redis."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fakeredis
import msgpack
import numpy as np

from producer.protocol.messages import EmbedRequest

FAKE_MODEL = "org/fake"
FAKE_QUEUE = f"embedq.{FAKE_MODEL}"


class FakeEncoder:
    """A deterministic stand-in: row i is [len(text_i), i, 0, ...]."""

    def __init__(self, model_id: str = "org/fake", dim: int = 4) -> None:
        self.model_id = model_id
        self.fingerprint = ""
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        out[:, 0] = [len(text) for text in texts]
        out[:, 1] = np.arange(len(texts))
        return out


@dataclass(frozen=True)
class SentTask:
    task_id: str
    name: str
    request: EmbedRequest
    headers: dict[str, Any]
    content_type: str


def sent_tasks(redis: fakeredis.FakeRedis, queue: str = FAKE_QUEUE) -> list[SentTask]:
    """The task messages waiting in ``queue``, oldest first, decoded as a worker would."""
    tasks = []
    for raw in reversed(redis.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, _ = msgpack.unpackb(base64.b64decode(envelope["body"]), raw=False)
        headers = envelope["headers"]
        request = EmbedRequest.from_task_args(tuple(args), kwargs)
        tasks.append(SentTask(headers["id"], headers["task"], request, headers, envelope["content-type"]))
    return tasks
