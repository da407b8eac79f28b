"""Long texts cut into passages of at most N tokens of the model's own tokenizer, overlapping by M.

Cuts are made in the original text at token boundaries (the tokenizer's character offsets), so a
passage is a verbatim slice of its document. Where it can, a passage ends at the end of a word and
the next one starts at the start of a word (the tokenizer's word ids), so that re-tokenizing the
passage gives the same tokens; a single word longer than N tokens is cut inside the word. Pure:
no I/O, no queue, no Milvus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

from producer.errors import InvalidInputError


@dataclass(frozen=True)
class SplitSpec:
    """Passages of at most ``max_tokens`` tokens; consecutive passages share ``overlap_tokens``."""

    max_tokens: int
    overlap_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidInputError(f"--split-tokens must be at least 1, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InvalidInputError(
                f"--overlap must be from 0 to --split-tokens - 1 ({self.max_tokens - 1}), "
                f"got {self.overlap_tokens}"
            )


def token_windows(word_ids: Sequence[int | None], spec: SplitSpec) -> list[tuple[int, int]]:
    """Return the [start, end) token ranges of the passages of a text of ``len(word_ids)`` tokens.

    Each range holds at most ``spec.max_tokens`` tokens; each starts at least
    ``spec.overlap_tokens`` tokens before the previous one ends; the last one ends at the last
    token. Ends and starts move to word boundaries when that keeps both rules and makes progress.
    """
    count = len(word_ids)
    if count <= spec.max_tokens:
        return [(0, count)]

    def word_start(index: int) -> bool:
        return (
            index == 0 or index >= count or word_ids[index] is None or word_ids[index] != word_ids[index - 1]
        )

    # A cut moves back to a word boundary by at most half a step, so passages stay long.
    slack = (spec.max_tokens - spec.overlap_tokens) // 2

    def back_to_word_start(index: int) -> int:
        aligned = index
        while aligned > index - slack and not word_start(aligned):
            aligned -= 1
        return aligned if word_start(aligned) else index

    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + spec.max_tokens, count)
        if end < count:
            end = back_to_word_start(end)
        windows.append((start, end))
        if end >= count:
            return windows
        start = max(back_to_word_start(end - spec.overlap_tokens), start + 1)


def split_encoding(text: str, encoding: Encoding, spec: SplitSpec) -> list[str]:
    """Return the passages of ``text`` given its encoding (character offsets into ``text``)."""
    windows = token_windows(encoding.word_ids, spec)
    if len(windows) == 1:
        return [text]
    offsets = encoding.offsets
    return [text[offsets[start][0] : offsets[end - 1][1]] for start, end in windows]


def split_texts(
    encode: Callable[[Sequence[str]], list[Encoding]],
    texts: Sequence[str],
    spec: SplitSpec,
    token_counts: Sequence[int] | None = None,
) -> list[list[str]]:
    """Return each text's passages; a text of at most ``spec.max_tokens`` tokens is one passage, itself.

    ``encode`` tokenizes with character offsets. Given ``token_counts`` (from a tokenizer without
    offsets, cheaper), only the texts longer than ``spec.max_tokens`` are tokenized again.
    """
    long = [i for i in range(len(texts)) if token_counts is None or token_counts[i] > spec.max_tokens]
    passages = [[text] for text in texts]
    if long:
        encodings = encode([texts[i] for i in long])
        for index, encoding in zip(long, encodings, strict=True):
            passages[index] = split_encoding(texts[index], encoding, spec)
    return passages


def tokenizer_with_offsets(tokenizer: Tokenizer) -> Callable[[Sequence[str]], list[Encoding]]:
    """Return ``encode(texts)`` by ``tokenizer``, without special tokens, with character offsets."""
    return lambda texts: tokenizer.encode_batch(list(texts), add_special_tokens=False)
