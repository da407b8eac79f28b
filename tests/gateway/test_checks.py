"""The gateway's settings and request checks, without servers: keys, limits, dimensions, vector shaping."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from producer.errors import ConfigError
from worker.gateway.config import load_gateway_settings, parse_api_keys
from worker.gateway.errors import ApiError
from worker.gateway.limits import checked_dimensions, checked_texts
from worker.gateway.vectors import base64_float32, first_dimensions, normalized


def test_api_keys_from_a_list_or_a_file(tmp_path: Path) -> None:
    assert parse_api_keys(" a, b ,,c ") == frozenset({"a", "b", "c"})
    assert parse_api_keys(None) == parse_api_keys("  ") == frozenset()
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\nfirst\n\n  second  \n")
    assert parse_api_keys(str(keys)) == frozenset({"first", "second"})
    keys.write_text("# none\n")
    with pytest.raises(ConfigError, match="holds no key"):
        parse_api_keys(str(keys))
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_api_keys(str(tmp_path / "missing" / "keys"))


def test_settings_are_checked_at_start_up() -> None:
    settings = load_gateway_settings({"EMBEDQ_MAX_BODY_BYTES": "1_000", "EMBEDQ_API_KEYS": "k"})
    assert settings.max_body_bytes == 1000 and settings.api_keys == frozenset({"k"})
    assert "k" not in repr(settings)
    with pytest.raises(ConfigError, match="EMBEDQ_MAX_CLIENT_BATCH_SIZE"):
        load_gateway_settings({"EMBEDQ_MAX_CLIENT_BATCH_SIZE": "0"})
    with pytest.raises(ConfigError, match="EMBEDQ_REQUEST_TIMEOUT_S"):
        load_gateway_settings({"EMBEDQ_REQUEST_TIMEOUT_S": "soon"})


def test_texts_are_named_by_parameter_and_index() -> None:
    assert checked_texts("one", "input", max_inputs=2, max_text_chars=10) == ["one"]
    cases = [
        ([1, 2], "token ids"),
        ([[1, 2]], "token ids"),
        ([], "empty"),
        (["a", None], r"input\[1\] is None"),
        (["a", "b", "c"], "limit of 2"),
        (["x" * 11], r"input\[0\] has 11 characters"),
        ({"text": "a"}, "a string or a list of strings, got an object"),
    ]
    for value, message in cases:
        with pytest.raises(ApiError, match=message) as caught:
            checked_texts(value, "input", max_inputs=2, max_text_chars=10)
        assert caught.value.status == 400 and caught.value.param == "input"


def test_dimensions_within_the_model() -> None:
    assert checked_dimensions(None, 8) is None
    assert checked_dimensions(8, 8) is None  # all of them: nothing to cut
    assert checked_dimensions(3, 8) == 3
    for bad in (0, 9, True, "4", 2.0):
        with pytest.raises(ApiError, match="from 1 to 8"):
            checked_dimensions(bad, 8)


def test_vector_shaping() -> None:
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(3, 8)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert normalized(unit) is unit  # unit rows come back untouched, bit for bit
    scaled = unit * np.float32(3.0)
    scaled[1] = 0.0
    np.testing.assert_allclose(normalized(scaled)[[0, 2]], unit[[0, 2]], rtol=1e-6)
    assert not normalized(scaled)[1].any()
    cut = first_dimensions(unit, 4)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut, unit[:, :4] / np.linalg.norm(unit[:, :4], axis=1, keepdims=True))
    raw = np.frombuffer(base64.b64decode(base64_float32(unit[0])), dtype="<f4")
    np.testing.assert_array_equal(raw, unit[0])
