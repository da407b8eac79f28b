"""Model sources: bundled, local folder, Hugging Face cache, and the errors when none works."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from safetensors.numpy import save_file

from producer.errors import ModelLoadError
from tests.support.models import build_model
from worker.encoding.encoder import StaticEncoder
from worker.encoding.loader import BUNDLED_MODEL_DIR, BUNDLED_MODEL_ID, load_model_files


def _populate_hub_cache(cache_dir: Path, repo_id: str, model_dir: Path, revision: str = "main") -> None:
    """Lay out ``model_dir`` as huggingface_hub's cache does after a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forbid Hub traffic, so a test that would download fails instead."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_bundled_model_is_the_default() -> None:
    encoder = StaticEncoder.from_pretrained()
    assert encoder.model_id == BUNDLED_MODEL_ID
    assert encoder.source_dir == BUNDLED_MODEL_DIR
    assert encoder.dim == 256
    assert encoder.normalize is True
    assert sum(p.stat().st_size for p in BUNDLED_MODEL_DIR.iterdir()) <= 16 * 1024 * 1024


def test_local_folder(tiny_model: Path) -> None:
    encoder = StaticEncoder.from_pretrained(str(tiny_model))
    assert encoder.source_dir == tiny_model.resolve()
    assert encoder.encode(["The quick brown fox"]).shape == (1, 16)


def test_hub_id_served_from_a_populated_cache_without_network(
    tmp_path: Path, tiny_model: Path, offline: None
) -> None:
    _populate_hub_cache(tmp_path / "hub", "someone/tiny-static", tiny_model)
    encoder = StaticEncoder.from_pretrained("someone/tiny-static", cache_dir=tmp_path / "hub")
    assert encoder.model_id == "someone/tiny-static"
    assert encoder.source_dir.is_relative_to(tmp_path / "hub")
    expected = StaticEncoder.from_pretrained(tiny_model).encode(["fox"])
    np.testing.assert_array_equal(encoder.encode(["fox"]), expected)


def test_hub_revision_is_honoured(tmp_path: Path, tiny_model: Path, offline: None) -> None:
    _populate_hub_cache(tmp_path / "hub", "someone/tiny-static", tiny_model, revision="v1")
    encoder = StaticEncoder.from_pretrained("someone/tiny-static", cache_dir=tmp_path / "hub", revision="v1")
    assert encoder.dim == 16
    with pytest.raises(ModelLoadError, match="someone/tiny-static"):
        StaticEncoder.from_pretrained("someone/tiny-static", cache_dir=tmp_path / "hub", revision="v2")


def test_uncached_hub_id_offline_names_the_id_and_the_fix(tmp_path: Path, offline: None) -> None:
    with pytest.raises(ModelLoadError) as caught:
        StaticEncoder.from_pretrained("minishlab/potion-base-8M", cache_dir=tmp_path / "empty")
    message = str(caught.value)
    assert "minishlab/potion-base-8M" in message
    assert "local model folder" in message
    assert "hf download" in message


@pytest.mark.parametrize("source", ["./no/such/folder", "/no/such/model", "a/b/c"])
def test_missing_local_folder(source: str) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        StaticEncoder.from_pretrained(source)


def test_invalid_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a valid Hugging Face Hub id"):
        StaticEncoder.from_pretrained("not a valid id!")


def test_folder_without_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"lacks config\.json, model\.safetensors or tokenizer\.json"):
        StaticEncoder.from_pretrained(tmp_path)


def test_truncated_safetensors(tiny_model: Path) -> None:
    tensors = tiny_model / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated or not safetensors"):
        load_model_files(tiny_model)


def test_wrong_tensor_name(tiny_model: Path) -> None:
    save_file({"vectors": np.zeros((4, 4), dtype=np.float32)}, str(tiny_model / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"no tensor 'embeddings' \(found \['vectors'\]\)"):
        load_model_files(tiny_model)


def test_tokenizer_that_does_not_load(tiny_model: Path) -> None:
    (tiny_model / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer"):
        load_model_files(tiny_model)


def test_table_smaller_than_vocabulary(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m")
    save_file({"embeddings": np.zeros((3, 16), dtype=np.float32)}, str(path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="do not belong together"):
        StaticEncoder.from_pretrained(path)


def test_broken_config(tiny_model: Path) -> None:
    (tiny_model / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model_files(tiny_model)


def test_the_fingerprint_is_stable_and_changes_with_any_of_the_three_files(tmp_path: Path) -> None:
    folder = build_model(tmp_path / "m")
    first = load_model_files(folder).fingerprint
    assert len(first) == 64 and load_model_files(folder).fingerprint == first
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert load_model_files(copy).fingerprint == first  # same bytes elsewhere: the same model
    seen = {first}
    for name, change in (
        ("model.safetensors", lambda: build_model(folder, seed=1)),
        ("config.json", lambda: (folder / "config.json").write_text('{"normalize": false}')),
        (
            "tokenizer.json",
            lambda: (folder / "tokenizer.json").write_text(
                (folder / "tokenizer.json").read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1)
            ),
        ),
    ):
        change()
        fingerprint = load_model_files(folder).fingerprint
        assert fingerprint not in seen, name
        seen.add(fingerprint)


def test_a_hub_snapshot_folder_gives_its_revision(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = build_model(tmp_path / "models--org--name" / "snapshots" / commit)
    assert load_model_files(snapshot).revision == commit
    assert load_model_files(build_model(tmp_path / "plain")).revision is None
