"""A worker whose model folder is missing or corrupt refuses to start, with one line naming the problem."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from producer.errors import (
    ModelLoadError,
)
from tests.support.models import build_model
from tests.support.workers import EMBEDQ
from worker.encoding.encoder import StaticEncoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COMMAND_TIMEOUT_S = 60.0


# --- A worker whose model folder is missing or corrupt refuses to start, with one line ---------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _save_table(folder: Path, **tensors: np.ndarray) -> None:
    save_file(tensors, str(folder / "model.safetensors"))


def _vocab_size(folder: Path) -> int:
    return len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing folder": (shutil.rmtree, "does not exist"),
    "no tokenizer.json": (
        lambda m: (m / "tokenizer.json").unlink(),
        "lacks config.json, model.safetensors or",
    ),
    "truncated model.safetensors": (lambda m: _truncate(m / "model.safetensors"), "the file is truncated"),
    "empty model.safetensors": (
        lambda m: (m / "model.safetensors").write_bytes(b""),
        "the file is truncated",
    ),
    "wrong tensor name": (
        lambda m: _save_table(m, embedding=np.zeros((_vocab_size(m), 16), np.float32)),
        "has no tensor 'embeddings'",
    ),
    "table of one dimension": (
        lambda m: _save_table(m, embeddings=np.zeros(16, np.float32)),
        "must be a non-empty 2-D table",
    ),
    "fewer rows than tokens": (
        lambda m: _save_table(m, embeddings=np.zeros((3, 16), np.float32)),
        "do not belong together",
    ),
    "tokenizer.json not JSON": (
        lambda m: (m / "tokenizer.json").write_text("{ not json"),
        "cannot load the tokenizer",
    ),
    "tokenizer.json not a tokenizer": (
        lambda m: (m / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}'),
        "cannot load the tokenizer",
    ),
    "config.json not JSON": (lambda m: (m / "config.json").write_text("normalize: yes"), "config.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_worker_with_a_bad_model_folder_exits_with_one_line_naming_the_problem(
    tmp_path: Path, corruption: str
) -> None:
    model = build_model(tmp_path / "model")
    StaticEncoder.from_pretrained(str(model))  # the folder was good before it was damaged
    corrupt, complaint = CORRUPTIONS[corruption]
    corrupt(model)
    # The broker does not answer: the worker must fail on the model before it tries the broker.
    env = {"PATH": "/usr/bin:/bin", "EMBEDQ_MODEL": str(model), "EMBEDQ_BROKER_URL": "redis://127.0.0.1:9/0"}
    done = subprocess.run(
        [str(EMBEDQ), "worker"], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("embedq: error: ") and complaint in line
    assert "Traceback" not in done.stderr


# These load today and fail later, per task or silently: the loader should refuse them.
VALUE_CORRUPTIONS: dict[str, Callable[[Path], object]] = {
    "a table of NaN": lambda m: _save_table(m, embeddings=np.full((_vocab_size(m), 16), np.nan, np.float32)),
    "a mapping past the end of the table": lambda m: _save_table(
        m,
        embeddings=np.zeros((10, 16), np.float32),
        mapping=np.full(_vocab_size(m), 99, np.int64),
    ),
    "a max_length that is not a number": lambda m: (m / "config.json").write_text(
        json.dumps({"model_type": "model2vec", "normalize": True, "max_length": "eight"})
    ),
}


@pytest.mark.parametrize("corruption", list(VALUE_CORRUPTIONS))
def test_a_model_that_would_fail_every_task_is_refused_at_load(tmp_path: Path, corruption: str) -> None:
    model = build_model(tmp_path / "model")
    VALUE_CORRUPTIONS[corruption](model)
    try:
        StaticEncoder.from_pretrained(str(model))
    except ModelLoadError:
        return
    raise AssertionError(f"a model folder with {corruption} loaded without a ModelLoadError")
