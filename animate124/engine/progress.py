"""One progress style for every long loop: bar, steps, it/s, elapsed, ETA and the current losses.

Library loops take a plain callback ``progress(step, total, metrics)``; the CLI passes the one
made here. Nothing in the library prints.

The line always fits the terminal on one line: the description, a bar whose width depends on the
terminal's, and one text column (steps, rate, elapsed, ETA, losses) cut to what is left, ending in
"…". At 80 columns the bar is shorter and the elapsed time is dropped; below 60 the bar goes too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ProgressFn = Callable[[int, int, Mapping[str, float]], None]


def _fmt(metrics: Mapping[str, float], limit: int = 3) -> str:
    parts = []
    for k, v in list(metrics.items())[:limit]:
        try:
            parts.append(f"{k}={float(v):.4g}")
        except (TypeError, ValueError):
            parts.append(f"{k}={v}")
    return " ".join(parts)


@dataclass(frozen=True)
class Layout:
    """Which columns a terminal of ``width`` columns gets."""

    bar_width: int  # 0 = no bar
    elapsed: bool
    metrics: int  # losses shown at most (the text is cut to the width anyway)

    @staticmethod
    def for_width(width: int) -> Layout:
        if width >= 120:
            return Layout(24, True, 4)
        if width >= 90:
            return Layout(16, True, 3)
        if width >= 60:
            return Layout(10, False, 3)
        return Layout(0, False, 2)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _rate(speed: float | None) -> str:
    if not speed:
        return "-- it/s"
    return f"{speed:.2f} it/s" if speed >= 1 else f"{1 / speed:.1f} s/it"


def stats_text(task: Any, layout: Layout) -> str:
    """``12/40 3.20 it/s 0:03 eta 0:09 loss=0.4 rgb=0.3`` of a rich task (its ``metrics`` field holds
    the losses as ``{name: value}``)."""
    total = "?" if task.total is None else f"{int(task.total)}"
    parts = [f"{int(task.completed)}/{total}", _rate(task.finished_speed or task.speed)]
    if layout.elapsed:
        parts.append(_clock(task.elapsed))
    parts.append(f"eta {_clock(0.0 if task.finished else task.time_remaining)}")
    losses = _fmt(task.fields.get("metrics") or {}, layout.metrics)
    return " ".join(parts) + (f"  {losses}" if losses else "")


def progress_columns(width: Callable[[], int]) -> tuple[Any, ...]:
    """The columns of every progress line; ``width()`` is the terminal's width at render time."""
    from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
    from rich.table import Column
    from rich.text import Text

    class _Bar(BarColumn):
        def render(self, task: Task) -> Any:
            self.bar_width = Layout.for_width(width()).bar_width
            return super().render(task) if self.bar_width else Text("")

    class _Stats(ProgressColumn):
        """Everything after the bar, as one text cut to the width that is left."""

        def render(self, task: Task) -> Text:
            w = width()
            layout = Layout.for_width(w)
            used = len(task.description) + 1 + (layout.bar_width + 1 if layout.bar_width else 0)
            text = Text(stats_text(task, layout), style="progress.data.speed", no_wrap=True)
            text.truncate(max(w - used - 1, 8), overflow="ellipsis")
            return text

    no_wrap = Column(no_wrap=True)
    return (
        TextColumn("[bold]{task.description}", table_column=no_wrap),
        _Bar(bar_width=24, table_column=no_wrap),
        _Stats(table_column=Column(no_wrap=True, overflow="ellipsis")),
    )


@contextlib.contextmanager
def rich_progress(description: str, console=None, enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a progress callback rendering a rich progress line; a no-op when ``enabled`` is False."""
    if not enabled:
        yield lambda step, total, metrics: None
        return
    from rich.progress import Progress

    holder: list[Any] = []
    columns = progress_columns(lambda: holder[0].console.width if holder else 80)
    with Progress(*columns, console=console, transient=False) as prog:
        holder.append(prog)
        task = prog.add_task(description, total=None, metrics={})

        def update(step: int, total: int, metrics: Mapping[str, float]) -> None:
            prog.update(task, completed=step, total=total, metrics=dict(metrics))

        yield update
