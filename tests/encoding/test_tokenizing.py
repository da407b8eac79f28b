"""TextTokenizer gives the model tokenizer's own token ids, whichever path a text takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import static_model
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from tests.support.corpora import module_paragraphs
from worker.encoding.loader import BUNDLED_MODEL_DIR
from worker.encoding.tokenizing import TextTokenizer

FRAGMENTS = [
    "[CLS]", "[cls]", "[Mask]", "[MASK]", "[SEP]", "[UNK]", "[PAD]", "##", "##ing", "don't", "U.S.A.",
    "e-mail", "x" * 120, "\t", "\n", "\r\n", "\x00", "\x01", "\x0b", "\x0c", "\x1f", "\x7f", "é", "É",
    "中文", "\u00a0", "\u3000", "\u200b", "\ufffd", "🙂", "Ǆ", "İ", "ß", "ﬁ", "  ",
]  # fmt: skip
ASCII_CHARS = st.characters(min_codepoint=0, max_codepoint=127)
TEXTS = st.lists(
    st.one_of(st.text(ASCII_CHARS, max_size=40), st.sampled_from(FRAGMENTS), st.text(max_size=8)),
    max_size=12,
).map("".join)


def _tokenizer(lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(BUNDLED_MODEL_DIR / "tokenizer.json"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


TOKENIZERS = {
    "bundled": _tokenizer(),
    "cased": _tokenizer(lowercase=False),
    "cased, accents stripped": _tokenizer(lowercase=False, strip_accents=True),
}


def _ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


FAST = {name: TextTokenizer(tokenizer) for name, tokenizer in TOKENIZERS.items()}


def _assert_same_ids(name: str, texts: list[str]) -> None:
    tokenizer, fast = TOKENIZERS[name], FAST[name]
    assert fast.has_ascii_path
    got = [encoding.ids for encoding in fast.encode_batch(texts)]
    for text, ours, theirs in zip(texts, got, _ids(tokenizer, texts), strict=True):
        assert ours == theirs, f"token ids differ for {text!r}"


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=6))
def test_generated_texts_get_the_full_tokenizers_ids(name: str, texts: list[str]) -> None:
    _assert_same_ids(name, texts)


def test_real_paragraphs_get_the_full_tokenizers_ids() -> None:
    paragraphs = module_paragraphs()
    assert len(paragraphs) > 1000
    _assert_same_ids("bundled", paragraphs)
    _assert_same_ids("cased", [text.upper() for text in paragraphs[:500]])


def test_a_bert_normaliser_before_another_pre_tokenizer_keeps_the_full_path() -> None:
    tokenizer = _tokenizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    fast = TextTokenizer(tokenizer)
    assert not fast.has_ascii_path
    texts = ["tab\tseparated\nlines", "Plain"]
    assert [e.ids for e in fast.encode_batch(texts)] == _ids(tokenizer, texts)


def test_tokenizers_without_a_bert_normaliser_keep_the_full_path() -> None:
    model_dir = Path(static_model.__file__).resolve().parent / "model"
    unigram = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    fast = TextTokenizer(unigram)
    assert not fast.has_ascii_path
    texts = ["Plain ASCII text.", "ünïcode"]
    assert [e.ids for e in fast.encode_batch(texts)] == _ids(unigram, texts)
