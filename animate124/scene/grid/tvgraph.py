"""The batched time TV's one pass replayed from a CUDA graph (``KernelOptions.tv_cuda_graph``; issue 26).

:func:`~.timetv.batched_tv_pass` is a pure function of the stacked table and the step's random points, with
fixed shapes at fixed settings (64 grids × 100,000 points at paper settings): 8 encoder calls, each with its
slot build, forward, loss and feature-gradient arithmetic and ``autograd.grad``, a few hundred launches a
step. BENCHMARKS.md §15.16 measured the TV launch-bound on an H100 (12 ms of host time a step against about as
much device time). :class:`TVGraph` records the pass once and afterwards replays it: copy the new points into
the recorded input buffer, one ``graph.replay()``, return the loss (cloned) and the recorded table gradient.

The same function: the replay runs the kernels the eager pass launched, on the same table (the parameter
itself, read in place: Adam updates it in place, so its address stays; a new address records again) and the
same points. The table gradient comes back as the recorded buffer, not a copy: :class:`~.timetv.BatchedPointsTimeTV`
keeps it for its backward, which runs in the same training step, before the next replay writes it again. The
graph has a private memory pool (the priors' graphs share one, and a buffer that outlives a replay must not
sit where another graph's intermediates go): about the table gradient (462 MB at paper settings) and one
call's features and their gradients, for as long as the encoder holds the graph (:meth:`TVGraph.release`).

Falls back to the eager pass (returns None) off CUDA, under a torch profiler (a capture under CUPTI broke a
stage before, ``guidance/graphs.py``), inside another capture, or after a capture that failed (logged once).
Built on 2026-12-08 without a GPU: off by default and not yet measured; ``tests/test_scene_timetv.py`` checks it
against the eager pass on the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["TVGraph"]

#: ``compute(u) -> (loss, G)``: the one pass on the encoder's own table (``batched_tv_pass`` bound to it)
Pass = Callable[[Tensor], "tuple[Tensor, Tensor | None]"]


@dataclass
class _Recorded:
    key: tuple[Any, ...]
    graph: Any  # torch.cuda.CUDAGraph
    points: Tensor  # the recorded input buffer
    loss: Tensor
    grad: Tensor


class TVGraph:
    """One recorded pass per encoder (module docstring). ``replays`` counts the replays."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = int(warmup)
        self.replays = 0
        self._rec: _Recorded | None = None
        self._failed = False

    def __call__(
        self, u: Tensor, table: Tensor, key: tuple[Any, ...], compute: Pass
    ) -> tuple[Tensor, Tensor] | None:
        """``(loss, G)`` of ``compute(u)`` replayed from the graph (recorded first if there is none for ``key``
        and the table's address), or None: the caller runs the pass eagerly."""
        if (
            self._failed
            or u.device.type != "cuda"
            or torch.cuda.is_current_stream_capturing()
            or _profiling()
        ):
            return None
        key = (*key, tuple(u.shape), u.dtype, u.device, table.data_ptr(), tuple(table.shape), table.dtype)
        if self._rec is None or self._rec.key != key:
            self._rec = None  # the old recording's pool goes back before the new one is made
            try:
                self._rec = self._record(u, key, compute)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: the eager pass from now on
                log.warning(
                    "CUDA graph capture of the time TV failed (%s: %s); it runs eagerly",
                    type(exc).__name__,
                    exc,
                )
                self._failed = True
                return None
        rec = self._rec
        rec.points.copy_(u)
        rec.graph.replay()
        self.replays += 1
        return rec.loss.clone(), rec.grad

    def _record(self, u: Tensor, key: tuple[Any, ...], compute: Pass) -> _Recorded:
        points = u.detach().clone()
        side = torch.cuda.Stream(u.device)
        side.wait_stream(torch.cuda.current_stream(u.device))
        with torch.cuda.stream(side):  # kernels compiled and libraries set up outside the capture
            for _ in range(max(self.warmup, 1)):
                compute(points)
        torch.cuda.current_stream(u.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(u.device), torch.cuda.graph(graph, stream=torch.cuda.Stream(u.device)):
            loss, grad = compute(points)
        if grad is None:
            raise RuntimeError("the recorded pass made no table gradient")
        return _Recorded(key, graph, points, loss, grad)

    def __deepcopy__(self, memo: dict) -> TVGraph:
        """A copy of the encoder (refine's frozen field) starts without a recording (a graph cannot be copied)."""
        return TVGraph(self.warmup)

    def release(self) -> bool:
        """Drop the recording (its pool goes back to the allocator once nothing holds it); whether one was held."""
        held = self._rec is not None
        self._rec = None
        return held


def _profiling() -> bool:
    from animate124.guidance.graphs import _profiling as profiling

    return profiling()
