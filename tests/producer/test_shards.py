"""--shard K/N: every chunk in exactly one shard, shard totals, and a sharded job's summed status."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.backfill.model import BackfillOptions, BackfillProgress, Shard
from producer.backfill.run import job_id_for
from producer.backfill.shards import parse_shard, sum_shards
from producer.errors import ConfigError


def test_every_chunk_falls_in_exactly_one_shard_and_the_totals_add_up() -> None:
    for count in (1, 2, 3, 7):
        shards = [Shard(k, count) for k in range(1, count + 1)]
        for chunk in range(50):
            assert sum(shard.owns(chunk) for shard in shards) == 1
        for total, size in ((0, 10), (1, 10), (95, 10), (100, 10), (12_345, 1000)):
            assert sum(shard.records(total, size) for shard in shards) == total


def test_parse_shard_names_the_expected_form() -> None:
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0", "-1/3"):
        with pytest.raises(ConfigError, match="K/N"):
            parse_shard(bad)


def test_each_shard_is_a_job_of_its_own_under_the_unsharded_id(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x"}\n')
    whole = job_id_for(BackfillOptions(corpus, "docs"), "m")
    first = job_id_for(BackfillOptions(corpus, "docs", shard=Shard(1, 2)), "m")
    second = job_id_for(BackfillOptions(corpus, "docs", shard=Shard(2, 2)), "m")
    assert (first, second) == (f"{whole}-shard1of2", f"{whole}-shard2of2")


def _part(index: int, state: str, done: int, total: int) -> BackfillProgress:
    return BackfillProgress(
        job_id=f"backfill-x-shard{index}of2", state=state, docs_done=done, docs_failed=1,
        docs_total=total, chunks_done=done // 10, collection="docs", path="/c.jsonl",
        elapsed_s=float(index), errors=(f"e{index}",),
    )  # fmt: skip


def test_a_sharded_job_sums_its_shards_and_is_done_only_when_all_are() -> None:
    assert sum_shards("backfill-x", []) is None
    one = sum_shards("backfill-x", [_part(1, "done", 50, 50)])
    assert one is not None and one.state.startswith("partial (1 of 2") and one.docs_total is None
    both = sum_shards("backfill-x", [_part(1, "done", 50, 50), _part(2, "running", 20, 40)])
    assert both is not None
    assert (both.state, both.docs_done, both.docs_failed, both.docs_total, both.chunks_done) == (
        "running (2 of 2 shards reported)", 70, 2, 90, 7,
    )  # fmt: skip
    assert both.elapsed_s == 2.0 and both.errors == ("backfill-x-shard1of2: e1", "backfill-x-shard2of2: e2")
    done = sum_shards("backfill-x", [_part(1, "done", 50, 50), _part(2, "done", 40, 40)])
    assert done is not None and done.state == "done" and done.job_id == "backfill-x"
