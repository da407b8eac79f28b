"""What the command prints about failures: a hint that can help, and checkpoint errors in one line."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer.backfill.model import BackfillOptions, ChunkRecord
from producer.backfill.state import BackfillState, CheckpointFullError, checkpoint_error
from producer.errors import ConfigError, exit_code
from tests.support.workers import REPO_ROOT
from worker.cli.output import failure_hint


@pytest.mark.parametrize(
    ("errors", "words"),
    [
        (["chunk 3 (1000 documents): ModelMismatchError: vectors have dimension 64 ..."], "cannot help"),
        (["chunk 3 (1000 documents): SinkUnavailableError: Milvus is down"], "run the same command again"),
        (["corpus.jsonl line 7: the id is 600 bytes, over the 512-byte limit"], "fix the records"),
        (["chunk 1 (10 documents): InvalidInputError: texts[0] ..."], "fix the records"),
    ],
)
def test_the_failure_hint_says_what_can_help(errors: list[str], words: str) -> None:
    assert words in failure_hint(errors)


def test_a_full_disk_under_the_checkpoint_is_transient_and_said_in_one_line(tmp_path: Path) -> None:
    options = BackfillOptions(tmp_path / "corpus.jsonl", "c", state_dir=tmp_path)
    state = BackfillState(None, "job", options, tmp_path / "job.jsonl", 0)  # type: ignore[arg-type]
    full = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - writes fail with ENOSPC, as on a full disk
    state._log = full
    try:
        with pytest.raises(CheckpointFullError, match="is full") as caught:
            state.confirm(ChunkRecord(0, 10, 0))
    finally:
        with contextlib.suppress(OSError):  # closing flushes the unwritten line again
            full.close()
    assert exit_code(caught.value) == 75 and "\n" not in str(caught.value)
    assert isinstance(checkpoint_error(OSError(errno.EROFS, "Read-only file system"), tmp_path), ConfigError)


def test_a_checkpoint_directory_that_cannot_be_made_exits_2(redis_url: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    (tmp_path / ".embedq").write_text("a file where the state directory goes")
    env = {**os.environ, "EMBEDQ_BROKER_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "backfill", str(corpus), "--collection", "c"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    said = [line for line in done.stderr.splitlines() if "checkpoint" in line]
    assert len(said) == 1 and said[0].startswith("embedq: error:")


def test_the_summary_line_says_how_many_documents_were_truncated_and_what_to_do() -> None:
    from producer.backfill.model import BackfillSummary
    from worker.cli.output import backfill_summary_line

    summary = BackfillSummary("job", 40, 0, 0, 1.0, 40.0, truncated=37, max_tokens=512)
    assert backfill_summary_line(summary, "docs").endswith(
        "; 37 documents were longer than 512 tokens and truncated: use --split-tokens 512 "
        "to keep their ends searchable"
    )
    one = BackfillSummary("job", 1, 0, 0, 1.0, 1.0, truncated=1, max_tokens=8)
    assert "; 1 document was longer than 8 tokens" in backfill_summary_line(one, "docs")
    assert "truncated" not in backfill_summary_line(BackfillSummary("job", 1, 0, 0, 1.0, 1.0), "docs")
