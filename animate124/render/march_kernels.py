"""The ray marcher's lattice walk as one Triton kernel (issue 26): the same samples as :func:`march_rays`'s torch
path without its per-candidate tensors.

The torch path (:mod:`animate124.render.marcher`, SPEC §3.2) materialises every lattice candidate of a chunk of
rays: a 16-frame 128² clip has about 161 M candidates (up to 834 a ray at the paper's 1,024 steps), each
written and read by a dozen element-wise kernels (ray index, step index, ``t``, the position, its cell, the
occupancy bit, the kept mask) and compacted with ``nonzero``, one host sync per chunk of 2^24. Here one program
walks ``BLOCK`` rays along their lattice in registers:

    t_k = near + (k + u)·dt,   x_k = clamp(o + t_k·d, −bound, bound),   keep iff bitfield[slot, cell(x_k)]

twice: a counting pass writes each ray's number of kept samples, a prefix sum gives each ray's first output
row (one host read: the total), and the writing pass stores the kept samples' ray index, ``t`` and position
in ray order, k ascending, as the torch path does. Memory: the outputs and a few ``[R]`` vectors.

The same function up to floating-point rounding: the cell index divides as :meth:`OccupancyGrid.cell_index`
(``(x + bound) / (2·bound)``, IEEE division), but the compiler may contract ``o + t·d`` and the ``t`` formula
into fused multiply-adds where torch's kernels round each product, so a candidate within an ulp or two of a
cell face can land in the neighbouring cell: it is kept by one path and not the other when the two cells'
occupancy differ (``tests/test_render_march_kernel.py`` bounds exactly that). ``march_rays`` picks this kernel
on CUDA (``fused=None``); the torch path stays the CPU path and the reference.

With ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernel runs on CPU tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with CUDA torch wheels
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "march_lattice", "MARCH_BLOCK"]

#: rays per program: adjacent pixels, so the loop's bound (the block's longest lattice) wastes little
MARCH_BLOCK = 64

if HAS_TRITON:

    @triton.jit
    def _march_kernel(
        o_ptr, d_ptr, near_ptr, off_ptr, n_ptr, slot_ptr, bits_ptr, start_ptr,  # inputs
        count_ptr, ray_ptr, t_ptr, pos_ptr,  # outputs (count pass / write pass)
        num_rays, res, cells, bound, dt,
        HAS_SLOTS: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Walk ``BLOCK`` rays' lattices; count kept samples (``WRITE`` false) or store them at ``start``."""
        rays = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = rays < num_rays
        n = tl.load(n_ptr + rays, mask=live, other=0)
        ox = tl.load(o_ptr + rays * 3, mask=live, other=0.0)
        oy = tl.load(o_ptr + rays * 3 + 1, mask=live, other=0.0)
        oz = tl.load(o_ptr + rays * 3 + 2, mask=live, other=0.0)
        dx = tl.load(d_ptr + rays * 3, mask=live, other=0.0)
        dy = tl.load(d_ptr + rays * 3 + 1, mask=live, other=0.0)
        dz = tl.load(d_ptr + rays * 3 + 2, mask=live, other=0.0)
        near = tl.load(near_ptr + rays, mask=live, other=0.0)
        off = tl.load(off_ptr + rays, mask=live, other=0.0)
        base = tl.zeros([BLOCK], dtype=tl.int64)
        if HAS_SLOTS:
            base = tl.load(slot_ptr + rays, mask=live, other=0).to(tl.int64) * cells
        row = tl.zeros([BLOCK], dtype=tl.int64)
        if WRITE:
            row = tl.load(start_ptr + rays, mask=live, other=0)
        count = tl.zeros([BLOCK], dtype=tl.int32)
        two_bound = 2.0 * bound
        for k in range(0, tl.max(n, axis=0)):
            kk = tl.zeros([BLOCK], dtype=tl.int32) + k  # a tensor in the interpreter too, where k is an int
            on = kk < n
            t = near + (kk.to(tl.float32) + off) * dt
            x = tl.minimum(tl.maximum(ox + t * dx, -bound), bound)
            y = tl.minimum(tl.maximum(oy + t * dy, -bound), bound)
            z = tl.minimum(tl.maximum(oz + t * dz, -bound), bound)
            ux = tl.math.div_rn(x + bound, two_bound)
            uy = tl.math.div_rn(y + bound, two_bound)
            uz = tl.math.div_rn(z + bound, two_bound)
            inside = (ux >= 0) & (ux <= 1) & (uy >= 0) & (uy <= 1) & (uz >= 0) & (uz <= 1)
            ix = tl.minimum(tl.maximum(tl.floor(ux * res), 0.0), res - 1.0).to(tl.int64)
            iy = tl.minimum(tl.maximum(tl.floor(uy * res), 0.0), res - 1.0).to(tl.int64)
            iz = tl.minimum(tl.maximum(tl.floor(uz * res), 0.0), res - 1.0).to(tl.int64)
            cell = (ix * res + iy) * res + iz
            bit = tl.load(bits_ptr + base + cell, mask=on & inside, other=0)
            keep = on & inside & (bit != 0)
            if WRITE:
                at = row + count
                tl.store(ray_ptr + at, rays.to(tl.int64), mask=keep)
                tl.store(t_ptr + at, t, mask=keep)
                tl.store(pos_ptr + at * 3, x, mask=keep)
                tl.store(pos_ptr + at * 3 + 1, y, mask=keep)
                tl.store(pos_ptr + at * 3 + 2, z, mask=keep)
            count += keep.to(tl.int32)
        if not WRITE:
            tl.store(count_ptr + rays, count, mask=live)


def march_lattice(
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    offset: Tensor,
    n: Tensor,
    slots: Tensor | None,
    bitfield: Tensor,
    resolution: int,
    bound: float,
    dt: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Kept lattice samples of R rays (origins, dirs [R, 3] fp32; near, offset [R] fp32; n [R] candidates;
    slots [R] or None = slot 0; bitfield [S, resolution³] bool) -> ray index [M] long, t [M], positions [M, 3],
    sorted by ray and, within a ray, by step. One host read (M)."""
    r = origins.shape[0]
    dev = origins.device
    o, d = origins.contiguous(), dirs.contiguous()
    near, offset = near.float().contiguous(), offset.float().contiguous()
    n32 = n.to(torch.int32).contiguous()
    bits = bitfield.contiguous().view(torch.uint8)
    slot = slots.to(torch.int32).contiguous() if slots is not None else n32  # unread without slots
    counts = torch.empty(r, dtype=torch.int32, device=dev)
    grid = (triton.cdiv(r, MARCH_BLOCK),)
    common = dict(res=resolution, cells=resolution**3, bound=float(bound), dt=float(dt))
    flags = dict(HAS_SLOTS=slots is not None, BLOCK=MARCH_BLOCK)
    unused = counts  # the count pass reads no row starts and writes no samples
    _march_kernel[grid](
        o, d, near, offset, n32, slot, bits, unused, counts, unused, unused, unused, r, **common,
        WRITE=False, **flags,
    )  # fmt: skip
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    m = int(ends[-1]) if r else 0  # the host read
    ray = torch.empty(m, dtype=torch.long, device=dev)
    t = torch.empty(m, dtype=torch.float32, device=dev)
    pos = torch.empty(m, 3, dtype=torch.float32, device=dev)
    if m:
        start = ends - counts
        _march_kernel[grid](
            o, d, near, offset, n32, slot, bits, start, counts, ray, t, pos, r, **common, WRITE=True, **flags
        )  # fmt: skip
    return ray, t, pos
