"""The report's charts: matplotlib figures written as inline SVG (no pyplot, no display, no font download).

Each chart is one small figure: a loss term over the steps (raw values faint, an exponential moving
average on top) or a stage's gradient balance (every ``grad/<group>`` norm, log scale, with a legend).
The y axis is logarithmic when the values are all positive and span more than :data:`LOG_SPAN`, else
linear. A series of one point is drawn as a marker, one of a few points as a line with markers.

Everything is laid out by matplotlib (``bbox_inches="tight"``), so tick labels and titles lie inside
the SVG's viewBox. Text stays text (``svg.fonttype = "none"``: readable, searchable, testable). The SVG
is deterministic: no date in its metadata and element ids from a fixed salt per chart, so an unchanged
project gives the same bytes and the report is left alone.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["LOG_SPAN", "PALETTE", "grad_chart", "loss_chart", "scalar_series", "use_log"]

Points = Sequence[tuple[float, float]]

PALETTE = ("#4f7cff", "#f2994a", "#27ae60", "#eb5757", "#9b51e0", "#2d9cdb", "#c9a227", "#6fcf97")
#: max/min above which a positive series gets a logarithmic axis (1.5 decades).
LOG_SPAN = 30.0
_INK, _MUTED, _GRID = "#1d2330", "#667085", "#e9ecf1"


def scalar_series(path: Path, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``<prefix><name>`` -> [(step, value)] from a JSONL log (bad lines and non-finite values skipped).

    A resumed run cuts its log back to its checkpoint (engine/scalars.py), but logs of earlier versions
    hold every run of the stage: a step at or before the last one kept (a resume from a checkpoint, a rerun
    with --force) replaces the points from there on, so the curve is the run that made the stage's result.
    A damaged log (bytes that are not UTF-8, torn lines) gives the points that can be read."""
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        lines = Path(path).read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return series
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step_ok = isinstance(rec, dict) and isinstance(rec.get("step"), (int, float))
        if not step_ok or not math.isfinite(rec["step"]):
            continue
        step = float(rec["step"])
        for k, v in rec.items():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if k.startswith(prefix) and ok:
                points = series.setdefault(k[len(prefix) :], [])
                while points and points[-1][0] >= step:  # a resumed or repeated run: its steps win
                    points.pop()
                points.append((step, float(v)))
    return series


def use_log(values: Sequence[float]) -> bool:
    """A logarithmic axis: every value positive and max/min above :data:`LOG_SPAN`."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def _ema(values: Sequence[float]) -> list[float]:
    alpha = 2.0 / (1 + max(2, len(values) // 20))
    out, acc = [], values[0]
    for v in values:
        acc = alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


class _TickLabels:
    """Tick labels with the fewest significant digits (3 to 7) that keep them apart: 0.3655 and 0.366,
    not 0.366 twice; plain numbers from 0.001 to 99999 (3000, not 3e+03), scientific outside."""

    @staticmethod
    def text(v: float, digits: int) -> str:
        import numpy as np

        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return np.format_float_positional(v, precision=digits, unique=True, fractional=False, trim="-")
        return f"{v:.{digits}g}"

    @classmethod
    def formatter(cls):
        from matplotlib.ticker import Formatter

        class _F(Formatter):
            def __call__(self, x: float, pos: int | None = None) -> str:
                return cls.text(x, 3)

            def format_ticks(self, values: Sequence[float]) -> list[str]:
                labels = [cls.text(v, 3) for v in values]
                for digits in range(3, 8):
                    labels = [cls.text(v, digits) for v in values]
                    if len(set(labels)) == len(labels):
                        break
                return labels

        return _F()


def _figure(title: str, width: float = 3.6, xlabel: str = "step"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 2.15), dpi=100)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=9.5, fontweight="bold", color=_INK, pad=6)
    ax.tick_params(which="both", labelsize=7.5, colors=_MUTED, length=2.5)
    ax.tick_params(which="minor", length=1.5)
    ax.set_xlabel(xlabel, fontsize=7.5, color=_MUTED, labelpad=2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#c9ced8")
    ax.grid(True, color=_GRID, linewidth=0.6)
    ax.yaxis.set_major_formatter(_TickLabels.formatter())  # no offset text above the axis
    ax.xaxis.set_major_formatter(_TickLabels.formatter())
    ax.set_axisbelow(True)
    return fig, ax


def _plot(ax, points: Points, color: str, label: str | None = None, smooth: bool = False) -> None:
    """One series; its line is the SVG group ``series-<label>`` (the tests find every series by it)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    gid = f"series-{_slug(label or 'value')}"
    if len(points) == 1:
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=5, color=color, label=label, gid=gid)
        return
    few = len(points) <= 3
    if smooth and not few:
        ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(xs, _ema(ys), color=color, linewidth=1.6, label=label, gid=gid)
    else:
        marker = "o" if few else None
        ax.plot(xs, ys, color=color, linewidth=1.4, marker=marker, markersize=4, label=label, gid=gid)


