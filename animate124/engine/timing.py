"""Named wall-clock timers for the parts of a training step (render, each prior, optimizer...).

CUDA work is asynchronous, so honest per-part times need a device synchronisation at every boundary;
that costs a little speed, so it is off unless asked for (``run.profile``). Without it the timers
still count calls but report no per-part times (only the whole step is timed, by the trainer).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = ["Timers", "kept_for_backward"]


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


def kept_for_backward(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` and count the bytes autograd keeps for backward (``saved_tensors_hooks``; parameters
    excluded, every save counted). Device-independent: it measures the memory options of issue 12 on a CPU."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total
