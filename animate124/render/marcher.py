"""Pure-torch packed ray marcher and compositing (SPEC §3.2), for the CPU and, fast, for the GPU.

Marching (:func:`march_rays`), for rays ``x(t) = o + t·d`` with possibly unnormalized d:

* near/far from the AABB [−bound, bound]³, near clamped to ``min_near`` = 0.2 (upstream's CUDA path);
* a uniform lattice ``t_k = near + (k + u)·dt``, k = 0, 1, … while ``t_k < far`` and ``k < max_steps``,
  with ``dt = 2√3·bound/max_steps`` (upstream: 2√3/1024 at bound 1) in **ray-parameter units**, as
  upstream steps t; ``u ~ U[0,1)`` per ray when ``perturb`` else 0;
* empty-space skipping: a sample is kept iff its occupancy cell (for the ray's time slot) is
  occupied. Upstream jumps over empty cells but keeps its lattice aligned to ``near + k·dt``, so
  this gives the same sample set (up to samples exactly on cell faces).

The result is *packed*: kept samples of all rays in one flat array, sorted by ray, with their ray
index. Rays are marched in chunks of at most ``max_candidates`` lattice candidates, planned from the
per-ray candidate counts with one host sync; each chunk then syncs once more for its number of kept
samples (a data-dependent size). Everything else stays on the device. (Chunks used to be a fixed number of
rays, ``max_candidates // max_steps``, with two syncs each: 32 per 16-frame 128² clip instead of about 8.)
On CUDA the stages use :mod:`animate124.render.march_kernels` instead (``fused``): the same lattice walked in
one Triton kernel, with no per-candidate tensors and one host sync.

Compositing (:func:`composite`), for the kept samples of one ray in order:

    s_i = σ_i·δ_i,   α_i = 1 − exp(−s_i),   T_i = exp(−Σ_{j<i} s_j),   w_i = α_i·T_i

Integration length δ (``delta_mode``): ``"metric"`` (default) uses ``δ = dt·‖d‖``, the metric length
of a step, so σ is a density per world unit whatever the ray normalization; ``"upstream"`` uses
``δ = dt`` as upstream does with its unnormalized rays (about 12 % shorter than the metric step at
the image corners for fovy 40°, SPEC §3.2).

Early termination: upstream stops a ray once ``T < 1e−4`` (sample i is composited iff the
transmittance *before* it satisfies ``T_i ≥ t_thresh``). We compute all samples and set ``w_i = 0``
exactly for samples with ``T_i < t_thresh``: the same set of composited samples as upstream.

The exclusive per-ray prefix sum ``Σ_{j<i} s_j`` is a global ``cumsum`` in float64 minus its value
at the ray's first sample (sort-free; float64 keeps the subtraction exact enough when earlier rays
carry huge optical depths). Per-ray sums use ``index_add`` (no sorting, no host sync).

The gradient of a terminated sample's ``s_i`` (``T_i < t_thresh``) is exactly 0: its own weight is zeroed,
and every ``s_j`` it feeds (``T_j`` for later j of its ray) belongs to a sample terminated as well. Through
the global ``cumsum`` autograd leaves a rounding residue there instead (the later rays' terms add and
cancel: about 10⁻¹⁶, for nearly every terminated sample), so :func:`composite` sets those gradients to
the exact 0 (a hook on ``s``). That is what lets the grid backward skip their rows: a terminated sample
then reaches the encoder with an all-zero feature gradient, whose table additions the kernels can leave out
(``KernelOptions.skip_zero_rows``; issue 26: about half the samples of a dynamic step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from animate124.errors import Animate124Error
from animate124.render.rays import near_far_from_aabb
from animate124.scene.occupancy import OccupancyGrid
from animate124.transfer import to_device

__all__ = [
    "PackedSamples",
    "march_rays",
    "draw_offsets",
    "composite",
    "segment_sum",
    "CompositeResult",
    "DELTA_MODES",
]

DELTA_MODES = ("metric", "upstream")


class MarchError(Animate124Error):
    """Invalid marcher arguments."""


@dataclass
class PackedSamples:
    """Packed samples of R rays, sorted by ray.

    ray_indices [M] long, t [M] ray parameter (planar depth for camera rays), deltas [M] integration
    lengths, positions [M, 3], num_rays R, step ``dt`` (ray-parameter units).
    """

    ray_indices: Tensor
    t: Tensor
    deltas: Tensor
    positions: Tensor
    num_rays: int
    dt: float

    @property
    def num_samples(self) -> int:
        return self.ray_indices.shape[0]


def _march_chunk(
    origins: Tensor,
    dirs: Tensor,
    offset: Tensor,
    slots: Tensor | None,
    occupancy: OccupancyGrid | None,
    bound: float,
    dt: float,
    near: Tensor,
    n: Tensor,
    total: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk of rays with ``n`` lattice candidates each (``total`` in all, counted by the caller)
    -> local ray index [m], t [m], positions [m, 3] of kept samples."""
    if total == 0:
        empty = origins.new_zeros(0)
        return empty.long(), empty, origins.new_zeros(0, 3)
    r = origins.shape[0]
    ray = torch.repeat_interleave(torch.arange(r, device=origins.device), n, output_size=total)
    start = torch.cumsum(n, 0) - n
    k = torch.arange(total, device=origins.device) - start[ray]
    t = near[ray] + (k.to(near.dtype) + offset[ray]) * dt
    pos = torch.addcmul(origins[ray], t[:, None], dirs[ray]).clamp_(-bound, bound)
    if occupancy is not None:
        s = 0 if slots is None else slots[ray]
        keep = occupancy.occupied(pos, s).nonzero().squeeze(1)  # host sync: kept samples
        ray, t, pos = ray[keep], t[keep], pos[keep]
    return ray, t, pos


