"""Scalar log: one JSON object per line in ``<project>/logs/<stage>.jsonl``.

The log of a stage describes one run of it: a run that starts at step 0 (a new stage, ``--force``, a new
config) starts a new file, and a run resumed after step ``k`` keeps the rows of steps 1..k and drops the
rest (the steps of the killed attempt after its last checkpoint are run again and logged again), so a
resumed stage's log has one row per logged step, as an uninterrupted run's. A torn last line (the process
was killed while writing it) is dropped too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from animate124.fileio import atomic_write_text


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
    """

    def __init__(self, path: Path, resume_from: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = _kept_lines(self.path, resume_from) if resume_from > 0 else []
        if kept or self.path.exists():
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        rec = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in scalars.items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                rec[k] = str(v)
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
