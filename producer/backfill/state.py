"""Where a backfill keeps track of confirmed chunks: a local checkpoint file and Redis.

The checkpoint file (one JSON line per confirmed chunk) survives a Redis restart without
persistence; the Redis copy lets `embedq status JOB_ID` answer from any shell, and a progress
file next to the checkpoint lets it answer in the backfill's directory when Redis cannot (no broker
URL, the key expired, or Redis restarted without persistence). Each publish adds only the chunks
confirmed since the last one to Redis (done_chunks.py), so it costs the same at chunk 10 and at
chunk 10 million. A change of the
broker's run id during a run means Redis restarted and lost the queued chunks: the run stops
with BrokerRestartedError and the same command resumes it. The progress is tied to its target
(``target.py``): saved against a collection that is gone or was made again, it is discarded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from producer.backfill import done_chunks, run_lock
from producer.backfill.model import BackfillOptions, BackfillProgress, ChunkRecord
from producer.backfill.run_lock import LOCK_TTL_S
from producer.backfill.target import Target, target_file, target_key, void_progress_notice
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.errors import BrokerUnavailableError, ConfigError, EmbedqError, TransientError

log = logging.getLogger(__name__)

STATE_TTL_S = 7 * 24 * 3600
_PUBLISH_EVERY_S = 0.5
_BROKER_CHECK_EVERY_S = 1.0


class BrokerRestartedError(BrokerUnavailableError):
    """Redis restarted during a backfill and lost the chunks queued on it; run the backfill again."""


class CheckpointFullError(TransientError):
    """The disk holding a backfill's checkpoint is full: free space, then run the backfill again."""


def checkpoint_error(exc: OSError, path: Path) -> EmbedqError:
    """Return the one-line error for a checkpoint that cannot be written (full disk: transient)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointFullError(
            f"the disk holding the backfill checkpoint {path} is full ({exc.strerror}): free some space, "
            "then run the same command again to resume"
        )
    return ConfigError(
        f"cannot write the backfill checkpoint {path} ({exc.strerror or exc}): run the backfill from a "
        "directory you can write to (the checkpoint is kept in .embedq/backfill under it)"
    )


def _key(job_id: str) -> str:
    return f"embedq:backfill:{job_id}"


def progress_file(state_dir: Path, job_id: str) -> Path:
    """Return the local file holding a backfill job's last progress."""
    return state_dir / f"{job_id}.progress.json"


