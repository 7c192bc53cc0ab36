"""Scalar log: one JSON object per line in ``<project>/logs/<stage>.jsonl``, and optionally the same
scalars as TensorBoard event files in ``<project>/logs/tb/<stage>/`` (``run.tensorboard``).

The JSONL log of a stage describes one run of it: a run that starts at step 0 (a new stage, ``--force``, a
new config) starts a new file, and a run resumed after step ``k`` keeps the rows of steps 1..k and drops the
rest (the steps of the killed attempt after its last checkpoint are run again and logged again), so a
resumed stage's log has one row per logged step, as an uninterrupted run's. A torn last line (the process
was killed while writing it) is dropped too. TensorBoard's event files cannot be cut; the writer of a run
starts with a purge event at its first step instead, which makes TensorBoard hide the later steps of the
earlier event files (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from animate124.errors import ConfigError
from animate124.fileio import atomic_write_text

TENSORBOARD_HINT = (
    "pip install 'animate124[tensorboard]' (or pip install tensorboard), or drop run.tensorboard"
)


def tensorboard_writer(directory: Path, purge_step: int | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``directory`` (``purge_step``: TensorBoard
    hides the events of this step and later ones written before); ConfigError naming the extra to install
    when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"run.tensorboard is on, but the tensorboard package is not installed ({exc})",
            hint=TENSORBOARD_HINT,
        ) from None
    return SummaryWriter(log_dir=str(directory), flush_secs=10, purge_step=purge_step)


def check_tensorboard() -> None:
    """Raise the ConfigError of :func:`tensorboard_writer` when tensorboard cannot be imported (the
    pre-flight calls this, so a missing package is found before any work)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "run.tensorboard is on, but the tensorboard package is not installed", hint=TENSORBOARD_HINT
        )


def _kept_lines(path: Path, upto: int) -> list[str]:
    """The complete lines of ``path`` whose step is at most ``upto`` (in file order)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    kept = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if step <= upto:
            kept.append(line)
    return kept


class ScalarLog:
    """JSONL writer; each record has ``step``, ``time`` and the given scalars.

    ``resume_from``: the step the run resumes after (0 = a new run: the file starts empty); rows of later
    steps, left by an interrupted attempt, are removed before the first write (module docstring).
    ``tensorboard``: also write every numeric scalar with :meth:`SummaryWriter.add_scalar` (same tag,
    same step) into ``<log dir>/tb/<log stem>``.
    """

    def __init__(self, path: Path, resume_from: int = 0, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tb_dir = self.path.parent / "tb" / self.path.stem
        self._tb = tensorboard_writer(tb_dir, purge_step=resume_from + 1) if tensorboard else None
        kept = _kept_lines(self.path, resume_from) if resume_from > 0 else []
        if kept or self.path.exists():
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float | None]) -> None:
        """One line; a None value (a value that could not be measured) is written as JSON null."""
        rec: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in scalars.items():
            if v is None:
                rec[k] = None
                continue
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                rec[k] = str(v)
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, global_step=int(step), walltime=rec["time"])

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
