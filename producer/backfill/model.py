"""What a backfill is about: its options, its progress, its summary and its confirmed chunks.

Plain frozen values with no I/O, shared by the run (run.py), its state (state.py) and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from producer.backfill.in_flight import AUTO, InFlightSetting, check_in_flight
from producer.errors import ConfigError

DEFAULT_STATE_DIR = Path(".embedq/backfill")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise ConfigError(
                f"a shard is K/N with 1 <= K <= N, got {self.index}/{self.count} (e.g. --shard 1/4)"
            )

    def owns(self, chunk_index: int) -> bool:
        """Whether chunk ``chunk_index`` (0-based, file order) belongs to this shard."""
        return chunk_index % self.count == self.index - 1

    def records(self, total: int, chunk_size: int) -> int:
        """Return how many of a file's ``total`` records fall in this shard's chunks."""
        chunks = -(-total // chunk_size)
        return sum(min(chunk_size, total - i * chunk_size) for i in range(self.index - 1, chunks, self.count))

    def job_id(self, sharded_job_id: str) -> str:
        """Return this shard's job id within the sharded job ``sharded_job_id``."""
        return f"{sharded_job_id}-shard{self.index}of{self.count}"


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
    max_in_flight: InFlightSetting = AUTO
    state_dir: Path = DEFAULT_STATE_DIR
    skip_unchanged: bool = False
    """Leave rows whose recorded content hash matches alone (neither encoded nor written); the
    ``embedq backfill`` command turns it on (``--rewrite-all`` off)."""
    shard: Shard | None = None
    split_tokens: int | None = None
    """Store each document as passages of at most this many tokens (rows ``<id>#<k>``); None: one row."""
    overlap_tokens: int = 0
    """Tokens consecutive passages share (with ``split_tokens``)."""

    def __post_init__(self) -> None:
        check_in_flight(self.max_in_flight)
        if self.split_tokens is None and self.overlap_tokens:
            raise ConfigError("--overlap needs --split-tokens: give the passage length too")
        if self.split_tokens is not None and self.split_tokens < 1:
            raise ConfigError(f"--split-tokens must be at least 1, got {self.split_tokens}")
        if self.split_tokens is not None and not 0 <= self.overlap_tokens < self.split_tokens:
            raise ConfigError(
                f"--overlap must be from 0 to --split-tokens - 1 ({self.split_tokens - 1}), "
                f"got {self.overlap_tokens}"
            )

    @property
    def split(self) -> tuple[int, int] | None:
        """(max tokens, overlap tokens) when documents are split into passages."""
        return None if self.split_tokens is None else (self.split_tokens, self.overlap_tokens)
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be positive")
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
    truncated: int = 0
    """Documents written cut at the model's ``max_tokens`` (without splitting)."""
    max_tokens: int | None = None
    """The model's max_length in tokens, as its workers reported it with ``truncated``."""
    passages: int = 0
    """Passage rows written (with splitting)."""


@dataclass(frozen=True)
class ChunkRecord:
    """A confirmed chunk: rows written by a worker, records rejected before sending."""

    index: int
    written: int
    rejected: int
