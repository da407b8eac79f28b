"""The fast tokenizer path: same ids as tokenizers where it is used, a logged fallback where not."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import static_model
from hypothesis import given, settings
from hypothesis import strategies as st

from producer.errors import ConfigError, InvalidInputError, ModelLoadError
from producer.settings import load_settings
from tests.support.corpora import module_paragraphs
from tests.support.models import PARITY_TEXTS, build_model
from worker.encoding.encoder import StaticEncoder
from worker.encoding.fast_tokenizing import ALLOWED_NON_PRINTABLE, is_printable, probe_texts

TOKENLEARN_MODEL = Path(static_model.__file__).resolve().parent / "model"
# Texts in the classes where tokie 0.1.4 differs, and their neighbours that it handles alike.
HOSTILE = [
    " ", "\u3000", "\u200b", "\ufeff", "\u00a0 \t", "a\x7fb", "DEL\x7f", "nul\x00byte", "\x85next line",
    "unassigned \uffc1 and \u0e64", "private \ue000 use", "[CLS] [cls] [MASK]x", "<pad> <unk> <s></s>",
    "tab\there\nnewline\r\n", "soft\u00adhyphen zero\u200bwidth", "\U0001fae8 newer emoji",
]  # fmt: skip
CHARS = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from([" ", "\t", "\n", "\x7f", "\x00", "\u3000", "\u200b", "\ufeff", ".", "é", "中", "🙂"]),
)


@pytest.fixture(scope="module")
def encoders() -> dict[str, tuple[StaticEncoder, StaticEncoder]]:
    """(fast, tokenizers) encoder pairs for the bundled WordPiece and tokenlearn's Unigram model."""
    pairs = {}
    for name, path in (("bundled", None), ("tokenlearn", TOKENLEARN_MODEL)):
        fast = StaticEncoder.from_pretrained(path, tokenizer="fast")
        pairs[name] = (fast, StaticEncoder.from_pretrained(path, tokenizer="tokenizers"))
    return pairs


def _assert_same_ids(fast: StaticEncoder, reference: StaticEncoder, texts: list[str]) -> None:
    for max_length in (fast.max_length, None, 3):
        ours, theirs = fast.tokenize(texts, max_length), reference.tokenize(texts, max_length)
        if not (np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])):
            for text in texts:  # name the first text that differs
                one, other = fast.tokenize([text], max_length), reference.tokenize([text], max_length)
                assert one[0].tolist() == other[0].tolist(), f"ids differ for {text!r}"
            pytest.fail("ids differ only when tokenized together")


@pytest.mark.parametrize("name", ["bundled", "tokenlearn"])
def test_fast_path_runs_and_gives_the_same_ids(
    encoders: dict[str, tuple[StaticEncoder, StaticEncoder]], name: str
) -> None:
    fast, reference = encoders[name]
    assert (fast.tokenizer_name, reference.tokenizer_name) == ("tokie", "tokenizers")
    texts = module_paragraphs()[:3000] + PARITY_TEXTS + HOSTILE
    texts += probe_texts(reference._tokenizer, None)  # also uncut: past the pre-cut
    _assert_same_ids(fast, reference, texts)
    np.testing.assert_array_equal(fast.encode(texts, batch_size=700), reference.encode(texts, batch_size=700))


@pytest.mark.parametrize("name", ["bundled", "tokenlearn"])
@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(CHARS, max_size=30), min_size=1, max_size=8))
def test_generated_texts_get_the_same_ids(
    encoders: dict[str, tuple[StaticEncoder, StaticEncoder]], name: str, texts: list[str]
) -> None:
    _assert_same_ids(*encoders[name], texts)


def test_allowed_non_printable_characters_are_the_ones_the_probe_checks() -> None:
    assert all(not char.isprintable() for char in ALLOWED_NON_PRINTABLE.replace("-", ""))


@pytest.mark.parametrize("choice", ["auto", "tokenizers"])
def test_a_tokenizer_tokie_gets_wrong_falls_back_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, choice: str
) -> None:
    # A BPE tokenizer with a Whitespace pre-tokenizer and no normaliser: tokie 0.1.4 returns no ids.
    path = build_model(tmp_path / "bpe", tokenizer_kind="bpe")
    with caplog.at_level(logging.WARNING, logger="worker.encoding.fast_tokenizing"):
        encoder = StaticEncoder.from_pretrained(path, tokenizer=choice)
    assert encoder.tokenizer_name == "tokenizers"
    warnings = [record.getMessage() for record in caplog.records]
    if choice == "tokenizers":
        assert warnings == []
        return
    assert len(warnings) == 1
    assert str(path) in warnings[0] or encoder.model_id in warnings[0]
    assert "The quick brown fox" in warnings[0]  # the first differing probe text
    assert encoder.encode(["The quick brown fox"]).any()


def test_fast_refuses_to_load_when_the_probe_fails(tmp_path: Path) -> None:
    path = build_model(tmp_path / "bpe", tokenizer_kind="bpe")
    with pytest.raises(ModelLoadError, match=r"EMBEDQ_TOKENIZER=fast.*set EMBEDQ_TOKENIZER=auto"):
        StaticEncoder.from_pretrained(path, tokenizer="fast")


def test_unknown_tokenizer_choice_is_a_config_error(tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="EMBEDQ_TOKENIZER must be one of auto, fast, tokenizers"):
        StaticEncoder.from_pretrained(tiny_model, tokenizer="rust")


def test_settings_read_embedq_tokenizer() -> None:
    assert load_settings({}).tokenizer == "auto"
    assert load_settings({"EMBEDQ_TOKENIZER": " Fast "}).tokenizer == "fast"
    with pytest.raises(ConfigError, match="EMBEDQ_TOKENIZER must be one of"):
        load_settings({"EMBEDQ_TOKENIZER": "quick"})


def test_invalid_unicode_on_the_fast_path_names_the_item(
    encoders: dict[str, tuple[StaticEncoder, StaticEncoder]],
) -> None:
    fast, _ = encoders["bundled"]
    with pytest.raises(InvalidInputError, match=r"texts\[2\] is not valid Unicode"):
        fast.encode(["ok", "fine", "bad \ud800"])


def test_fast_path_works_in_a_forked_child_after_use_in_the_parent(
    encoders: dict[str, tuple[StaticEncoder, StaticEncoder]],
) -> None:
    fast, _ = encoders["bundled"]
    texts = module_paragraphs()[:2000]
    expected = fast.encode(texts)  # the parent has used tokie's threads before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            same = np.array_equal(fast.encode(texts), expected)
            os.write(write, b"1" if same else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 1)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"1"


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_the_fast_printable_check_agrees_with_str_isprintable(text: str) -> None:
    assert is_printable(text) == text.isprintable()


@pytest.mark.parametrize("control", [chr(code) for code in [*range(0x20), 0x7F]])
def test_every_ascii_control_is_not_printable(control: str) -> None:
    assert not is_printable(f"plain text {control} around it") and is_printable("plain text, no control ~")
