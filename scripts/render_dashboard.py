"""Draw a provisioned Grafana dashboard from its own PromQL queries, with matplotlib (no Grafana needed).

Usage: python -m scripts.render_dashboard --prometheus http://127.0.0.1:9090 --minutes 10 --out dash.png
       [--dashboard deploy/grafana/dashboards/embedq.json] [--end UNIX_S] [--step-s S] [--allow-empty]

Each panel's `targets[].expr` is run as a range query (`/api/v1/query_range`) over the window and
drawn at the panel's `gridPos` on Grafana's 24-column grid: `timeseries` panels as lines with their
`legendFormat`, `stat` panels as the last non-null value (`reduceOptions.calcs: lastNotNull`) over a
sparkline, values formatted by the panel's unit. It is a stand-in for a Grafana screenshot where no
Grafana server runs, and says so on the picture. A panel whose queries return no data is reported
and makes the command fail (unless --allow-empty): on a live system that is a dashboard bug.
matplotlib comes with the `docs` extra (`pip install -e ".[docs]"`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboards/embedq.json"
GRID_COLUMNS = 24
# Grafana's classic palette, in its order.
PALETTE = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#FADE2A")
BACKGROUND, PANEL, TEXT, GRID, MUTED = "#111217", "#181b1f", "#ccccdc", "#2c3235", "#8e8e8e"


@dataclass(frozen=True)
class Target:
    """One query of a panel."""

    ref_id: str
    expr: str
    legend_format: str


@dataclass(frozen=True)
class Panel:
    """What the renderer needs of one dashboard panel."""

    id: int
    type: str
    title: str
    x: int
    y: int
    w: int
    h: int
    unit: str
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Series:
    """One series of a range query: its target, legend and points (NaN where Prometheus had none)."""

    ref_id: str
    legend: str
    times: tuple[float, ...]
    values: tuple[float, ...]

    def has_data(self) -> bool:
        """Whether any point is a number."""
        return any(not math.isnan(value) for value in self.values)


def load_panels(dashboard: Mapping[str, Any]) -> list[Panel]:
    """Return the panels of a dashboard's JSON model, in grid order (top to bottom, left to right)."""
    panels = []
    for raw in dashboard["panels"]:
        grid = raw["gridPos"]
        targets = tuple(
            Target(target["refId"], target["expr"], target.get("legendFormat", ""))
            for target in raw.get("targets", [])
            if not target.get("hide", False)
        )
        unit = raw.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        panels.append(
            Panel(
                raw["id"],
                raw["type"],
                raw["title"],
                grid["x"],
                grid["y"],
                grid["w"],
                grid["h"],
                unit,
                targets,
            )
        )
    return sorted(panels, key=lambda panel: (panel.y, panel.x))


