"""Per-step timestamps and peak GPU memory of upstream's training loops, and a stop after N steps.

``offline.patch`` calls :func:`begin` once before upstream's first training step (the NeRF ``Trainer.train``
and the textual-inversion loop) and :func:`step` after every optimizer step. Each call appends one JSON line
to ``$A124_STEPS_LOG``; ``benchmarks/upstream/side_by_side.py`` turns them into seconds per step:

    {"event": "begin", "kind": "nerf", "wall": ..., "load_peak_gib": ..., "load_reserved_gib": ...}
    {"event": "step", "n": 1, "step": 5001, "epoch": 51, "t": ..., "peak_gib": ..., "reserved_gib": ...}
    {"event": "stop", "n": 40, "step": 5040, "checkpoint": ".../checkpoints/ms-dynamic-....pth"}

``t`` is ``time.perf_counter()`` after ``torch.cuda.synchronize()`` (upstream reads its losses with
``.item()`` every step, so the sync adds no wait of its own). :func:`begin` records the peak of model loading
and resets the allocator's peak counter, so ``peak_gib`` is the peak of training alone, as the project's
manifest reports it. With ``$A124_STOP_AFTER`` = N the process stops after its N-th step: a NeRF stage first
writes its model checkpoint under the name the next stage's script loads (``checkpoints/<workspace>.pth``).
With ``$A124_DRY_RUN`` (``cpu_check.py``) a NeRF stage stops the same way before its first step
(``{"event": "dry_run_stop"}``). None of this changes what upstream computes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

_GIB = 2**30
_count = 0


def _log(rec: dict[str, Any]) -> None:
    path = os.environ.get("A124_STEPS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def note(what: str, **fields: Any) -> None:
    """An event worth reporting (e.g. the NaN-loss debugger call), with the step count so far."""
    _log({"event": "note", "what": what, "n": _count, **fields})


def _stop(rec: dict[str, Any], trainer: Any) -> None:
    if trainer is not None:  # the NeRF trainer: the model checkpoint the next stage's script loads
        trainer.save_checkpoint(name=trainer.name, full=False, best=False)
        rec["checkpoint"] = os.path.join(trainer.opt.ckpt_path, f"{trainer.name}.pth")
    _log(rec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip upstream's end-of-training test renders and teardown


def begin(kind: str, trainer: Any = None) -> None:
    """Before the first training step: record model loading's peak memory, then reset the peak counter.
    With ``$A124_DRY_RUN`` (benchmarks/upstream/cpu_check.py) the process stops here instead."""
    rec: dict[str, Any] = {"event": "begin", "kind": kind, "wall": time.time(), "t": time.perf_counter()}
    if _cuda():
        torch.cuda.synchronize()
        rec["card"] = torch.cuda.get_device_name()
        rec["load_peak_gib"] = round(torch.cuda.max_memory_allocated() / _GIB, 3)
        rec["load_reserved_gib"] = round(torch.cuda.max_memory_reserved() / _GIB, 3)
        torch.cuda.reset_peak_memory_stats()
    _log(rec)
    if os.environ.get("A124_DRY_RUN") and trainer is not None:
        _stop({"event": "dry_run_stop", "n": 0}, trainer)


def step(global_step: int, epoch: int | None = None, trainer: Any = None) -> None:
    """After each optimizer step: its end time and the peak memory so far; stop after ``$A124_STOP_AFTER``."""
    global _count
    if _cuda():
        torch.cuda.synchronize()
    _count += 1
    rec: dict[str, Any] = {"event": "step", "n": _count, "step": int(global_step), "epoch": epoch}
    rec["t"] = time.perf_counter()
    if _cuda():
        rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / _GIB, 3)
        rec["reserved_gib"] = round(torch.cuda.max_memory_reserved() / _GIB, 3)
    _log(rec)
    stop_after = int(os.environ.get("A124_STOP_AFTER", "0") or 0)
    if stop_after and _count >= stop_after:
        _stop({"event": "stop", "n": _count, "step": int(global_step)}, trainer)