#: rays per block of the chunk plan (one candidate count per block is read back)
PLAN_BLOCK = 1024


def _plan_chunks(n: Tensor, max_candidates: int) -> list[tuple[int, int, int]]:
    """Split rays into consecutive chunks of at most ``max_candidates`` lattice candidates (a chunk may be one
    larger block of ``PLAN_BLOCK`` rays); returns ``(first ray, end ray, candidates)``. One host sync: the
    cumulative candidate count at every ``PLAN_BLOCK``-th ray."""
    r = n.shape[0]
    cum = torch.cumsum(n, 0)
    ends = list(range(PLAN_BLOCK, r + 1, PLAN_BLOCK))
    picks = [cum[PLAN_BLOCK - 1 :: PLAN_BLOCK]]
    if not ends or ends[-1] != r:
        ends.append(r)
        picks.append(cum[-1:])
    marks = torch.cat(picks).tolist()
    chunks: list[tuple[int, int, int]] = []
    first, base, prev_end, prev_mark = 0, 0, 0, 0
    for end, mark in zip(ends, marks, strict=True):
        if mark - base > max_candidates and prev_end > first:
            chunks.append((first, prev_end, prev_mark - base))
            first, base = prev_end, prev_mark
        prev_end, prev_mark = end, mark
    chunks.append((first, r, marks[-1] - base))
    return chunks


