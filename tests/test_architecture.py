"""The layout's promises: the shared contract is cheap to import, and the layer contracts hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import producer",
        "import producer.errors",
        "import producer.settings",
        "import producer.protocol.names",
        "import producer.protocol.messages",
        "import producer.protocol.texts",
        "import worker",
        "import worker.cli.main",
    ],
)
def test_the_shared_contract_and_the_cli_entry_load_no_celery_and_no_model_stack(statement: str) -> None:
    heavy = {"celery", "kombu", "tokenizers", "safetensors", "pymilvus", "scipy"}
    assert _loaded_after(statement) & heavy == set()


def test_the_import_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_worker_tasks_leave_pymilvus_to_the_first_upsert() -> None:
    assert "pymilvus" not in _loaded_after("import worker.queue.tasks")
