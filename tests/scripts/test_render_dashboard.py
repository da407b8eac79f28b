"""The dashboard renderer reads every panel and query of the shipped dashboard, and draws them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from scripts.render_dashboard import (
    DASHBOARD,
    GRID_COLUMNS,
    Panel,
    Series,
    empty_targets,
    format_value,
    legend,
    load_panels,
    render,
)


def shipped() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_panel_and_query_of_the_shipped_dashboard_is_read() -> None:
    raw = {panel["id"]: panel for panel in shipped()["panels"]}
    panels = load_panels(shipped())
    assert sorted(panel.id for panel in panels) == sorted(raw)
    for panel in panels:
        source = raw[panel.id]
        grid = source["gridPos"]
        assert (panel.type, panel.title) == (source["type"], source["title"])
        assert (panel.x, panel.y, panel.w, panel.h) == (grid["x"], grid["y"], grid["w"], grid["h"])
        assert panel.unit == source["fieldConfig"]["defaults"]["unit"]
        expected = [(t["refId"], t["expr"], t["legendFormat"]) for t in source["targets"]]
        assert [(t.ref_id, t.expr, t.legend_format) for t in panel.targets] == expected
        assert panel.targets, f"panel {panel.title!r} has no query"
    assert [(p.y, p.x) for p in panels] == sorted((p.y, p.x) for p in panels)  # drawn in reading order


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_panels(shipped()):
        assert panel.x >= 0 and panel.x + panel.w <= GRID_COLUMNS, panel.title
        for row in range(panel.y, panel.y + panel.h):
            for column in range(panel.x, panel.x + panel.w):
                assert (row, column) not in cells, f"{panel.title!r} overlaps {cells[(row, column)]!r}"
                cells[(row, column)] = panel.title


def test_legends_substitute_labels_as_grafana_does() -> None:
    labels = {"queue": "embedq.m.bulk", "model": "m"}
    assert legend("{{queue}}", labels) == "embedq.m.bulk"
    assert legend("p99 {{ model }}", labels) == "p99 m"
    assert legend("{{outcome}} ({{kind}})", {"outcome": "InvalidInputError"}) == "InvalidInputError ()"
    assert legend("", labels) == '{model="m", queue="embedq.m.bulk"}'


def test_values_are_formatted_in_the_panel_unit() -> None:
    assert format_value(0.0215, "percentunit") == "2.15%"
    assert format_value(0.0042, "s") == "4.2 ms"
    assert format_value(2.5, "s") == "2.5 s"
    assert format_value(0, "s") == "0 s"
    assert format_value(12_300, "none") == "12.3K"
    assert format_value(3.0, "reqps") == "3 req/s"
    assert format_value(math.nan, "none") == "No data"


def two_panels() -> list[Panel]:
    return load_panels(
        {
            "panels": [
                {"id": 1, "type": "stat", "title": "Ready", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 4},
                 "targets": [{"refId": "A", "expr": "sum(up)"}]},
                {"id": 2, "type": "timeseries", "title": "Latency",
                 "gridPos": {"x": 0, "y": 4, "w": 24, "h": 8},
                 "fieldConfig": {"defaults": {"unit": "s"}},
                 "targets": [{"refId": "A", "expr": "a", "legendFormat": "p50"},
                             {"refId": "B", "expr": "b", "legendFormat": "p99"}]},
            ]
        }
    )  # fmt: skip


def test_a_query_whose_series_hold_no_number_is_named() -> None:
    times = (0.0, 10.0)
    data = {
        1: [Series("A", "ready", times, (1.0, 1.0))],
        2: [Series("A", "p50", times, (0.1, math.nan)), Series("B", "p99", times, (math.nan, math.nan))],
    }
    assert empty_targets(data, two_panels()) == ["Latency [B]"]
    assert empty_targets({1: [], 2: data[2]}, two_panels()) == ["Ready [A]", "Latency [B]"]


def test_render_writes_a_small_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the docs extra (matplotlib) draws the picture")
    times = tuple(float(t) for t in range(0, 300, 5))
    data = {
        1: [Series("A", "ready", times, tuple(1.0 for _ in times))],
        2: [Series("A", "p50", times, tuple(0.001 * (i % 7) for i, _ in enumerate(times)))],
    }
    out = tmp_path / "dashboard.png"
    render("embedq", two_panels(), data, (0.0, 300.0), out, "a test picture")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < out.stat().st_size < 300_000
