"""VectorAssembler: parts placed as they arrive, in task order, whatever the arrival order."""

from __future__ import annotations

import numpy as np
import pytest

from producer.assembly import VectorAssembler
from producer.errors import ModelMismatchError
from producer.protocol.messages import EmbedResult

MODEL = "org/model"


def _part(rows: int, dim: int = 4, seed: int = 0, model: str = MODEL) -> EmbedResult:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return EmbedResult.from_array(model, vectors, tokens=list(range(rows)))


@pytest.mark.parametrize("order", [(2, 0, 1), (0, 1, 2)])
@pytest.mark.parametrize("task_rows", [[3, 2, 4], None, [3, 2, 5]], ids=["placed", "reattached", "bad-rows"])
def test_parts_come_back_in_task_order(task_rows: list[int] | None, order: tuple[int, ...]) -> None:
    parts = [_part(3, seed=1), _part(2, seed=2), _part(4, seed=3)]
    assembler = VectorAssembler("job", MODEL, 3, task_rows)
    for index in order:
        assembler.add(index, parts[index])
    vectors, tokens = assembler.finish()
    assert vectors.dtype == np.float32 and vectors.flags.writeable
    np.testing.assert_array_equal(vectors, np.concatenate([part.view() for part in parts]))
    assert tokens == (0, 1, 2, 0, 1, 0, 1, 2, 3)


def test_a_single_part_is_returned_writable_and_detached_from_the_message() -> None:
    part = _part(3)
    vectors, _ = _single(part)
    vectors[0, 0] = 42.0
    assert part.view()[0, 0] != 42.0


def _single(part: EmbedResult) -> tuple[np.ndarray, tuple[int, ...] | None]:
    assembler = VectorAssembler("job", MODEL, 1, [3])
    assembler.add(0, part)
    return assembler.finish()


def test_a_foreign_model_or_mixed_dimension_is_reported_at_the_end() -> None:
    assembler = VectorAssembler("job", MODEL, 2, [3, 3])
    assembler.add(0, _part(3))
    assembler.add(1, _part(3, model="org/other"))
    with pytest.raises(ModelMismatchError, match="org/other"):
        assembler.finish()
    mixed = VectorAssembler("job", MODEL, 2, [3, 3])
    mixed.add(0, _part(3, dim=4))
    mixed.add(1, _part(3, dim=8))
    with pytest.raises(ModelMismatchError, match="4 and 8"):
        mixed.finish()
