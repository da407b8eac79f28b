"""What a backfill's saved progress was written to: the workers' Milvus and the collection's identity.

Chunks saved as done are only true of the collection they were written to. Before a run skips
them it asks a worker (an upsert of no documents) where it writes and which collection is there
now; a collection that is gone, was dropped and made again, or lives in another Milvus makes the
saved progress void, and the run starts over (upserts by id make that safe).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from celery.utils import uuid

from producer.client import EmbeddingClient
from producer.errors import ResultTimeoutError
from producer.protocol.messages import UpsertRequest, UpsertResult
from producer.protocol.names import TASK_UPSERT_DOCUMENTS

PROBE_TIMEOUT_S = 120.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Target:
    """Where the workers write (``milvus``, no credentials) and the collection's identity there."""

    milvus: str
    collection_uuid: str
    """``""``: the collection does not exist."""

    @property
    def exists(self) -> bool:
        """Whether the collection exists."""
        return bool(self.collection_uuid)

    def encode(self) -> str:
        """Return the JSON saved with the backfill's checkpoint."""
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: str | bytes) -> Target | None:
        """Rebuild a saved target; None if it is not one."""
        try:
            fields = json.loads(raw)
            return cls(str(fields["milvus"]), str(fields["collection_uuid"]))
        except (ValueError, TypeError, KeyError):
            return None


def probe_target(
    client: EmbeddingClient, collection: str, timeout_s: float = PROBE_TIMEOUT_S
) -> Target | None:
    """Ask a worker of the model where it writes and which ``collection`` is there; never creates it.

    None: the worker is of an earlier version (it answers without saying).
    """
    client.model_dim(client.bulk_queue)  # NoWorkerError when no worker serves the queue
    request = UpsertRequest(client.model, collection, ids=(), texts=(), metadata=())
    task_id: str = uuid()
    client.app.send_task(
        TASK_UPSERT_DOCUMENTS,
        args=[request.encode()],
        task_id=task_id,
        queue=client.bulk_queue,
        argsrepr="[<where does this backfill write?>]",
        kwargsrepr="{}",
    )
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = client.reader.outcomes([task_id])[0]
        if outcome.error is not None:
            raise outcome.error
        if outcome.state == "done":
            result = UpsertResult.decode(outcome.value)
            if result.milvus is None:
                return None
            return Target(result.milvus, result.collection_uuid or "")
        if time.monotonic() > deadline:
            raise ResultTimeoutError(
                f"no worker said within {timeout_s:.0f} s whether collection {collection!r} still exists "
                "(the bulk queue may be busy): run the same command again"
            )
        time.sleep(_POLL_S)


def target_file(state_dir: Path, job_id: str) -> Path:
    """Return the local file holding the target a backfill job's progress was written to."""
    return state_dir / f"{job_id}.target.json"


def target_key(job_id: str) -> str:
    """Return the Redis key holding the target a backfill job's progress was written to."""
    return f"embedq:backfill:{job_id}:target"


def void_progress_notice(job_id: str, collection: str, chunks: int, saved: Target | None, now: Target) -> str:
    """Return the one line a run prints when it discards progress saved against another collection."""
    if not now.exists:
        what = f"collection {collection!r} does not exist at {now.milvus}"
    elif saved is not None and saved.milvus != now.milvus:
        what = f"the workers now write to {now.milvus}, not {saved.milvus}"
    else:
        what = f"collection {collection!r} at {now.milvus} was dropped and made again since"
    return (
        f"backfill {job_id}: {what}, so the {chunks} chunks saved as done are not there: starting over "
        "(documents are upserted by id, so rows already present are replaced, never duplicated)"
    )
