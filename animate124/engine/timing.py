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
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

__all__ = ["StepTracer", "Timers", "kept_for_backward"]


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
            with torch.profiler.record_function(name):  # a named range in a StepTracer's table; ~µs
                yield
            return
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(name):
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


class StepTracer:
    """``torch.profiler`` over ``steps`` training steps; writes a table to ``path`` when they are done.

    The table (``run.trace_steps``) lists operators and kernels by device time, with the step parts of
    :class:`Timers` as named ranges, under a header with the wall-clock per step and the device time per
    step (the sum of the kernels' own times). Their ratio is how busy the GPU was: far below 1, the step
    waits on Python and kernel launches, not on the GPU.
    """

    def __init__(self, device: torch.device, steps: int, path: Path, label: str = "train") -> None:
        acts = [torch.profiler.ProfilerActivity.CPU]
        self.cuda = device.type == "cuda"
        if self.cuda:
            acts.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize(device)
        self.device, self.steps, self.path, self.label = device, int(steps), Path(path), label
        self.done = 0
        self.prof: torch.profiler.profile | None = torch.profiler.profile(activities=acts)
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def step_done(self) -> None:
        self.done += 1
        if self.done >= self.steps:
            self.close()

    def close(self) -> None:
        """Stop and write the table (once; a run that ends early writes what it traced)."""
        if self.prof is None:
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self.t0
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        if self.done == 0:
            return
        events = prof.key_averages()

        def dev_self(e: Any) -> float:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

        device_us = sum(dev_self(e) for e in events)
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        try:
            table = events.table(sort_by=sort, row_limit=60, max_name_column_width=70)
        except (AttributeError, KeyError):
            table = events.table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=70)
        per_step = 1000.0 * wall / self.done
        dev_step = device_us / 1000.0 / self.done
        head = (
            f"# {self.label}: torch.profiler over {self.done} training steps\n"
            f"# wall-clock per step: {per_step:.1f} ms; device (kernel) time per step: {dev_step:.1f} ms; "
            f"GPU busy: {dev_step / per_step:.0%}\n"
            if self.cuda
            else f"# {self.label}: torch.profiler over {self.done} steps; wall-clock per step {per_step:.1f} ms\n"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(head + "\n" + table + "\n", encoding="utf-8")


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
