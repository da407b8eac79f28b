"""StaticEncoder: parity with model2vec 0.10.0, input checks and shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import static_model
from model2vec import StaticModel

from producer.errors import InvalidInputError
from tests.support.corpora import module_paragraphs
from tests.support.models import PARITY_TEXTS, build_model
from worker.encoding.encoder import StaticEncoder

TOKENLEARN_MODEL = Path(static_model.__file__).resolve().parent / "model"
TOLERANCE = 1e-6


def _reference(path: Path, **kwargs: object) -> StaticModel:
    table_dtype = json.loads((path / "config.json").read_text()).get("embedding_dtype")
    # A float16 reference rounds its output to float16; compare against its float32 widening.
    quantize_to = "float32" if table_dtype == "float16" else None
    return StaticModel.from_pretrained(path, quantize_to=quantize_to, force_download=False, **kwargs)


def _assert_parity(path: Path, texts: list[str], **encode_kwargs: object) -> None:
    _assert_same(StaticEncoder.from_pretrained(path), _reference(path), texts, **encode_kwargs)


def _assert_same(
    encoder: StaticEncoder, reference: StaticModel, texts: list[str], **encode_kwargs: object
) -> None:
    """Compare one loaded encoder with the reference (which restores its tokenizer after each call)."""
    ours = encoder.encode(texts, **encode_kwargs)
    theirs = reference.encode(texts, use_multiprocessing=False, **encode_kwargs)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape
    difference = float(np.abs(ours - theirs.astype(np.float32)).max()) if len(texts) else 0.0
    assert difference <= TOLERANCE, f"max abs difference {difference}"


@pytest.mark.parametrize("tokenizer_kind", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("quantized_rows", [None, 37])
def test_parity_on_tiny_models(
    tmp_path: Path, tokenizer_kind: str, dtype: str, quantized_rows: int | None
) -> None:
    path = build_model(
        tmp_path / "m", tokenizer_kind=tokenizer_kind, dtype=dtype, quantized_rows=quantized_rows
    )
    _assert_parity(path, PARITY_TEXTS)
    _assert_parity(path, PARITY_TEXTS, normalize=False)
    _assert_parity(path, PARITY_TEXTS, max_length=None, normalize=False)
    _assert_parity(path, PARITY_TEXTS, max_length=3)
    _assert_parity(path, PARITY_TEXTS[3:7], normalize=False)  # a few texts: the gather path


@pytest.mark.parametrize("normalize", [None, False])
def test_parity_when_config_has_no_normalize_or_max_length(tmp_path: Path, normalize: bool | None) -> None:
    path = build_model(tmp_path / "m", normalize=normalize, max_length=None)
    _assert_parity(path, PARITY_TEXTS)


def test_parity_on_bundled_model() -> None:
    encoder = StaticEncoder.from_pretrained()
    texts = module_paragraphs() + PARITY_TEXTS
    assert len(texts) > 1000
    ours = encoder.encode(texts, batch_size=256)  # several batches: the pipelined path
    theirs = _reference(encoder.source_dir).encode(texts, use_multiprocessing=False)
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE
    assert encoder.dim == 256


def test_parity_on_vocabulary_quantized_int8_model() -> None:
    # Loaded once each: its large multilingual tokenizer takes seconds to load.
    encoder, reference = StaticEncoder.from_pretrained(TOKENLEARN_MODEL), _reference(TOKENLEARN_MODEL)
    texts = module_paragraphs()[:2000] + PARITY_TEXTS
    _assert_same(encoder, reference, texts)
    _assert_same(encoder, reference, PARITY_TEXTS, normalize=False, max_length=None)
    # Its tokenizer's unknown id is the token '.', which the reference drops: so must we.
    np.testing.assert_array_equal(encoder.encode(["Dogs bark."]), encoder.encode(["Dogs bark"]))
    assert not np.array_equal(encoder.encode(["Dogs bark!"]), encoder.encode(["Dogs bark"]))


def test_output_is_float32_and_unit_norm_for_float16_table(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m", dtype="float16")
    vectors = StaticEncoder.from_pretrained(path).encode(["The quick brown fox", ""])
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-6)
    assert not vectors[1].any()


def test_empty_list_gives_zero_rows(tiny_model: Path) -> None:
    encoder = StaticEncoder.from_pretrained(tiny_model)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_batch_size_does_not_change_vectors(tiny_model: Path) -> None:
    encoder = StaticEncoder.from_pretrained(tiny_model)
    texts = PARITY_TEXTS * 5
    np.testing.assert_array_equal(encoder.encode(texts, batch_size=1), encoder.encode(texts))


def test_repeated_texts_get_the_vectors_of_their_first_occurrence(tiny_model: Path) -> None:
    encoder = StaticEncoder.from_pretrained(tiny_model)
    texts = [PARITY_TEXTS[i % 7] for i in range(0, 300, 3)] + PARITY_TEXTS
    vectors = encoder.encode(texts, batch_size=4)
    np.testing.assert_array_equal(vectors, np.stack([encoder.encode([text])[0] for text in texts]))
    _assert_parity(tiny_model, texts, batch_size=4)


def test_ten_megabyte_text_encodes(tiny_model: Path) -> None:
    encoder = StaticEncoder.from_pretrained(tiny_model)
    vectors = encoder.encode(["fox jumps " * 1_000_000])
    assert vectors.shape == (1, encoder.dim)
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (None, "texts must be a list of str, got NoneType"),
        ("a single text", "wrap a single text in a list"),
        (b"bytes", "got bytes"),
        (42, "got int"),
        (["ok", None], r"texts\[1\] must be str, got NoneType"),
        (["ok", "fine", b"raw"], r"texts\[2\] must be str, got bytes"),
        ([("a", "pair")], r"texts\[0\] must be str, got tuple"),
        (["ok", "bad \ud800 surrogate"], r"texts\[1\] is not valid Unicode"),
        (["ok", "ok", "ok", "bad \ud800 surrogate"], r"texts\[3\] is not valid Unicode"),
    ],
)
def test_bad_input_raises_one_typed_error_naming_the_item(
    tiny_model: Path, texts: object, message: str
) -> None:
    encoder = StaticEncoder.from_pretrained(tiny_model)
    with pytest.raises(InvalidInputError, match=message):
        encoder.encode(texts)  # type: ignore[arg-type]


def test_encoder_keeps_tokenizer_parallelism_setting(tiny_model: Path) -> None:
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    StaticEncoder.from_pretrained(tiny_model).encode(["x"] * 20_000)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