def _log_axis(ax, values: Sequence[float]) -> None:
    """A log y axis from the decade below the smallest value to the decade above the largest, so it has
    at least two labelled ticks; labels are plain text (0.01, 1000, 1e+05), no minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    ax.set_yscale("log")
    if positive:
        lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        ax.set_ylim(10.0**lo, 10.0 ** max(hi, lo + 1))
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.yaxis.set_major_formatter(_TickLabels.formatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _svg(fig, salt: str, label: str) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog; width follows its container)."""
    import matplotlib

    buf = io.StringIO()
    rc = {
        "svg.hashsalt": salt,
        "svg.fonttype": "none",
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],  # DejaVu ships with matplotlib
    }
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.04, metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    head, rest = svg.split(">", 1)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    from html import escape

    head += f' class="plot" role="img" aria-label="{escape(label)}" width="100%"'
    # ids are per page, not per file: give this chart's its own prefix
    rest = re.sub(r'id="([^"]+)"', lambda m: f'id="{salt}-{m.group(1)}"', rest)
    rest = re.sub(r'(href|xlink:href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{salt}-{m.group(2)}"', rest)
    rest = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{salt}-{m.group(1)})", rest)
    return head + ">" + rest


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "chart"


def loss_chart(stage: str, name: str, points: Points, color: str = PALETTE[0]) -> str:
    """One loss term of ``stage`` over the steps, as inline SVG."""
    fig, ax = _figure(name)
    _plot(ax, points, color, smooth=True)
    if use_log([p[1] for p in points]):
        _log_axis(ax, [p[1] for p in points])
    return _svg(fig, f"{_slug(stage)}-{_slug(name)}", f"{stage} loss {name}")


def grad_chart(stage: str, series: Mapping[str, Points]) -> str:
    """The gradient balance of ``stage``: the norm of each group's gradient over the steps, all on one
    logarithmic axis (the groups differ by orders of magnitude; zeros and negatives are left out)."""
    fig, ax = _figure("gradient balance (norm per group)", width=7.4)
    for i, (name, points) in enumerate(sorted(series.items())):
        positive = [(x, y) for x, y in points if y > 0]
        if positive:
            _plot(ax, positive, PALETTE[i % len(PALETTE)], label=name)
    _log_axis(ax, [y for points in series.values() for _, y in points])
    ax.legend(
        fontsize=7.5,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        handlelength=1.4,
        labelcolor=_INK,
    )
    return _svg(fig, f"{_slug(stage)}-grad", f"{stage} gradient balance")


def fit_chart(stage: str, mean: Sequence[float], worst: Sequence[float], tolerance: float) -> str:
    """How far the animated mesh is from each frame's surface (``export`` metrics ``fit_error_mean`` and
    ``fit_error_max``, fractions of the object's size) in per cent, with ``export.fit_tolerance`` dashed."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(
        "animated mesh: distance to each frame's surface (% of size)", width=7.4, xlabel="frame"
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _plot(ax, [(k, 100 * v) for k, v in enumerate(worst)], PALETTE[1], label="largest")
    _plot(ax, [(k, 100 * v) for k, v in enumerate(mean)], PALETTE[0], label="mean")
    ax.axhline(
        100 * tolerance,
        color=_MUTED,
        linewidth=1.0,
        linestyle="--",
        label="tolerance",
        gid="series-tolerance",
    )
    ax.set_ylim(0, max(100 * tolerance, *(100 * v for v in worst)) * 1.08)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), labelcolor=_INK)
    return _svg(fig, f"{_slug(stage)}-fit", f"{stage} animated mesh fit error")
