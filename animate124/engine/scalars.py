"""Scalar log: one JSON object per line in ``<project>/logs/<stage>.jsonl``, and optionally the same
scalars as TensorBoard event files in ``<project>/logs/tb/<stage>/`` (``run.tensorboard``)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from animate124.errors import ConfigError

TENSORBOARD_HINT = (
    "pip install 'animate124[tensorboard]' (or pip install tensorboard), or drop run.tensorboard"
)


def tensorboard_writer(directory: Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing into ``directory``; ConfigError naming the
    extra to install when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"run.tensorboard is on, but the tensorboard package is not installed ({exc})",
            hint=TENSORBOARD_HINT,
        ) from None
    return SummaryWriter(log_dir=str(directory), flush_secs=10)


def check_tensorboard() -> None:
    """Raise the ConfigError of :func:`tensorboard_writer` when tensorboard cannot be imported (the
    pre-flight calls this, so a missing package is found before any work)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "run.tensorboard is on, but the tensorboard package is not installed", hint=TENSORBOARD_HINT
        )


class ScalarLog:
    """Append-only JSONL writer; each record has ``step``, ``time`` and the given scalars.

    ``tensorboard``: also write every numeric scalar with :meth:`SummaryWriter.add_scalar` (same tag,
    same step) into ``<log dir>/tb/<log stem>``."""

    def __init__(self, path: Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = tensorboard_writer(self.path.parent / "tb" / self.path.stem) if tensorboard else None
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
