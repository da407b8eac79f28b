"""Tiny real Model2Vec models built in memory: trained tokenizers and seeded tables on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Static embeddings are fast: a table lookup and a mean.",
    "Workers pull batches of documents from Redis and write vectors to Milvus.",
    "Le renard brun saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Task queues retry transient failures with exponential backoff.",
    "Every request is tracked by its task id until the result expires.",
] * 20

# Inputs the parity tests run on: multilingual text, emoji, whitespace-only, empty, very long,
# longer than max_length tokens, and characters the tiny vocabularies do not know.
PARITY_TEXTS = [
    "The quick brown fox",
    "",
    "   \t\n  ",
    "héllo wörld, ¿qué tal? 你好，世界 مرحبا بالعالم Привет мир",
    "emoji 🙂🚀👩‍👩‍👧 and ✓ symbols",
    "Workers pull batches. Of documents... from Redis!",
    "zzzz qqqq xxxx",
    "fox " * 700,
    "a" * 100_000,
    " ".join(CORPUS),
    ".",
    "...",
]


def _train(kind: str) -> Tokenizer:
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer: trainers.Trainer = trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[PAD]", "[UNK]"]
        )
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>"])
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=200, special_tokens=["<pad>", "<unk>"], unk_token="<unk>"
        )
    else:
        raise ValueError(kind)
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def build_model(
    folder: Path,
    *,
    tokenizer_kind: str = "wordpiece",
    dtype: str = "float32",
    quantized_rows: int | None = None,
    normalize: bool | None = True,
    dim: int = 16,
    max_length: int | None = 8,
    seed: int = 0,
) -> Path:
    """Write a Model2Vec folder; ``quantized_rows`` adds ``mapping`` and ``weights`` tensors."""
    rng = np.random.default_rng(seed)
    tokenizer = _train(tokenizer_kind)
    vocab_size = tokenizer.get_vocab_size()
    rows = quantized_rows or vocab_size
    table = rng.normal(size=(rows, dim)).astype(np.float32)
    if dtype == "int8":
        table = np.clip(np.rint(table * 40), -127, 127).astype(np.int8)
    else:
        table = table.astype(dtype)
    tensors = {"embeddings": table}
    if quantized_rows is not None:
        tensors["mapping"] = rng.integers(0, rows, size=vocab_size).astype(np.int64)
        tensors["weights"] = rng.uniform(0.1, 2.0, size=vocab_size).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    tokenizer.save(str(folder / "tokenizer.json"))
    config: dict[str, object] = {"model_type": "model2vec", "hidden_dim": dim, "embedding_dtype": dtype}
    if normalize is not None:
        config["normalize"] = normalize
    if max_length is not None:
        config["max_length"] = max_length
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A small WordPiece float32 model with max_length 8 tokens."""
    return build_model(tmp_path / "tiny")