class BackfillState:
    """Confirmed chunks of one backfill job, and its published progress."""

    def __init__(
        self,
        client: EmbeddingClient,
        job_id: str,
        options: BackfillOptions,
        checkpoint: Path,
        docs_total: int,
    ) -> None:
        self._client = client
        self.job_id = job_id
        self._collection = options.collection
        self._path = str(options.path)
        self._checkpoint_path = checkpoint
        self._progress_path = progress_file(options.state_dir, job_id)
        self._done: dict[int, ChunkRecord] = {}
        self._unpublished: list[ChunkRecord] = []
        """Confirmed chunks not yet appended to the job's records in Redis."""
        self._legacy_field = False
        self._chunks_seen = 0
        self._total: int | None = None
        self._docs_total = docs_total
        self._run_id: str | None = None
        self._last_publish = 0.0
        self._last_broker_check = 0.0
        self._log: IO[str] | None = None
        self._holder = run_lock.holder_name()
        self._target_path = target_file(options.state_dir, job_id)
        self.target: Target | None = None
        """Where the saved chunks were written (None: not known, e.g. saved by an earlier version)."""

    @classmethod
    def open(
        cls, client: EmbeddingClient, job_id: str, options: BackfillOptions, docs_total: int
    ) -> BackfillState:
        """Load what earlier runs of this job confirmed, from the checkpoint file and from Redis."""
        state = cls(client, job_id, options, options.state_dir / f"{job_id}.jsonl", docs_total)
        try:
            options.state_dir.mkdir(parents=True, exist_ok=True)
            state._log = state._checkpoint_path.open("a", encoding="utf-8")
        except OSError as exc:
            raise checkpoint_error(exc, state._checkpoint_path) from None
        if state._checkpoint_path.exists():
            for line in state._checkpoint_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = ChunkRecord(**json.loads(line))
                    state._done[record.index] = record
        with broker_client(client.app) as redis:
            run_lock.acquire(redis, job_id, state._holder)  # before reading what earlier runs confirmed
            state._run_id = str(redis.info("server").get("run_id"))
            saved, legacy = done_chunks.read(redis, job_id, _key(job_id))
            saved_target = redis.get(target_key(job_id))
        # An earlier version's JSON list is read once; the first publish moves it to the records.
        state._legacy_field = legacy is not None
        for record in saved + (legacy or []):
            state._done.setdefault(record.index, record)
        in_redis = {record.index for record in saved}
        state._unpublished = [state._done[i] for i in sorted(state._done) if i not in in_redis]
        with contextlib.suppress(OSError):
            saved_target = state._target_path.read_text(encoding="utf-8")
        state.target = None if saved_target is None else Target.decode(saved_target)
        return state

    @property
    def saved_chunks(self) -> int:
        """How many chunks earlier runs (or this one) confirmed."""
        return len(self._done)

    def reconcile(self, now: Target | None) -> str | None:
        """Check the saved chunks against where the workers write now; discard them if void.

        Returns the one-line notice to show when they were discarded. ``now`` None (workers of an
        earlier version cannot say) keeps them. Progress saved without a target (an earlier
        version) is kept if the collection exists, discarded if it does not.
        """
        if now is None:
            return None
        saved = self.target
        void = (saved is not None and saved != now) or not now.exists
        notice = None
        if void and self._done:
            notice = void_progress_notice(self.job_id, self._collection, len(self._done), saved, now)
            self._discard()
        self.record_target(now if now.exists else None)
        return notice

    def record_target(self, target: Target | None) -> None:
        """Save where this job's chunks are written, next to the checkpoint and in Redis."""
        self.target = target
        try:
            if target is None:
                self._target_path.unlink(missing_ok=True)
            else:
                self._target_path.write_text(target.encode(), encoding="utf-8")
        except OSError as exc:
            raise checkpoint_error(exc, self._target_path) from None
        with broker_client(self._client.app) as redis:
            if target is None:
                redis.delete(target_key(self.job_id))
            else:
                redis.set(target_key(self.job_id), target.encode(), ex=STATE_TTL_S)

    def _discard(self) -> None:
        """Forget every confirmed chunk: in memory, in the checkpoint file and in Redis."""
        self._done.clear()
        if self._log is not None:
            try:
                self._log.truncate(0)
            except OSError as exc:
                raise checkpoint_error(exc, self._checkpoint_path) from None
        self._unpublished = []
        self._legacy_field = False
        with broker_client(self._client.app) as redis:
            redis.hdel(_key(self.job_id), "chunks")
            redis.delete(done_chunks.done_key(self.job_id))

    def confirmed(self, index: int) -> ChunkRecord | None:
        """Return the record of chunk ``index`` if an earlier run or this one confirmed it."""
        self._chunks_seen = max(self._chunks_seen, index + 1)
        return self._done.get(index)

    def confirm(self, record: ChunkRecord) -> None:
        """Record a chunk as done, durably in the checkpoint file first."""
        self._done[record.index] = record
        self._unpublished.append(record)
        if self._log is not None:
            try:
                self._log.write(json.dumps(asdict(record)) + "\n")
                self._log.flush()
            except OSError as exc:
                raise checkpoint_error(exc, self._checkpoint_path) from None

    def set_total(self) -> None:
        """Note that the whole file was read: the job has exactly the chunks seen so far."""
        self._total = self._chunks_seen

    def all_confirmed(self, owns: Callable[[int], bool] | None = None) -> bool:
        """Whether every chunk of the file (that ``owns``) is confirmed (known once the file was read)."""
        return self._total is not None and all(
            index in self._done for index in range(self._total) if owns is None or owns(index)
        )

    def check_broker(self) -> None:
        """Raise BrokerRestartedError if Redis restarted since the run began (checked about once a second)."""
        now = time.monotonic()
        if now - self._last_broker_check < _BROKER_CHECK_EVERY_S:
            return
        self._last_broker_check = now
        with broker_client(self._client.app) as redis:
            run_id = str(redis.info("server").get("run_id"))
            if not run_lock.refresh(redis, self.job_id, self._holder) and run_id == self._run_id:
                log.warning("backfill %s lost its run lock (paused for over %s s?)", self.job_id, LOCK_TTL_S)
        if run_id != self._run_id:
            raise BrokerRestartedError(
                f"the Redis broker restarted during backfill {self.job_id} and lost the chunks queued on it; "
                f"run the same command again to resume ({len(self._done)} confirmed chunks are kept in "
                f"{self._checkpoint_path})"
            )

    def progress(
        self, status: str, written: int, failed: int, skipped: int, elapsed_s: float, errors: list[str]
    ) -> BackfillProgress:
        """Return the current progress and publish it to Redis (throttled, always for a final state)."""
        progress = BackfillProgress(
            job_id=self.job_id,
            state=status,
            docs_done=written + skipped,
            docs_failed=failed,
            docs_total=self._docs_total,
            chunks_done=len(self._done),
            collection=self._collection,
            path=self._path,
            elapsed_s=round(elapsed_s, 3),
            errors=tuple(errors),
        )
        now = time.monotonic()
        if status != "running" or now - self._last_publish >= _PUBLISH_EVERY_S:
            self._last_publish = now
            self._publish(progress)
        return progress

    def _publish(self, progress: BackfillProgress) -> None:
        self._write_local(progress)
        fields = {name: json.dumps(value) for name, value in asdict(progress).items()}
        added = self._unpublished
        try:
            with broker_client(self._client.app) as redis:
                pipe = redis.pipeline()  # one transaction: the records and the old field never both count
                done_chunks.append(pipe, self.job_id, added, STATE_TTL_S)
                if self._legacy_field:
                    pipe.hdel(_key(self.job_id), done_chunks.LEGACY_FIELD)
                pipe.hset(_key(self.job_id), mapping=fields)
                pipe.expire(_key(self.job_id), STATE_TTL_S)
                pipe.execute()
        except BrokerUnavailableError:
            if progress.state == "running":
                raise
            return
        self._unpublished = []
        self._legacy_field = False

    def _write_local(self, progress: BackfillProgress) -> None:
        """Replace the local progress file in one step, so that a reader never sees half of it."""
        partial = self._progress_path.with_name(self._progress_path.name + ".tmp")
        try:
            partial.write_text(json.dumps(asdict(progress)), encoding="utf-8")
            os.replace(partial, self._progress_path)
        except OSError as exc:  # the checkpoint file, written first, is what resuming needs
            log.warning("could not write backfill progress to %s: %s", self._progress_path, exc)

    def finish(self) -> None:
        """Close the checkpoint file and free the run lock (``progress`` publishes the final state)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        try:
            with broker_client(self._client.app) as redis:
                run_lock.release(redis, self.job_id, self._holder)
        except BrokerUnavailableError as exc:  # the lock expires on its own
            log.warning("could not free the run lock of backfill %s: %s", self.job_id, exc)


def load_progress(client: EmbeddingClient, job_id: str) -> dict[str, Any] | None:
    """Return the published progress fields of a backfill job, or None if Redis has none."""
    with broker_client(client.app) as redis:
        raw = redis.hgetall(_key(job_id))
    if not raw:
        return None
    fields = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
    fields.pop(done_chunks.LEGACY_FIELD, None)
    fields["errors"] = tuple(fields.get("errors", ()))
    return fields


def load_local_progress(state_dir: Path, job_id: str) -> tuple[dict[str, Any], float] | None:
    """Return a backfill job's last progress from its local file and when it was written (epoch s)."""
    path = progress_file(state_dir, job_id)
    try:
        written_at = path.stat().st_mtime
        fields: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fields["errors"] = tuple(fields.get("errors", ()))
    return fields, written_at
