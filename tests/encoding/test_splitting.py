"""Passages cut by the model's tokenizer: at most N tokens, M shared, verbatim slices; truncation counted."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from producer.errors import InvalidInputError
from tests.support.models import CORPUS, build_model
from worker.encoding import StaticEncoder
from worker.encoding.splitting import SplitSpec, split_texts, token_windows, tokenizer_with_offsets

LONG = " ".join(CORPUS[:7] * 3)  # about 250 tokens of real sentences


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> StaticEncoder:
    return StaticEncoder.from_pretrained(build_model(tmp_path_factory.mktemp("m") / "model", max_length=64))


def _tokens(tokenizer: Tokenizer, text: str) -> list[str]:
    return list(tokenizer.encode(text, add_special_tokens=False).tokens)


@pytest.mark.parametrize(
    ("count", "max_tokens", "overlap"), [(25, 10, 3), (100, 7, 0), (31, 8, 7), (5, 8, 2)]
)
def test_windows_hold_at_most_n_tokens_share_at_least_m_and_cover_the_text(
    count: int, max_tokens: int, overlap: int
) -> None:
    windows = token_windows([None] * count, SplitSpec(max_tokens, overlap))
    assert windows[0][0] == 0 and windows[-1][1] == count
    assert all(0 < end - start <= max_tokens for start, end in windows)
    for (start, end), (next_start, _) in itertools.pairwise(windows):
        assert start < next_start and end - next_start == overlap


def test_windows_end_and_start_at_word_boundaries_when_they_can() -> None:
    word_ids = [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5, 6, 7, 8, 9, 9, 10]
    windows = token_windows(word_ids, SplitSpec(5, 1))
    for start, end in windows:
        assert start == 0 or word_ids[start] != word_ids[start - 1]
        assert end == len(word_ids) or word_ids[end] != word_ids[end - 1]
    assert all(end - start <= 5 for start, end in windows)
    assert all(end - next_start >= 1 for (_, end), (next_start, _) in itertools.pairwise(windows))


def test_passages_are_slices_of_the_text_at_token_boundaries_with_the_overlap(encoder: StaticEncoder) -> None:
    tokenizer = Tokenizer.from_file(str(encoder.source_dir / "tokenizer.json"))
    spec = SplitSpec(40, 10)
    [passages, [short]] = encoder.split([LONG, "The quick brown fox"], spec)
    assert short == "The quick brown fox"
    assert len(passages) > 3
    position = 0
    for passage in passages:
        found = LONG.find(passage, max(0, position - len(passage)))
        assert found >= 0, "a passage is a verbatim slice of its document"
        position = found + len(passage)
        assert len(_tokens(tokenizer, passage)) <= 40
    assert LONG.endswith(passages[-1])
    all_tokens = _tokens(tokenizer, LONG)
    for first, second in itertools.pairwise(passages):
        head, tail = _tokens(tokenizer, first), _tokens(tokenizer, second)
        shared = next(
            n for n in range(min(len(head), len(tail)), -1, -1) if head[len(head) - n :] == tail[:n]
        )
        assert shared >= 10
    # Together the passages hold every token of the document.
    assert sum(len(_tokens(tokenizer, p)) for p in passages) >= len(all_tokens)


def test_unicode_text_is_cut_at_character_offsets(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_file(str(build_model(tmp_path / "m") / "tokenizer.json"))
    text = "Déjà vu — über café. " * 30
    passages = split_texts(tokenizer_with_offsets(tokenizer), [text], SplitSpec(16, 4))[0]
    assert len(passages) > 1 and all(passage in text for passage in passages)


def test_more_tokens_than_the_model_reads_is_refused_naming_both(encoder: StaticEncoder) -> None:
    with pytest.raises(InvalidInputError, match=r"--split-tokens 65 .*max_length 64"):
        encoder.split([LONG], SplitSpec(65, 0))
    with pytest.raises(InvalidInputError, match="--overlap"):
        SplitSpec(10, 10)


def test_encoding_counts_the_texts_cut_at_max_length(encoder: StaticEncoder) -> None:
    vectors, counts, truncated = encoder.encode_with_truncation([LONG, "The quick brown fox", "fox " * 64])
    assert truncated.tolist() == [True, False, False]
    assert 0 < counts[0] <= 64
    plain, plain_counts = encoder.encode_with_token_counts([LONG, "The quick brown fox", "fox " * 64])
    assert (plain == vectors).all() and (plain_counts == counts).all()


def test_the_encoder_splits_as_the_full_tokenizer_does(encoder: StaticEncoder) -> None:
    # The encoder counts tokens with its fast tokenizer and takes offsets from the ASCII path (no
    # normaliser): the passages must be those of the model's own tokenizer.
    full = tokenizer_with_offsets(Tokenizer.from_file(str(encoder.source_dir / "tokenizer.json")))
    texts = [LONG, "Déjà vu — über café. " * 30, "The quick brown fox", LONG.upper(), ""]
    spec = SplitSpec(24, 6)
    assert encoder.split(texts, spec) == split_texts(full, texts, spec)
