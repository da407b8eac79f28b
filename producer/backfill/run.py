"""Bulk backfill: stream a corpus file through the workers into a Milvus collection, resumably.

The file is cut into chunks of ``chunk_size`` records in file order, so chunk k is the same
records on every run. At most ``max_in_flight`` chunks are queued at once (backpressure: Redis
never holds the corpus). A chunk counts as done only once its worker reports the rows written;
done chunks are recorded both in a local checkpoint file and in Redis, so a run interrupted at
any point (Ctrl-C, producer killed, Redis restarted) and started again with the same arguments
skips them. Upserts are by id, so a chunk redone after a crash never duplicates rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.backfill.fleet import pool_reader
from producer.backfill.idset import SeenIds
from producer.backfill.in_flight import InFlightLimit
from producer.backfill.known_lines import Unchanged
from producer.backfill.manifest import Confirmed, LocalHashes
from producer.backfill.model import (
    DEFAULT_STATE_DIR,
    BackfillOptions,
    BackfillProgress,
    BackfillSummary,
    ChunkRecord,
)
from producer.backfill.readers import FieldNames, Rejected, count_records, detect_format, read_records
from producer.backfill.shards import local_shards, register_shard, registered_shards, sum_shards
from producer.backfill.state import BackfillState, load_local_progress, load_progress
from producer.backfill.target import Target, probe_target
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.errors import BrokerUnavailableError, ConfigError, EmbedqError, TransientError
from producer.job import TaskOutcome
from producer.protocol.documents import Document
from producer.protocol.messages import UpsertResult

log = logging.getLogger(__name__)

_POLL_S = 0.02
_LOOK_EVERY_S = 0.05  # between looks at finished chunks while reading (a rerun reads 100 chunks in ~0.5 s)
_WORKER_CHECK_AFTER_S = 10.0
_STOP_AFTER_TRANSIENT_FAILURES = 3
_MAX_ERRORS_KEPT = 20


def job_id_for(options: BackfillOptions, model: str) -> str:
    """Return the job id: the same file (path, size, mtime) with the same arguments is the same job."""
    path = options.path.resolve()
    stat = path.stat()
    identity = {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "collection": options.collection,
        "model": model,
        "format": detect_format(path, options.format),
        "fields": [options.id_field, options.text_field, options.metadata_fields],
        "chunk_size": options.chunk_size,
    }
    if options.split is not None:  # absent otherwise: the ids of jobs started before splitting existed hold
        identity["split"] = list(options.split)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    job_id = f"backfill-{digest[:20]}"
    return job_id if options.shard is None else options.shard.job_id(job_id)


Record = Document | Rejected | Unchanged


def _chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class _Run:
    """Mutable counters of one run."""

    state: BackfillState
    limit: InFlightLimit
    started: float = field(default_factory=time.monotonic)
    written: int = 0
    unchanged: int = 0
    truncated: int = 0
    max_tokens: int | None = None
    passages: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    # task id -> the chunks it carries: (chunk index, documents sent, records rejected, left out unchanged)
    in_flight: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    transient_failures_in_a_row: int = 0
    last_look: float = 0.0
    tasks_sent: int = 0
    hashes: LocalHashes | None = None
    sent_hashes: dict[str, list[Confirmed]] = field(default_factory=dict)
    # With local hashes, the few documents left to send from several chunks go as one task.
    pending: list[Document] = field(default_factory=list)
    pending_parts: list[tuple[int, int, int, int]] = field(default_factory=list)
    pending_hashes: list[Confirmed] = field(default_factory=list)
    # Where the chunks went, as the workers' results said (None: workers of an earlier version).
    written_to: Target | None = None

    def note_error(self, message: str) -> None:
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)


def _record(run: _Run, task_id: str, outcome: TaskOutcome) -> None:
    parts = run.in_flight.pop(task_id)
    pairs = run.sent_hashes.pop(task_id, [])
    error = outcome.error
    if error is not None:
        # Not confirmed: a later run retries these chunks.
        run.failed += sum(sent + rejected + left_out for _, sent, rejected, left_out in parts)
        run.transient_failures_in_a_row = (
            run.transient_failures_in_a_row + 1 if isinstance(error, TransientError) else 0
        )
        chunks = ", ".join(str(part[0]) for part in parts)
        sent = sum(part[1] for part in parts)
        run.note_error(f"chunk {chunks} ({sent} documents): {type(error).__name__}: {error}")
        return
    run.transient_failures_in_a_row = 0
    result = UpsertResult.decode(outcome.value)
    if run.hashes is not None:
        run.hashes.confirmed(pairs)
    if result.milvus is not None and result.collection_uuid:
        run.written_to = Target(result.milvus, result.collection_uuid)
    run.written += result.written
    run.unchanged += result.unchanged
    run.truncated += result.truncated
    run.max_tokens = result.max_tokens or run.max_tokens
    run.passages += result.passages
    for chunk_index, sent, rejected, left_out in parts:
        run.unchanged += left_out
        run.failed += rejected
        stored = result.written + result.unchanged if len(parts) == 1 else sent
        run.state.confirm(ChunkRecord(chunk_index, stored + left_out, rejected))


def _collect(client: EmbeddingClient, run: _Run, *, block: bool, throttled: bool = False) -> None:
    """Record finished chunks; with ``block``, wait until at least one in-flight chunk finishes.

    While nothing finishes for a while, check that a worker still serves the queue: with none,
    NoWorkerError ends the run (resumable) instead of waiting forever.
    """
    last_progress = time.monotonic()
    if throttled and last_progress - run.last_look < _LOOK_EVERY_S:
        return  # looked a moment ago: one Redis round trip per chunk adds up when chunks are skipped fast
    run.last_look = last_progress
    while run.in_flight:
        task_ids = list(run.in_flight)
        finished = 0
        for task_id, outcome in zip(task_ids, client.reader.outcomes(task_ids), strict=True):
            if outcome.state in ("done", "failed"):
                finished += 1
                _record(run, task_id, outcome)
        run.state.check_broker()
        if finished or not block:
            return
        if time.monotonic() - last_progress > _WORKER_CHECK_AFTER_S:
            client.model_dim(client.bulk_queue)  # raises NoWorkerError when no worker is left
            last_progress = time.monotonic()
        time.sleep(_POLL_S)


def _process_chunk(
    client: EmbeddingClient,
    options: BackfillOptions,
    run: _Run,
    chunk_index: int,
    chunk: list[Record],
    report: Callable[[str], None],
) -> None:
    """Skip a confirmed chunk, or send it once fewer than ``max_in_flight`` chunks are queued."""
    done = run.state.confirmed(chunk_index)
    documents = [record for record in chunk if isinstance(record, Document)]
    stopped = run.transient_failures_in_a_row >= _STOP_AFTER_TRANSIENT_FAILURES
    if stopped or done is not None:
        if run.hashes is not None:
            run.hashes.skip(documents)
        if done is not None and not stopped:
            run.skipped += done.written + done.rejected
        return  # stopped: Milvus or the workers are down, more chunks would only fail one by one
    sent_before = run.tasks_sent
    rejected = [record for record in chunk if isinstance(record, Rejected)]
    unchanged = [record.id for record in chunk if isinstance(record, Unchanged)]
    for record in rejected:
        run.note_error(record.reason)
    if run.hashes is not None and (documents or unchanged):
        documents, pairs, left_out = run.hashes.split(documents, unchanged)
        if documents:  # sent with the next chunks' changes, as one task
            run.pending.extend(documents)
            run.pending_parts.append((chunk_index, len(documents), len(rejected), left_out))
            run.pending_hashes.extend(pairs)
            if len(run.pending) >= options.chunk_size:
                _send_pending(client, options, run, report)
        else:
            run.failed += len(rejected)
            run.unchanged += left_out
            run.state.confirm(ChunkRecord(chunk_index, left_out, len(rejected)))
    elif documents:
        _wait_for_room(client, run, report)
        task_id = client.submit_upsert(
            options.collection, documents, skip_unchanged=options.skip_unchanged, split=options.split
        )
        run.in_flight[task_id] = [(chunk_index, len(documents), len(rejected), 0)]
        run.tasks_sent += 1
    else:
        run.failed += len(rejected)
        run.state.confirm(ChunkRecord(chunk_index, 0, len(rejected)))
    # A chunk that sent nothing (unchanged, or gathered for a later task) looks at most every 50 ms.
    _collect(client, run, block=False, throttled=run.tasks_sent == sent_before)
    report("running")


def _wait_for_room(client: EmbeddingClient, run: _Run, report: Callable[[str], None]) -> None:
    while len(run.in_flight) >= run.limit.current():
        _collect(client, run, block=True)
        report("running")


def _send_pending(
    client: EmbeddingClient, options: BackfillOptions, run: _Run, report: Callable[[str], None]
) -> None:
    """Send the documents gathered from several chunks as one task (not once sending has stopped)."""
    if not run.pending or run.transient_failures_in_a_row >= _STOP_AFTER_TRANSIENT_FAILURES:
        return
    _wait_for_room(client, run, report)
    task_id = client.submit_upsert(
        options.collection, run.pending, skip_unchanged=options.skip_unchanged, split=options.split
    )
    run.in_flight[task_id] = run.pending_parts
    run.tasks_sent += 1
    run.sent_hashes[task_id] = run.pending_hashes
    run.pending, run.pending_parts, run.pending_hashes = [], [], []


def _check_saved_progress(
    client: EmbeddingClient, collection: str, state: BackfillState, on_notice: Callable[[str], None]
) -> None:
    """Skip nothing before knowing that the collection the saved chunks were written to is still there."""
    if not state.saved_chunks:
        return
    try:
        notice = state.reconcile(probe_target(client, collection))
    except BaseException:
        state.finish()
        raise
    if notice is not None:
        on_notice(notice)


def _remember_target(client: EmbeddingClient, collection: str, run: _Run, *, complete: bool) -> None:
    """Record which collection a complete run's chunks went to, if that was not known when it began.

    After an incomplete run (Milvus down, say) the next run asks before skipping anything anyway.
    """
    state = run.state
    if state.target is not None or not run.written or not complete:
        return
    if run.written_to is not None:  # the chunks' own results said where they went: no probe
        state.reconcile(run.written_to)
        return
    try:
        state.reconcile(probe_target(client, collection))
    except EmbedqError as exc:  # the chunks are confirmed; a later run asks again before skipping them
        log.warning("could not record which collection backfill %s wrote to: %s", state.job_id, exc)


def run_backfill(
    client: EmbeddingClient,
    options: BackfillOptions,
    *,
    on_progress: Callable[[BackfillProgress], None] | None = None,
    seen: SeenIds | None = None,
    hashes: LocalHashes | None = None,
    on_notice: Callable[[str], None] = log.warning,
) -> BackfillSummary:
    """Stream ``options.path`` through the workers into ``options.collection``; resumable by job id.

    ``seen`` records the ids read (for deleting the rows missing from the file afterwards);
    ``hashes`` (a sync manifest) leaves documents it knows unchanged out of the queue and records
    the content hash of every confirmed document; ``on_notice`` is given one line when the saved
    progress is discarded (see ``target.py``).
    """
    fields = FieldNames(options.id_field, options.text_field, options.metadata_fields)
    # Passages: rows are <id>#<k>, which the manifest's line digests do not describe.
    lines = hashes if options.split is None else None
    records: Iterable[Record] = read_records(options.path, options.format, fields, lines)
    if seen is not None:
        records = seen.recording(records)
    job_id = job_id_for(options, client.model)
    total = count_records(options.path, options.format)
    shard = options.shard
    if shard is not None:
        total = shard.records(total, options.chunk_size)
        with broker_client(client.app) as redis:
            register_shard(redis, job_id.rsplit("-shard", 1)[0], job_id)
    _check_split(client, options)
    state = BackfillState.open(client, job_id, options, total)
    _check_saved_progress(client, options.collection, state, on_notice)
    run = _Run(state, InFlightLimit(options.max_in_flight, pool_reader(client)), hashes=hashes)

    def report(status: str) -> None:
        elapsed_s = time.monotonic() - run.started
        progress = state.progress(status, run.written, run.failed, run.skipped, elapsed_s, run.errors)
        if on_progress is not None:
            on_progress(progress)

    status = "interrupted"
    try:
        for chunk_index, chunk in enumerate(_chunks(records, options.chunk_size)):
            if shard is None or shard.owns(chunk_index):
                _process_chunk(client, options, run, chunk_index, chunk, report)
        _send_pending(client, options, run, report)
        state.set_total()
        while run.in_flight:
            _collect(client, run, block=True)
            report("running")
        if run.transient_failures_in_a_row >= _STOP_AFTER_TRANSIENT_FAILURES:
            run.note_error(
                f"stopped sending after {run.transient_failures_in_a_row} chunks in a row failed with a "
                "transient error (Milvus or the workers down); fix it and run the same command to resume"
            )
        status = "done" if state.all_confirmed(None if shard is None else shard.owns) else "failed"
        _remember_target(client, options.collection, run, complete=status == "done")
    except EmbedqError:
        status = "failed"
        raise
    finally:
        state.finish()
        with contextlib.suppress(BrokerUnavailableError):  # the local checkpoint holds every confirmed chunk
            report(status)
    elapsed_s = time.monotonic() - run.started
    return BackfillSummary(
        job_id=job_id,
        written=run.written,
        unchanged=run.unchanged,
        complete=status == "done",
        failed=run.failed,
        skipped=run.skipped,
        elapsed_s=elapsed_s,
        docs_per_s=run.written / elapsed_s if elapsed_s > 0 else 0.0,
        errors=tuple(run.errors),
        truncated=run.truncated,
        max_tokens=run.max_tokens,
        passages=run.passages,
    )


def _check_split(client: EmbeddingClient, options: BackfillOptions) -> None:
    """Refuse passages longer than the model reads, before anything is sent."""
    split_tokens = options.split_tokens
    if split_tokens is None:
        return
    max_length = client.model_presence(client.bulk_queue).max_length
    if max_length is not None and split_tokens > max_length:
        raise ConfigError(
            f"--split-tokens {split_tokens} is more than model {client.model!r} reads (max_length "
            f"{max_length} tokens): use --split-tokens {max_length} or less"
        )


def backfill_status(
    client: EmbeddingClient, job_id: str, state_dir: Path | None = DEFAULT_STATE_DIR
) -> BackfillProgress | None:
    """Return a backfill job's progress from Redis, else from ``state_dir`` (None: Redis only).

    None if neither knows ``job_id``.
    """
    saved: dict[str, Any] | None = load_progress(client, job_id)
    if saved is not None:
        return BackfillProgress(**saved)
    local = None if state_dir is None else local_backfill_status(job_id, state_dir)
    if local is not None:
        return local[0]
    with broker_client(client.app) as redis:
        shard_ids = set(registered_shards(redis, job_id))
    shard_ids.update(() if state_dir is None else local_shards(state_dir, job_id))
    parts = (backfill_status(client, shard_id, state_dir) for shard_id in sorted(shard_ids))
    return sum_shards(job_id, (part for part in parts if part is not None))


def local_backfill_status(
    job_id: str, state_dir: Path = DEFAULT_STATE_DIR
) -> tuple[BackfillProgress, float] | None:
    """Return a backfill job's last progress written in ``state_dir`` and when (epoch s), without Redis."""
    local = load_local_progress(state_dir, job_id)
    if local is None:
        return None
    fields, written_at = local
    try:
        return BackfillProgress(**fields), written_at
    except TypeError:  # written by another embedq version
        return None
