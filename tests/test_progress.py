"""The progress line: one line at any terminal width, the columns that fit."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from animate124.engine.progress import Layout, progress_columns, rich_progress

METRICS = {"loss": 12345.678, "rgb": 0.036612, "mask": 0.0541123, "sds": 3.3e-05, "zero123": 1580.25}


def _render(width: int, description: str, completed: int, total: int | None, metrics=METRICS) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, force_terminal=False, color_system=None)
    prog = Progress(*progress_columns(lambda: width), console=console, auto_refresh=False)
    task = prog.add_task(description, total=total, metrics=dict(metrics))
    prog.update(task, completed=completed)
    console.print(prog.make_tasks_table(prog.tasks))
    return console.export_text().rstrip("\n").split("\n")


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("description", ["static", "refine", "render dynamic", "evaluate refine"])
def test_the_progress_line_is_one_line_that_fits(width, description):
    lines = _render(width, description, 9876, 10000)
    assert len(lines) == 1, lines
    assert len(lines[0]) <= width, (len(lines[0]), lines[0])
    line = lines[0]
    assert line.startswith(description) and "9876/10000" in line and "it/s" in line and "eta" in line
    assert "loss=1.235e+04" in line  # the first loss always shows


def test_wider_terminals_show_more():
    narrow, wide = _render(80, "dynamic", 50, 100)[0], _render(120, "dynamic", 50, 100)[0]
    assert Layout.for_width(80).bar_width < Layout.for_width(120).bar_width
    assert len(wide) > len(narrow) and "mask=" in wide
    tight = _render(50, "dynamic", 50, 100)
    assert len(tight) == 1 and len(tight[0]) <= 50 and "━" not in tight[0]  # no bar below 60 columns
    assert "━" in narrow


def test_before_the_total_is_known_and_disabled():
    assert "0/?" in _render(80, "invert", 0, None, {})[0]
    with rich_progress("x", enabled=False) as update:
        update(1, 2, {"loss": 1.0})  # a no-op
