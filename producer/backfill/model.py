"""What a backfill is about: its options, its progress, its summary and its confirmed chunks.

Plain frozen values with no I/O, shared by the run (run.py), its state (state.py) and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from producer.errors import ConfigError

DEFAULT_STATE_DIR = Path(".embedq/backfill")


@dataclass(frozen=True)
class BackfillOptions:
    """What to backfill, where, and how much to keep in flight."""

    path: Path
    collection: str
    format: str | None = None
    id_field: str | None = "id"
    text_field: str = "text"
    metadata_fields: tuple[str, ...] | None = None
    chunk_size: int = 1000
    max_in_flight: int = 4
    state_dir: Path = DEFAULT_STATE_DIR
    skip_unchanged: bool = False
    """Leave rows whose recorded content hash matches alone (neither encoded nor written); the
    ``embedq backfill`` command turns it on (``--rewrite-all`` off)."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_in_flight < 1:
            raise ConfigError("chunk_size and max_in_flight must be positive")
        if not self.collection:
            raise ConfigError("collection must be a non-empty name")


@dataclass(frozen=True)
class BackfillProgress:
    """A backfill job's progress, as `embedq status JOB_ID` shows it from any shell."""

    job_id: str
    state: str
    docs_done: int
    docs_failed: int
    docs_total: int | None
    chunks_done: int
    collection: str
    path: str
    elapsed_s: float
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackfillSummary:
    """How a backfill run ended."""

    job_id: str
    written: int
    failed: int
    skipped: int
    elapsed_s: float
    docs_per_s: float
    errors: tuple[str, ...] = ()
    unchanged: int = 0
    """Documents already stored with the same content (with ``skip_unchanged``)."""
    complete: bool = False
    """Every chunk of the file was confirmed (by this run or an earlier one)."""


@dataclass(frozen=True)
class ChunkRecord:
    """A confirmed chunk: rows written by a worker, records rejected before sending."""

    index: int
    written: int
    rejected: int
