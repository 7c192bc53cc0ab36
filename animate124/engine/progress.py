"""One progress style for every long loop: bar, it/s, ETA and the current losses.

Library loops take a plain callback ``progress(step, total, metrics)``; the CLI passes the one
made here. Nothing in the library prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

ProgressFn = Callable[[int, int, Mapping[str, float]], None]


def _fmt(metrics: Mapping[str, float], limit: int = 3) -> str:
    parts = []
    for k, v in list(metrics.items())[:limit]:
        try:
            parts.append(f"{k}={float(v):.4g}")
        except (TypeError, ValueError):
            parts.append(f"{k}={v}")
    return " ".join(parts)


@contextlib.contextmanager
def rich_progress(description: str, console=None, enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a progress callback rendering a rich bar; a no-op when ``enabled`` is False."""
    if not enabled:
        yield lambda step, total, metrics: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="progress.data.speed")

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
    )
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=None, metrics="")

        def update(step: int, total: int, metrics: Mapping[str, float]) -> None:
            prog.update(task, completed=step, total=total, metrics=_fmt(metrics))

        yield update
