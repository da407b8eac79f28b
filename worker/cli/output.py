"""What the ``embedq`` command prints: vectors, job and backfill states, search hits, a progress bar."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from producer.backfill import BackfillProgress, BackfillSummary
    from producer.job import JobStatus
    from worker.milvus.search import SearchHit

SNIPPET_CHARS = 80
SHOWN_VALUES = 4
SHOWN_ERRORS = 5


def snippet(text: str, width: int = SNIPPET_CHARS) -> str:
    """Return ``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def vector_summary(index: int, text: str, vector: np.ndarray) -> str:
    """Return one human line about a vector: its dimension, norm and first values, and its text."""
    values = ", ".join(f"{value:+.4f}" for value in vector[:SHOWN_VALUES])
    more = ", …" if vector.shape[0] > SHOWN_VALUES else ""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    return f"[{index}] dim {vector.shape[0]}  norm {norm:.4f}  [{values}{more}]  {snippet(text)!r}"


def vectors_json(vectors: np.ndarray) -> str:
    """Return the vectors as a JSON list of lists; each float reads back as the same float32."""
    return json.dumps(vectors.tolist())


def job_status_lines(status: JobStatus) -> list[str]:
    """Return the lines `embedq status` prints for an embedding job."""
    state: str = status.state
    if state == "pending":
        state = "pending (an unknown or expired id also reads as pending)"
    lines = [f"job {status.id}: {state}, {status.tasks_done} of {status.tasks_total} tasks done"]
    if status.error_type is not None:
        lines.append(f"error: {status.error_type}: {status.error_message}")
    return lines


def backfill_progress_lines(progress: BackfillProgress) -> list[str]:
    """Return the lines `embedq status` prints for a backfill job."""
    total = "?" if progress.docs_total is None else str(progress.docs_total)
    lines = [
        f"backfill {progress.job_id}: {progress.state}, {progress.docs_done} of {total} documents done, "
        f"{progress.docs_failed} failed, {progress.chunks_done} chunks done, {progress.elapsed_s:.1f} s",
        f"file {progress.path} -> collection {progress.collection}",
    ]
    lines += [f"error: {error}" for error in progress.errors[:SHOWN_ERRORS]]
    return lines


def local_progress_line(state_dir: Path, state: str, written_at: float, now: float | None = None) -> str:
    """Return the line that says a backfill's progress came from its local file, and how old it is."""
    age_s = max(0.0, (time.time() if now is None else now) - written_at)
    line = f"(read from {state_dir} in this directory, written {age_s:.0f} s ago"
    if state == "running":
        line += "; if it stays the same, the backfill stopped: run the same command again to resume it"
    return line + ")"


def backfill_summary_line(summary: BackfillSummary, collection: str, deleted: int | None = None) -> str:
    """Return the line that ends `embedq backfill`: written, unchanged, deleted (when asked), failed."""
    removed = "" if deleted is None else f"{deleted} deleted, "
    return (
        f"backfill {summary.job_id}: {summary.written} documents written to {collection}, "
        f"{summary.unchanged} unchanged, {removed}"
        f"{summary.failed} failed, {summary.skipped} skipped (done by an earlier run) "
        f"in {summary.elapsed_s:.1f} s ({summary.docs_per_s:.0f} docs/s)"
        + (f"; {summary.passages} passages written" if summary.passages else "")
        + truncation_note(summary)
    )


def truncation_note(summary: BackfillSummary) -> str:
    """Say how many documents were cut at the model's max_length, and how to keep their ends searchable."""
    if not summary.truncated:
        return ""
    limit = summary.max_tokens
    longer = f"longer than {limit} tokens" if limit is not None else "longer than the model reads"
    was = "document was" if summary.truncated == 1 else "documents were"
    option = f"--split-tokens {limit}" if limit is not None else "--split-tokens N"
    return f"; {summary.truncated} {was} {longer} and truncated: use {option} to keep their ends searchable"


_TRANSIENT_NAMES = (
    "BrokerUnavailableError",
    "SinkUnavailableError",
    "NoWorkerError",
    "OverloadedError",
    "ResultTimeoutError",
    "TransientError",
    "BrokerRestartedError",
)


def failure_hint(errors: Sequence[str]) -> str:
    """Say what to do about a backfill's failed documents, from its (sampled) error lines.

    Running the same command again helps only with transient failures (Milvus, the broker or the
    workers away); rejected records and another model's collection need a change first.
    """
    if any("ModelMismatchError" in error for error in errors):
        return (
            "the collection holds another model's vectors: running the same command again cannot help; "
            "use another --collection, or the model the collection was made with"
        )
    if any(f": {name}:" in error for error in errors for name in _TRANSIENT_NAMES):
        return "run the same command again to retry them (documents already written are skipped)"
    return "fix the records listed above and run again: the same input fails the same way"


def search_hit_lines(hits: Sequence[SearchHit]) -> list[str]:
    """Return one line per hit: rank, cosine score, document id and the start of its text."""
    return [
        f"{rank:>3}  {hit['score']:.4f}  {hit['id']}  {snippet(hit.get('text', ''))}"
        for rank, hit in enumerate(hits, start=1)
    ]


class BackfillProgressBar:
    """A tqdm bar on stderr over documents handled, fed by run_backfill's progress callback.

    Shows docs/s and, once the file is counted, the total and ETA; absent when stderr is not a
    terminal or tqdm is not installed (a producer-only install).
    """

    def __init__(self, description: str) -> None:
        self._description = description
        self._bar: Any = None

    def __enter__(self) -> BackfillProgressBar:
        try:
            from tqdm import tqdm
        except ImportError:
            return self
        self._bar = tqdm(
            total=None, unit="doc", desc=self._description, file=sys.stderr, disable=None, dynamic_ncols=True
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, progress: BackfillProgress) -> None:
        """Move the bar to the documents written, skipped or failed so far."""
        bar = self._bar
        if bar is None or bar.disable:
            return
        if progress.docs_total is not None and bar.total != progress.docs_total:
            bar.total = progress.docs_total
        if progress.docs_failed:
            bar.set_postfix(failed=progress.docs_failed, refresh=False)
        handled = progress.docs_done + progress.docs_failed
        if handled > bar.n:
            bar.update(handled - bar.n)
        else:
            bar.refresh()
