"""Resolve a model source to a local folder and read its files into plain values.

A source is ``None`` (the model bundled in this package), a local folder, or a Hugging Face
Hub id. Hub ids are served from the local cache when it has the files, so a worker never
touches the network at start for a cached model; only a cache miss downloads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from producer.errors import ModelLoadError
from producer.protocol.names import BUNDLED_MODEL_ID
from worker.encoding.fingerprint import file_fingerprint, hub_revision

__all__ = ["BUNDLED_MODEL_DIR", "BUNDLED_MODEL_ID", "ModelFiles", "load_model_files", "resolve_source"]

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled_model"

# (config, tensors, tokenizer, name of the table tensor): model2vec's own layout first, then the
# two sentence-transformers layouts that model2vec also reads.
_LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("config.json", "model.safetensors", "tokenizer.json", "embeddings"),
    ("config_sentence_transformers.json", "model.safetensors", "tokenizer.json", "embedding.weight"),
    (
        "config_sentence_transformers.json",
        "0_StaticEmbedding/model.safetensors",
        "0_StaticEmbedding/tokenizer.json",
        "embedding.weight",
    ),
)
HUB_FILES = sorted({name for layout in _LAYOUTS for name in layout[:3]})


@dataclass(frozen=True)
class ModelFiles:
    """The contents of a model folder, as plain values."""

    model_id: str
    source_dir: Path
    embeddings: np.ndarray
    weights: np.ndarray | None
    mapping: np.ndarray | None
    tokenizer: Tokenizer
    config: dict[str, Any]
    fingerprint: str = ""
    """BLAKE2b-256 (hex) of the config, tensors and tokenizer files (worker.encoding.fingerprint)."""
    revision: str | None = None
    """The Hub commit the files came from, when the folder is a Hugging Face cache snapshot."""


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a separator is a file-system path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def resolve_source(
    source: str | os.PathLike[str] | None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
) -> tuple[str, Path]:
    """Return ``(model_id, local folder)`` for a source, downloading from the Hub only on a cache miss."""
    if source is None:
        return BUNDLED_MODEL_ID, BUNDLED_MODEL_DIR
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return text, path.resolve()
    if path.exists():
        raise ModelLoadError(f"model source {text!r} is a file; pass the folder that holds model.safetensors")
    if isinstance(source, os.PathLike) or _looks_like_path(text):
        raise ModelLoadError(
            f"model folder {text!r} does not exist; pass an existing folder with config.json, "
            "model.safetensors and tokenizer.json, or a Hugging Face Hub id such as minishlab/potion-base-8M"
        )
    return text, _download(text, revision=revision, cache_dir=cache_dir, token=token)


def _download(
    repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike[str] | None, token: str | None
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    kwargs: dict[str, Any] = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": cache_dir,
        "allow_patterns": HUB_FILES,
    }
    try:
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except HFValidationError as exc:
        raise ModelLoadError(
            f"model source {repo_id!r} is neither an existing folder nor a valid Hugging Face Hub id "
            "(owner/name); pass a local model folder or a Hub id such as minishlab/potion-base-8M"
        ) from exc
    except LocalEntryNotFoundError:
        pass  # not cached yet: download below
    try:
        return Path(snapshot_download(**kwargs, token=token))
    except Exception as exc:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}). Fix: pass a local model folder (EMBEDQ_MODEL=/path/to/model), or "
            f"pre-download it on a machine with network: `hf download {repo_id}` and copy "
            "the cache (HF_HOME) here"
        ) from exc


def _layout(folder: Path) -> tuple[Path, Path, Path, str]:
    for config_name, tensors_name, tokenizer_name, table_name in _LAYOUTS:
        paths = (folder / config_name, folder / tensors_name, folder / tokenizer_name)
        if all(p.is_file() for p in paths):
            return (*paths, table_name)
    raise ModelLoadError(
        f"model folder {folder} lacks config.json, model.safetensors or tokenizer.json; "
        "point the source at a Model2Vec model folder"
    )


def _read_tensors(path: Path, table_name: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = set(handle.keys())
            if table_name not in names:
                raise ModelLoadError(
                    f"{path} has no tensor {table_name!r} (found {sorted(names)}); "
                    "it is not a Model2Vec model file"
                )
            return {
                name: handle.get_tensor(name) for name in (table_name, "weights", "mapping") if name in names
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; the file is truncated or not safetensors") from exc


def _read_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer {path}: {exc}") from exc


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def load_model_files(
    source: str | os.PathLike[str] | None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
) -> ModelFiles:
    """Resolve ``source`` and read its config, tensors and tokenizer."""
    model_id, folder = resolve_source(source, revision=revision, cache_dir=cache_dir, token=token)
    config_path, tensors_path, tokenizer_path, table_name = _layout(folder)
    tensors = _read_tensors(tensors_path, table_name)
    table = tensors[table_name]
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise ModelLoadError(
            f"{tensors_path}: tensor {table_name!r} must be a non-empty 2-D table, got {table.shape}"
        )
    return ModelFiles(
        model_id=model_id,
        source_dir=folder,
        embeddings=table,
        weights=tensors.get("weights"),
        mapping=tensors.get("mapping"),
        tokenizer=_read_tokenizer(tokenizer_path),
        config=_read_config(config_path),
        fingerprint=file_fingerprint(
            {"config": config_path, "tensors": tensors_path, "tokenizer": tokenizer_path}
        ),
        revision=hub_revision(folder),
    )