def legend(legend_format: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend: ``{{label}}`` replaced by the series' label value; no format gives the labels."""
    if not legend_format:
        return "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match.group(1), ""), legend_format)


def query_range(prometheus_url: str, expr: str, start_s: float, end_s: float, step_s: float) -> list[Any]:
    """Return the ``result`` matrix of a Prometheus range query."""
    params = urllib.parse.urlencode({"query": expr, "start": start_s, "end": end_s, "step": step_s})
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    result: list[Any] = body["data"]["result"]
    return result


def panel_series(
    prometheus_url: str, panel: Panel, start_s: float, end_s: float, step_s: float
) -> list[Series]:
    """Every series of every target of ``panel`` over the window."""
    series = []
    for target in panel.targets:
        for item in query_range(prometheus_url, target.expr, start_s, end_s, step_s):
            points = item["values"]
            series.append(
                Series(
                    target.ref_id,
                    legend(target.legend_format, item["metric"]),
                    tuple(float(t) for t, _ in points),
                    tuple(float(v) for _, v in points),  # "NaN" parses as nan
                )
            )
    return series


def format_value(value: float, unit: str) -> str:
    """Format a value in a panel's unit, roughly as Grafana prints it."""
    if math.isnan(value):
        return "No data"
    if unit == "percentunit":
        return f"{value * 100:.2f}%"
    if value == 0:
        return {"percentunit": "0%", "s": "0 s", "reqps": "0 req/s"}.get(unit, "0")
    if unit == "s":
        for scale, suffix in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale or scale == 1e-6:
                return f"{value / scale:.3g} {suffix}"
    suffix = " req/s" if unit == "reqps" else ""
    for scale, letter in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{letter}{suffix}"
    return f"{value:.3g}{suffix}"


def empty_targets(data: Mapping[int, Sequence[Series]], panels: Sequence[Panel]) -> list[str]:
    """Name each query (panel title and refId) none of whose series holds a number."""
    return [
        f"{panel.title} [{target.ref_id}]"
        for panel in panels
        for target in panel.targets
        if not any(series.has_data() for series in data[panel.id] if series.ref_id == target.ref_id)
    ]


def render(
    title: str,
    panels: Sequence[Panel],
    data: Mapping[int, Sequence[Series]],
    window: tuple[float, float],
    out: Path,
    note: str,
    width_in: float = 16.0,
) -> None:
    """Draw the panels at their grid positions into a PNG at ``out`` (256 colours, to stay small)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(panel.y + panel.h for panel in panels)
    header_in, cell_in = 0.7, width_in / GRID_COLUMNS * 0.55
    height_in = header_in + rows * cell_in
    figure = plt.figure(figsize=(width_in, height_in), facecolor=BACKGROUND)
    start, end = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in window)
    figure.text(0.01, 1 - 0.28 / height_in, title, color=TEXT, fontsize=15, weight="bold", va="center")
    figure.text(0.99, 1 - 0.28 / height_in, f"{start} to {end} UTC", color=MUTED, fontsize=9, ha="right")
    figure.text(0.01, 1 - 0.56 / height_in, note, color=MUTED, fontsize=8, va="center")
    for panel in panels:
        box = _panel_box(panel, width_in, height_in, header_in, cell_in)
        if panel.type == "stat":
            _draw_stat(figure, box, panel, data[panel.id], window)
        else:
            _draw_timeseries(figure, box, panel, data[panel.id], window)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100, facecolor=BACKGROUND)
    plt.close(figure)
    _quantize(out)


def _panel_box(
    panel: Panel, width_in: float, height_in: float, header_in: float, cell_in: float
) -> tuple[float, float, float, float]:
    gap_in = 0.06
    left = panel.x / GRID_COLUMNS * width_in + gap_in
    top = header_in + panel.y * cell_in + gap_in
    width = panel.w / GRID_COLUMNS * width_in - 2 * gap_in
    height = panel.h * cell_in - 2 * gap_in
    return left / width_in, 1 - (top + height) / height_in, width / width_in, height / height_in


def _frame(figure: Any, box: tuple[float, float, float, float], title: str) -> tuple[float, float]:
    """Draw a panel's background and title; return the title strip's height and a pad (figure fractions)."""
    from matplotlib.patches import Rectangle

    left, bottom, width, height = box
    figure.patches.append(
        Rectangle(
            (left, bottom),
            width,
            height,
            transform=figure.transFigure,
            facecolor=PANEL,
            edgecolor=GRID,
            lw=0.8,
            zorder=-1,  # under the panel's axes
        )
    )
    strip = min(0.3 * height, 0.32 / figure.get_figheight())
    figure.text(left + 0.006, bottom + height - strip / 2, title, color=TEXT, fontsize=9.5, va="center")
    return strip, 0.006


def _draw_stat(
    figure: Any, box: tuple[float, float, float, float], panel: Panel, series: Sequence[Series], window: Any
) -> None:
    left, bottom, width, height = box
    strip, pad = _frame(figure, box, panel.title)
    shown = [s for s in series if s.has_data()]
    last = next((v for v in reversed(shown[0].values) if not math.isnan(v)), math.nan) if shown else math.nan
    axes = figure.add_axes((left + pad, bottom + pad, width - 2 * pad, height - strip - pad))
    axes.set_axis_off()
    axes.set_xlim(*window)
    color = PALETTE[0]
    if shown:
        values = [0.0 if math.isnan(v) else v for v in shown[0].values]
        axes.fill_between(shown[0].times, values, color=color, alpha=0.18, lw=0)
        axes.plot(shown[0].times, values, color=color, lw=1.0, alpha=0.7)
        axes.set_ylim(0, (max(values) or 1) * 1.6)
    axes.text(
        0.5, 0.5, format_value(last, panel.unit), transform=axes.transAxes, color=color if shown else MUTED,
        fontsize=26, weight="bold", ha="center", va="center",
    )  # fmt: skip


def _draw_timeseries(
    figure: Any, box: tuple[float, float, float, float], panel: Panel, series: Sequence[Series], window: Any
) -> None:
    from matplotlib.dates import AutoDateLocator, DateFormatter
    from matplotlib.ticker import FuncFormatter

    left, bottom, width, height = box
    strip, pad = _frame(figure, box, panel.title)
    legend_h = 0.2 * height
    axes = figure.add_axes(
        (left + 0.045, bottom + legend_h, width - 0.045 - pad, height - strip - legend_h - pad / 2)
    )
    axes.set_facecolor(PANEL)
    shown = [s for s in series if s.has_data()]
    for index, item in enumerate(shown):
        times = [datetime.fromtimestamp(t, UTC) for t in item.times]
        axes.plot(times, item.values, color=PALETTE[index % len(PALETTE)], lw=1.3, label=item.legend)
    start, end = (datetime.fromtimestamp(t, UTC) for t in window)
    axes.set_xlim(start, end)
    axes.set_ylim(bottom=0)
    axes.xaxis.set_major_locator(AutoDateLocator(tz=UTC, maxticks=8))  # type: ignore[no-untyped-call]
    seconds = "" if window[1] - window[0] > 900 else ":%S"
    axes.xaxis.set_major_formatter(DateFormatter(f"%H:%M{seconds}", tz=UTC))  # type: ignore[no-untyped-call]
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: format_value(value, panel.unit)))
    axes.tick_params(colors=MUTED, labelsize=7.5, length=0)
    axes.grid(color=GRID, lw=0.6)
    for spine in axes.spines.values():
        spine.set_visible(False)
    if not shown:
        axes.text(0.5, 0.5, "No data", transform=axes.transAxes, color=MUTED, ha="center", va="center")
        return
    axes.legend(
        loc="upper left", bbox_to_anchor=(0.0, -0.13), ncol=min(len(shown), 3), frameon=False,
        fontsize=7.5, labelcolor=TEXT, handlelength=1.2, columnspacing=1.5, borderaxespad=0,
    )  # fmt: skip


def _quantize(path: Path) -> None:
    """Rewrite the PNG with a 256-colour palette: a fraction of the size, the same look on flat colours."""
    from PIL import Image

    with Image.open(path) as image:
        paletted = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    paletted.save(path, optimize=True)


def collect(
    prometheus_url: str, panels: Sequence[Panel], window: tuple[float, float], step_s: float
) -> dict[int, list[Series]]:
    """Run every panel's queries over the window."""
    return {panel.id: panel_series(prometheus_url, panel, *window, step_s) for panel in panels}


def main(argv: Sequence[str] | None = None) -> int:
    """Render the dashboard; exit 1 if a panel has no data (unless --allow-empty)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--minutes", type=float, default=15.0, help="window length (default 15)")
    parser.add_argument("--end", type=float, help="window end, Unix seconds (default now)")
    parser.add_argument("--step-s", type=float, help="query step (default: window / 240, at least 1 s)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", default="", help="a line printed under the title")
    parser.add_argument("--allow-empty", action="store_true", help="exit 0 even if a panel has no data")
    args = parser.parse_args(argv)
    end = time.time() if args.end is None else args.end
    window = (end - args.minutes * 60, end)
    step_s = args.step_s or max(1.0, args.minutes * 60 / 240)
    dashboard = json.loads(args.dashboard.read_text())
    panels = load_panels(dashboard)
    data = collect(args.prometheus.rstrip("/"), panels, window, step_s)
    note = args.note or f"Rendered from {args.dashboard.name}'s own queries by scripts/render_dashboard.py"
    render(dashboard.get("title", "dashboard"), panels, data, window, args.out, note)
    empty = empty_targets(data, panels)
    print(f"{args.out}: {len(panels)} panels, {args.out.stat().st_size:,} bytes", flush=True)
    if empty:
        print(f"queries with no data: {', '.join(empty)}", file=sys.stderr)
        return 0 if args.allow_empty else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