def draw_offsets(r: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """The per-ray jitter of a perturbed march: ``r`` uniforms from ``generator`` (on its device)."""
    gdev = generator.device if generator is not None else device
    return to_device(torch.rand(r, generator=generator, device=gdev), device)


def march_rays(
    origins: Tensor,
    dirs: Tensor,
    *,
    bound: float = 1.0,
    occupancy: OccupancyGrid | None = None,
    slots: Tensor | None = None,
    max_steps: int = 1024,
    min_near: float = 0.2,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    delta_mode: str = "metric",
    step_size: float | None = None,
    max_candidates: int = 2**24,
    offsets: Tensor | None = None,
    fused: bool | None = False,
) -> PackedSamples:
    """March R rays (origins, dirs [R, 3]) through the box; see module docstring.

    slots: [R] long occupancy slot per ray (None = slot 0). ``max_candidates`` bounds the memory of
    the un-skipped lattice: rays are processed in chunks of at most that many candidates (module docstring).
    ``offsets``: [R] jitter in [0, 1) drawn by the caller (used when ``perturb``; ``generator`` is then
    not drawn from), so that a subset of rays can be marched with the numbers a whole render drew.
    ``fused``: walk the lattice in one Triton kernel (:mod:`animate124.render.march_kernels`: the same samples up
    to rounding at cell faces, no per-candidate tensors, one host sync); None = on CUDA with an occupancy grid
    (the stages, with ``raymarch.fused_march``), True = wherever Triton runs (the CPU under ``TRITON_INTERPRET=1``),
    False (the default) = never.
    """
    if delta_mode not in DELTA_MODES:
        raise MarchError(f"unknown delta_mode {delta_mode!r}", f"use one of {DELTA_MODES}")
    if origins.shape != dirs.shape or origins.ndim != 2 or origins.shape[1] != 3:
        raise MarchError(f"origins/dirs must both be [R,3], got {tuple(origins.shape)}, {tuple(dirs.shape)}")
    origins = origins.float()
    dirs = dirs.float()
    dt = float(step_size) if step_size is not None else 2.0 * math.sqrt(3.0) * bound / max_steps
    r = origins.shape[0]
    dev = origins.device
    if perturb and offsets is not None:
        if offsets.shape != (r,):
            raise MarchError(f"offsets must be [R] = [{r}], got {tuple(offsets.shape)}")
        offset = to_device(offsets, dev, torch.float32)
    elif perturb:
        offset = draw_offsets(r, generator, dev)
    else:
        offset = torch.zeros(r, device=dev)
    near, far, hit = near_far_from_aabb(origins, dirs, bound, min_near)
    n = torch.ceil((far - near) / dt - offset).clamp_(0, max_steps)
    n = torch.where(hit, n, torch.zeros_like(n)).long()
    if _use_fused(fused, occupancy, dev):
        from animate124.render.march_kernels import march_lattice

        ray, t, pos = march_lattice(
            origins, dirs, near, offset, n, slots, occupancy.bitfield, occupancy.resolution, bound, dt
        )
        return _packed(ray, t, pos, dirs, r, dt, delta_mode)
    rays, ts, poss = [], [], []
    for i, j, total in _plan_chunks(n, max_candidates) if r > 0 else [(0, 0, 0)]:
        sl = slice(i, j)
        ray, t, pos = _march_chunk(
            origins[sl], dirs[sl], offset[sl], None if slots is None else slots[sl], occupancy, bound, dt,
            near[sl], n[sl], total,
        )  # fmt: skip
        rays.append(ray + i)
        ts.append(t)
        poss.append(pos)
    ray = torch.cat(rays) if len(rays) > 1 else rays[0]
    t = torch.cat(ts) if len(ts) > 1 else ts[0]
    pos = torch.cat(poss) if len(poss) > 1 else poss[0]
    return _packed(ray, t, pos, dirs, r, dt, delta_mode)


def _use_fused(fused: bool | None, occupancy: OccupancyGrid | None, dev: torch.device) -> bool:
    if fused is False or occupancy is None:
        return False
    from animate124.render.march_kernels import HAS_TRITON

    if fused is None:
        return dev.type == "cuda" and HAS_TRITON
    if not HAS_TRITON:
        raise MarchError("the fused marcher needs Triton", "install triton or pass fused=False")
    return True


def _packed(
    ray: Tensor, t: Tensor, pos: Tensor, dirs: Tensor, r: int, dt: float, delta_mode: str
) -> PackedSamples:
    if delta_mode == "metric":
        deltas = dirs.norm(dim=-1)[ray] * dt
    else:
        deltas = torch.full_like(t, dt)
    return PackedSamples(ray_indices=ray, t=t, deltas=deltas, positions=pos, num_rays=r, dt=dt)


def segment_sum(values: Tensor, ray_indices: Tensor, num_rays: int) -> Tensor:
    """Per-ray sum of packed values: [M, ...] -> [R, ...] (``index_add``, differentiable, no sync)."""
    out = values.new_zeros((num_rays, *values.shape[1:]))
    return out.index_add(0, ray_indices, values)


@dataclass
class CompositeResult:
    """weights [M], transmittance before each sample [M], opacity [R] = Σw."""

    weights: Tensor
    transmittance: Tensor
    opacity: Tensor


def composite(
    sigmas: Tensor,
    deltas: Tensor,
    ray_indices: Tensor,
    num_rays: int,
    t_thresh: float = 1e-4,
) -> CompositeResult:
    """Volume-rendering weights of packed samples sorted by ray (module docstring formulas).

    sigmas, deltas [M] float32, ray_indices [M] long ascending. Differentiable w.r.t. sigmas.
    """
    s = sigmas.float() * deltas.float()
    counts = torch.zeros(num_rays, dtype=torch.long, device=s.device).index_add_(
        0, ray_indices, torch.ones_like(ray_indices)
    )
    first = torch.cumsum(counts, 0) - counts  # index of each ray's first sample
    cs = torch.cumsum(s.double(), 0)
    excl = cs - s.double()
    # index_select, not excl[...]: its backward (index_add) sums in a fixed order on the CPU
    excl_ray = (excl - excl.index_select(0, first[ray_indices])).clamp_min(0.0)
    trans = torch.exp(-excl_ray).float()
    alpha = -torch.expm1(-s)
    w = alpha * trans
    live = trans >= t_thresh
    w = torch.where(live, w, torch.zeros_like(w))
    if s.requires_grad:  # the exact gradient of a terminated sample: 0 (module docstring)
        s.register_hook(lambda g: torch.where(live, g, torch.zeros_like(g)))
    opacity = segment_sum(w, ray_indices, num_rays)
    return CompositeResult(weights=w, transmittance=trans, opacity=opacity)
