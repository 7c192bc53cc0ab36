"""Named wall-clock timers for the parts of a training step (render, each prior, optimizer...).

CUDA work is asynchronous, so honest per-part times need a device synchronisation at every boundary;
that costs a little speed, so it is off unless asked for (``run.profile``). Without it the timers
still count calls but report no per-part times (only the whole step is timed, by the trainer).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

__all__ = ["Timers"]


class Timers:
    """Accumulate seconds per name: ``with timers("render"): ...``."""

    def __init__(self, enabled: bool = False, device: torch.device | None = None) -> None:
        self.enabled = bool(enabled)
        self.sync = self.enabled and device is not None and device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1

    def summary(self, steps: int) -> dict[str, float]:
        """Milliseconds per training step for each part (0 parts when disabled)."""
        if not self.enabled or steps <= 0:
            return {}
        return {name: 1000.0 * s / steps for name, s in sorted(self.seconds.items())}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
