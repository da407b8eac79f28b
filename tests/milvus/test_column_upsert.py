"""The packed float bytes of column-wise upserts are protobuf's own encoding of the vectors."""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus.grpc_gen import schema_pb2

from worker.milvus.column_upsert import packed_floats


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (1, 31), (1, 32), (3, 256), (16, 1024), (5000, 256)])
def test_packed_floats_equal_protobuf_serialisation(shape: tuple[int, int]) -> None:
    vectors = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    expected = schema_pb2.FloatArray(data=vectors.ravel().tolist()).SerializeToString()
    assert packed_floats(vectors) == expected
    parsed = schema_pb2.FloatArray()
    parsed.ParseFromString(packed_floats(vectors))
    np.testing.assert_array_equal(np.asarray(parsed.data, dtype=np.float32), vectors.ravel())


def test_packed_floats_keep_special_values_and_take_any_layout() -> None:
    vectors = np.array([[0.0, -0.0, 1e-45, 3.4e38], [-1.5, 2.0, 0.1, 7.0]], dtype=np.float32)
    expected = schema_pb2.FloatArray(data=vectors.ravel().tolist()).SerializeToString()
    assert packed_floats(vectors) == expected
    assert packed_floats(np.asfortranarray(vectors)) == expected
    assert packed_floats(vectors.astype(">f4")) == expected
