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


def _sig(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits (a tiny model's TFLOP are 1e-4, a full-size call's tens)."""
    return float(f"{x:.{digits}g}")


class Timers:
    """Accumulate seconds per name: ``with timers("render"): ...``.

    With ``enabled`` on CUDA (``run.profile``) each part is also measured for memory: the peak allocated
    while it ran and its rise over what was allocated when it began (:meth:`memory_summary`). That needs
    the allocator's peak counter reset at each part's start; the peaks of the enclosing parts and of the
    whole run are folded in before every reset, so :meth:`peak_memory` still gives the run's true peak.

    A part may also be told the work it does (:meth:`add_flops`: the priors' exactly counted matrix FLOPs,
    ``guidance/flops.py``), so that :meth:`flops_summary` gives its achieved rate against the card's.

    A part may be split in two where a tensor's gradient arrives (:meth:`split`, :meth:`mark_on_grad`): the
    step's ``backward`` becomes ``backward_priors`` (from the loss down to the rendered images: the VAE
    encoders' backward) and ``backward_nerf`` (from the images to the field: the render's backward, the time
    TV's), so :meth:`summary`'s ``nerf_side`` (the sum of :data:`NERF_PARTS`) is the NeRF side of a step inside a
    stage, what ``benchmarks/bench_field_step.py`` measures outside one (issue 26).
    """

    #: the parts of a step that are the NeRF side (issue 26): renders, the time TV, the occupancy refresh (its
    #: every-16-steps time spread over the steps, as :meth:`summary` divides every part by the steps), the
    #: backward below the images, the optimizer step (the field's parameters only: the priors are frozen)
    NERF_PARTS = ("render", "frozen_render", "time_tv", "occupancy", "backward_nerf", "optimizer")

    def __init__(self, enabled: bool = False, device: torch.device | None = None) -> None:
        self.enabled = bool(enabled)
        self.sync = self.enabled and device is not None and device.type == "cuda"
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peak_bytes: dict[str, int] = defaultdict(int)
        self.rise_bytes: dict[str, int] = defaultdict(int)
        self.flops: dict[str, float] = defaultdict(float)
        self._open: list[list[int]] = []  # [allocated at entry, running peak] of each part now open
        self._parts: list[list[Any]] = []  # [name, last marked arrival or None] of each part now open
        self._splits: dict[str, tuple[str, str]] = {}  # part -> (before, after): see split()
        self._overall = [0, 0]  # allocated, reserved peaks folded in before each reset

    def _fold(self) -> None:
        alloc = torch.cuda.max_memory_allocated(self.device)
        self._overall[0] = max(self._overall[0], alloc)
        self._overall[1] = max(self._overall[1], torch.cuda.max_memory_reserved(self.device))
        for part in self._open:
            part[1] = max(part[1], alloc)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(name):  # a named range in a StepTracer's table; ~µs
            if not self.enabled:
                yield
                return
            if self.sync:
                torch.cuda.synchronize()
                self._fold()
                torch.cuda.reset_peak_memory_stats(self.device)
                now = torch.cuda.memory_allocated(self.device)
                self._open.append([now, now])
            t0 = time.perf_counter()
            self._parts.append([name, None])
            try:
                yield
            finally:
                if self.sync:
                    torch.cuda.synchronize()
                    self._fold()
                    entry, peak = self._open.pop()
                    self.peak_bytes[name] = max(self.peak_bytes[name], peak)
                    self.rise_bytes[name] = max(self.rise_bytes[name], peak - entry)
                end = time.perf_counter()
                self.seconds[name] += end - t0
                self.calls[name] += 1
                mid, rule = self._parts.pop()[1], self._splits.get(name)
                if rule is not None:
                    before, after = rule
                    mid = t0 if mid is None else mid  # no marked gradient arrived: no "before" half
                    self.seconds[before] += mid - t0
                    self.seconds[after] += end - mid
                    self.calls[before] += 1
                    self.calls[after] += 1

    def split(self, part: str, before: str, after: str) -> None:
        """From now on every run of part ``part`` also counts as two parts: ``before``, from its start to the
        last arrival of a gradient marked by :meth:`mark_on_grad` while it was the innermost open part, and
        ``after``, the rest (all of it when no marked gradient arrived)."""
        self._splits[part] = (before, after)

    def mark_on_grad(self, tensor: torch.Tensor, part: str) -> None:
        """Mark the moment ``tensor``'s gradient arrives, if part ``part`` is then the innermost open one (a
        gradient that arrives in another part, e.g. ``grad_stats``, marks nothing): :meth:`split`'s point.
        Nothing without ``enabled``. On CUDA the hook synchronises the device first (it runs in autograd's
        thread, while the caller waits in ``backward``), as every part boundary does."""
        if not self.enabled or not tensor.requires_grad:
            return

        def hook(grad: torch.Tensor) -> None:
            if self._parts and self._parts[-1][0] == part:
                if self.sync:
                    torch.cuda.synchronize()
                self._parts[-1][1] = time.perf_counter()

        tensor.register_hook(hook)

    def summary(self, steps: int) -> dict[str, float]:
        """Milliseconds per training step for each part (0 parts when disabled), and ``nerf_side``, the sum of
        the :data:`NERF_PARTS` that ran, where the backward was split (:meth:`split`)."""
        if not self.enabled or steps <= 0:
            return {}
        out = {name: 1000.0 * s / steps for name, s in sorted(self.seconds.items())}
        if "backward_nerf" in out:
            out["nerf_side"] = sum(out[p] for p in self.NERF_PARTS if p in out)
        return out

    def add_flops(self, name: str, flops: float) -> None:
        """Count ``flops`` as work done inside part ``name`` (nothing unless enabled)."""
        if self.enabled:
            self.flops[name] += float(flops)

    def flops_summary(self, steps: int) -> dict[str, dict[str, float]]:
        """name -> {"tflop_per_step": the counted work per training step, "tflop_per_call": per call of the
        part, "tflop_s": the achieved rate, counted FLOPs over the part's measured time}, for the parts that
        were told their work (:meth:`add_flops`); empty when disabled."""
        if not self.enabled or steps <= 0:
            return {}
        out = {}
        for name, flops in sorted(self.flops.items()):
            seconds, calls = self.seconds.get(name, 0.0), self.calls.get(name, 0)
            out[name] = {
                "tflop_per_step": _sig(flops / steps / 1e12),
                "tflop_per_call": _sig(flops / calls / 1e12) if calls else 0.0,
                "tflop_s": _sig(flops / seconds / 1e12) if seconds > 0 else 0.0,
            }
        return out

    def memory_summary(self) -> dict[str, dict[str, float]]:
        """name -> {"peak_gib": highest allocated while the part ran, "rise_gib": its largest rise over the
        allocation at the part's start}; empty unless measuring on CUDA."""
        gib = 2.0**30
        return {
            name: {
                "peak_gib": round(self.peak_bytes[name] / gib, 3),
                "rise_gib": round(self.rise_bytes[name] / gib, 3),
            }
            for name in sorted(self.peak_bytes)
        }

    def peak_memory(self, device: torch.device | None = None) -> tuple[int, int]:
        """(allocated, reserved) peak bytes on ``device`` (default: the timers' own) since the allocator's last
        reset, with the peaks folded in before the parts' resets; (0, 0) off CUDA."""
        device = device if device is not None else self.device
        if device is None or device.type != "cuda":
            return 0, 0
        if self.sync:
            self._fold()
        return (
            max(self._overall[0], torch.cuda.max_memory_allocated(device)),
            max(self._overall[1], torch.cuda.max_memory_reserved(device)),
        )

    def reset_memory(self) -> None:
        """Forget the memory figures (the trainer calls this where it resets the allocator's peaks)."""
        self.peak_bytes.clear()
        self.rise_bytes.clear()
        self._overall = [0, 0]

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.flops.clear()
        self.reset_memory()


class StepTracer:
    """``torch.profiler`` over ``steps`` training steps; writes a table to ``path`` when they are done.

    The table (``run.trace_steps``) lists operators and kernels by device time, with the step parts of
    :class:`Timers` as named ranges, under a header with the wall-clock per step and the time per step in
    which the GPU ran at least one kernel: far below the wall-clock, the step waits on Python and kernel
    launches, not on the GPU. On CUDA a memory section follows: what was allocated at the traced peak, by
    the line that allocated it (:func:`peak_memory_sites`). ``parts`` (``run.trace_parts``): ``"all"``,
    ``"ops"`` (no memory history) or ``"memory"`` (no profiler), to tell apart which one a failure needs.
    """

    def __init__(
        self, device: torch.device, steps: int, path: Path, label: str = "train", parts: str = "all"
    ) -> None:
        if parts not in ("all", "ops", "memory"):
            raise ValueError(f"unknown trace parts {parts!r}")
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
        self.device, self.steps, self.path, self.label = device, int(steps), Path(path), label
        self.done = 0
        self.open = True
        self.memory = False
        if self.cuda and parts in ("all", "memory"):
            self.base_bytes = torch.cuda.memory_allocated(device)
            try:
                torch.cuda.memory._record_memory_history(max_entries=200_000, stacks="python")
                self.memory = True
            except (AttributeError, RuntimeError, TypeError):  # an older torch: no memory section
                self.memory = False
        self.prof: torch.profiler.profile | None = None
        if parts in ("all", "ops"):
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
        self.t0 = time.perf_counter()

    def step_done(self) -> None:
        self.done += 1
        if self.done >= self.steps:
            self.close()

    def close(self) -> None:
        """Stop and write the table (once; a run that ends early writes what it traced)."""
        if not self.open:
            return
        self.open = False
        if self.cuda:
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self.t0
        prof, self.prof = self.prof, None
        if prof is not None:
            prof.__exit__(None, None, None)
        memory = ""
        if self.memory:
            try:
                memory = peak_memory_sites(torch.cuda.memory._snapshot(), self.device, self.base_bytes)
            finally:
                torch.cuda.memory._record_memory_history(enabled=None)
        if self.done == 0:
            return
        per_step = 1000.0 * wall / self.done
        if prof is None:
            head = f"# {self.label}: {self.done} traced training steps (memory only); wall-clock per step {per_step:.1f} ms\n"
            table = ""
        else:
            events = prof.key_averages()
            sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
            try:
                table = events.table(sort_by=sort, row_limit=60, max_name_column_width=70)
            except (AttributeError, KeyError):
                table = events.table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=70)
            if self.cuda:
                dev_step = kernel_busy_us(prof.events()) / 1000.0 / self.done
                head = (
                    f"# {self.label}: torch.profiler over {self.done} training steps\n"
                    f"# wall-clock per step: {per_step:.1f} ms (profiler overhead included); GPU busy (union of "
                    f"kernel intervals) per step: {dev_step:.1f} ms = {dev_step / per_step:.0%}\n"
                )
            else:
                head = f"# {self.label}: torch.profiler over {self.done} steps; wall-clock per step {per_step:.1f} ms\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(head + "\n" + table + "\n" + memory, encoding="utf-8")


def kernel_busy_us(events: Any) -> float:
    """Microseconds in which at least one kernel ran: the union of the device events' intervals.

    Not the sum of the table's device-time columns: those count a kernel once as itself, again under the
    operator that launched it, and the step parts' ranges appear on the GPU timeline as annotations.
    """
    spans = []
    for e in events:
        dev = getattr(e, "device_type", None)
        if dev is None or getattr(dev, "name", str(dev)).upper() == "CPU":
            continue
        if getattr(e, "is_user_annotation", False) or e.name.startswith(
            ("gpu_user_annotation", "ProfilerStep")
        ):
            continue
        spans.append((e.time_range.start, e.time_range.end))
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy


def _site(frames: list[dict[str, Any]]) -> str:
    """The innermost frame in this package (``file:line function``), with the innermost library frame."""
    ours = next((f for f in frames if "animate124" in f.get("filename", "")), None)
    lib = next((f for f in frames if "torch/" not in f.get("filename", "")), None)

    def fmt(f: dict[str, Any] | None) -> str:
        if f is None:
            return "?"
        name = f.get("filename", "?")
        for cut in ("animate124/", "site-packages/"):
            if cut in name:
                name = name.split(cut, 1)[1]
        return f"{name}:{f.get('line', '?')} {f.get('name', '')}"

    where = fmt(ours)
    if lib is not None and lib is not ours:
        where += f"  <- {fmt(lib)}"
    return where


def peak_memory_sites(snapshot: dict[str, Any], device: torch.device, base_bytes: int, rows: int = 25) -> str:
    """What was allocated at the peak of a recorded stretch, by the code that allocated it.

    Replays the allocator trace of ``torch.cuda.memory._snapshot()`` (alloc / free events since
    ``_record_memory_history`` was switched on), finds the moment the memory allocated during the stretch
    was largest, and sums the blocks alive then by their allocation site. ``base_bytes`` (allocated before
    the stretch began: weights, optimizer state, a field) is reported as one line.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    traces = snapshot.get("device_traces", [])
    events = traces[index] if index < len(traces) else []
    sizes: dict[int, int] = {}
    cur = peak = 0
    peak_at = -1
    for i, e in enumerate(events):  # pass 1: when was the stretch's allocation largest
        action, addr = e.get("action"), e.get("addr")
        if action == "alloc":
            sizes[addr] = int(e.get("size", 0))
            cur += sizes[addr]
            if cur > peak:
                peak, peak_at = cur, i
        elif action in ("free_requested", "free") and addr in sizes:
            cur -= sizes.pop(addr)
    at_peak: dict[int, tuple[int, str]] = {}
    for e in events[: peak_at + 1]:  # pass 2: the blocks alive at that moment, with their sites
        action, addr = e.get("action"), e.get("addr")
        if action == "alloc":
            at_peak[addr] = (int(e.get("size", 0)), _site(e.get("frames", [])))
        elif action in ("free_requested", "free"):
            at_peak.pop(addr, None)
    by_site: dict[str, int] = defaultdict(int)
    for size, site in at_peak.values():
        by_site[site] += size
    gib = 2.0**30
    lines = [
        f"# memory at the peak of the traced steps: {(base_bytes + peak) / gib:.2f} GiB allocated = "
        f"{base_bytes / gib:.2f} GiB before the trace (weights, optimizer state, fields) + "
        f"{peak / gib:.2f} GiB allocated during it, alive then, by allocation site:",
    ]
    for site, size in sorted(by_site.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"{size / gib:9.3f} GiB  {site}")
    return "\n".join(lines) + "\n"


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
