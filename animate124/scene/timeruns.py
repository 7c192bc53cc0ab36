"""Which points of a field call share a time, known on the host: ``TimeRuns`` (issue 12).

A clip render sends its samples to the field frame by frame (the renderer emits frame-major samples), so
the points of one call come in a few runs of equal time. The 4D grid encoder blends one table per distinct
time and reads one grid per point (``TimeGridEncoding._encode_slots``). Finding those runs from the
per-point times on the GPU (``unique_consecutive``) makes the host wait for the device once per encoder call:
about 30 waits per dynamic-stage step, each leaving the GPU idle while Python catches up (the step's GPU was
busy 71 % of the time, BENCHMARKS.md §8.7). The renderer already knows, on the host, each frame's time and,
after its marching syncs, how many samples each frame has; :class:`TimeRuns` carries that to the encoder,
through every chunk, subset and repetition the renderer and the normals make.

The encoder then computes the same blended tables (the same fp32 times, so the same ``lo``/``hi``/weight) and
the same per-point slot, without reading anything back from the device. Values are identical; gradients
are equal up to the fp32 order of the atomic additions (distinct times are merged into one slot).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from animate124.transfer import to_device


@dataclass(frozen=True)
class TimeRuns:
    """``counts[i]`` consecutive points at time ``times[i]`` (a CPU float32 tensor, the exact values the
    points' time tensor holds). Runs may have zero points; consecutive runs may share a time."""

    counts: tuple[int, ...]
    times: Tensor

    def __post_init__(self) -> None:
        if len(self.counts) != self.times.numel():
            raise ValueError(f"{len(self.counts)} run counts for {self.times.numel()} run times")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def slice(self, start: int, stop: int) -> TimeRuns:
        """The runs of points ``start:stop``."""
        counts: list[int] = []
        keep: list[int] = []
        pos = 0
        for i, c in enumerate(self.counts):
            lo, hi = max(pos, start), min(pos + c, stop)
            if hi > lo:
                counts.append(hi - lo)
                keep.append(i)
            pos += c
        return TimeRuns(tuple(counts), self.times[keep])

    def repeat(self, k: int) -> TimeRuns:
        """The runs of ``k`` copies of the points one after another (the normals' six offsets)."""
        return TimeRuns(self.counts * k, self.times.repeat(k))

    def nonempty(self) -> TimeRuns:
        """Without the runs of no points."""
        keep = [i for i, c in enumerate(self.counts) if c > 0]
        return (
            self
            if len(keep) == len(self.counts)
            else TimeRuns(tuple(self.counts[i] for i in keep), self.times[keep])
        )

    def with_counts(self, counts: list[int]) -> TimeRuns:
        """The same runs with new point counts (a subset of each run, e.g. the live samples)."""
        return TimeRuns(tuple(int(c) for c in counts), self.times)

    def recount(self, sorted_index: Tensor) -> TimeRuns:
        """The runs of the items of an ascending ``sorted_index`` into these runs' points (the samples of
        these rays by ray index, the live ones of these samples): one device read."""
        return self.with_counts(run_counts(sorted_index, [0, *itertools.accumulate(self.counts)]))


def expand_runs(values: Tensor, counts: list[int] | tuple[int, ...], device: torch.device) -> Tensor:
    """``values [K]`` (a CPU tensor) repeated ``counts[k]`` times each, on ``device``: what
    ``torch.repeat_interleave(values, counts)`` gives, the same values. ``repeat_interleave``'s CUDA kernel gives
    each run one thread that writes its points one after another, so a few runs of half a million points (the
    16 frames of a clip) took 0.86 ms a call on an H100 (3 calls a dynamic step; BENCHMARKS.md §15.12); here each
    point finds its run with a binary search over the ``K`` run ends (``searchsorted``), one thread a point."""
    ends = torch.tensor(list(itertools.accumulate(counts)), dtype=torch.long)
    n = int(ends[-1]) if ends.numel() else 0
    run = torch.searchsorted(to_device(ends, device), torch.arange(n, device=device), right=True)
    return to_device(values, device)[run]


def run_counts(sorted_index: Tensor, bounds: list[int]) -> list[int]:
    """Points of an ascending ``sorted_index`` tensor falling in each ``[bounds[i], bounds[i+1])``: one
    device read (the caller's only wait)."""
    b = to_device(torch.tensor(bounds, dtype=sorted_index.dtype), sorted_index.device)
    pos = torch.searchsorted(sorted_index, b)
    return (pos[1:] - pos[:-1]).tolist()
