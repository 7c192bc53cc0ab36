"""Scalar log: one JSON object per line in ``<project>/logs/<stage>.jsonl``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path


class ScalarLog:
    """Append-only JSONL writer; each record has ``step``, ``time`` and the given scalars."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float | None]) -> None:
        """One line; a None value (a value that could not be measured) is written as JSON null."""
        rec: dict[str, object] = {"step": int(step), "time": round(time.time(), 3)}
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

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
