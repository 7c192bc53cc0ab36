"""Triton kernels for the multiresolution grid encoding (SPEC 3.1), static and time-stacked.

Same maths as :func:`animate124.scene.encoding.encode_torch` (torch-ngp ``gridencoder``):

* forward: one program per (block of points, level); 8 corners, each a vectorised load of the ``C``
  features of one table row, fp32 accumulation, written into the ``[N, L·C]`` output;
* backward: recomputes corners and weights and ``atomic_add``s ``w·dL/df`` into an fp32 table
  gradient (like torch-ngp's ``kernel_grid_backward``);
* time-stacked tables (``[T·E, C]``): each corner reads the rows of grid ``⌊t(T−1)⌋`` and, when
  ``t(T−1)`` is not an integer, of grid ``⌈t(T−1)⌉``, so a point costs at most 2× a static one.

Pair layout (the default for the paper's 2-feature fp32 tiled tables). Corners ``k`` and ``k+1`` of a
point differ only in x, and x has stride 1 in a tiled level, so their rows are ``r`` and ``next(r) =
(r+1) & wrap_mask``; the y-neighbours are ``(r+s1) & wrap_mask``.

* backward: ``(w_k·g, w_{k+1}·g)`` goes out as one 16-byte reduction into ``G [rows, 4]``, folded
  afterwards into ``dT[r] = G[r, 0:2] + G[prev(r), 2:4]`` (:func:`fold_pair_grad`): 4 reductions per
  level instead of 8;
* forward of a static table: a 32-byte quad table ``Q[r] = (T[r], T[r+1], T[r+s1], T[r+s1+1])`` (one L2
  sector holds a cell face, 2 sectors per level instead of 8 loads); time-stacked tables use 16-byte
  pairs ``P[r] = (T[r], T[next(r)])``. The table is built for every call (:func:`build_pair_table`,
  ``encoding.GatherTables``; about 55 µs for the paper's 8 MB table);
* a clip's points (few distinct times) blend one pair table per time and read one grid per point
  (:func:`encode_slots`).

Hashed grids keep the plain kernels. The kernels are bound by random L2 sector traffic, so fewer and
fuller requests are what made them faster (BENCHMARKS.md §2).

Atomics use ``sem="relaxed"`` (Triton's default is acq_rel, which adds fences per add); the sum is
order-independent up to fp32 rounding, so gradients are not bitwise deterministic (nor are upstream's).

Not supported, by design: gradients w.r.t. positions ``u`` and times ``t`` (returned as ``None``).
SPEC computes normals by finite differences of σ, so nothing needs ``dL/dx``. Tables are read and
outputs written in fp32 even under autocast (upstream reads an fp16 copy; fp32 is more accurate and the
next ``Linear`` casts anyway).

Index arithmetic is done in int32 with two's-complement wrap-around and ``& (size−1)`` for wrapped
levels, which equals upstream's uint32 ``% size`` because wrapped table sizes are powers of two. The
hash prime 2654435761 is used as its int32 bit pattern −1640531535.

With ``TRITON_INTERPRET=1`` these kernels run on CPU tensors (tests use this).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor

try:  # optional dependency
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

if TYPE_CHECKING:
    from animate124.scene.encoding import GatherTables, _LevelBuffers

# defaults; benchmarks/bench_encoding.py and bench_grid_sweep.py sweep these on the GPU
# Plain kernels (hashed grids, other feature counts, PAIRS off)
FWD_BLOCK = 64  # H100 sweep: 0.85 ms vs 1.04 ms at 128 (2^20 points, BENCHMARKS.md)
FWD_WARPS = 4
BWD_BLOCK = 128
BWD_WARPS = 4
# Pair-layout kernels (benchmarks/bench_grid_sweep.py on an H100: forward 0.64 ms with levels fastest,
# 256 points x 2 warps, vs 0.83 ms with blocks fastest, 64 x 4; backward flat at 1.14-1.18 ms for
# BLOCK >= 128 with levels fastest). Order of the pair forward's programs: block | level | all.
FWD_ORDER = os.environ.get("ANIMATE124_GRID_FWD_ORDER", "level")
PAIR_FWD_BLOCK = 256
PAIR_FWD_WARPS = 2
PAIR_BWD_BLOCK = 256
PAIR_BWD_WARPS = 4
# Backward program order: level-fastest spreads concurrent atomics over all levels (see the kernel).
BWD_LEVEL_FAST = os.environ.get("ANIMATE124_GRID_BWD_ORDER", "level") == "level"

# Backward atomics: "auto" uses one 8-byte vector reduction (PTX ``red.global.add.v2.f32``, sm_90+) per
# corner when level_dim == 2, else Triton's scalar ``atomic_add``; "scalar" forces the latter.
# Override with ANIMATE124_GRID_ATOMICS=scalar|vec2|auto.
ATOMICS = os.environ.get("ANIMATE124_GRID_ATOMICS", "auto")
VEC2_ASM = "{ .reg .pred p; setp.ne.b32 p, $4, 0; @p red.global.add.v2.f32 [$1], {$2, $3}; mov.u32 $0, 0; }"
_VEC2_BROKEN: list[str] = []

# Pair layout (level_dim 2, fp32 tables), see the module docstring. PAIRS=0 (ANIMATE124_GRID_PAIRS=0)
# turns it off; the backward accumulates into the pair-layout gradient only for tables of at most
# BWD_PAIRS_MAX_ROWS rows (the [rows, 4] buffer is zeroed and folded on every backward).
PAIRS = os.environ.get("ANIMATE124_GRID_PAIRS", "1") == "1"
BWD_PAIRS_MAX_ROWS = int(os.environ.get("ANIMATE124_GRID_BWD_PAIRS_MAX_ROWS", str(2**26)))
# one 16-byte reduction for a pair, else two 8-byte ones (sm_90+)
PAIR_ASM = (
    "{ .reg .pred p4, p2; setp.ne.b32 p4, $7, 0; setp.ne.b32 p2, $8, 0; "
    "@p4 red.global.add.v4.f32 [$1], {$3, $4, $5, $6}; "
    "@p2 red.global.add.v2.f32 [$1], {$3, $4}; @p2 red.global.add.v2.f32 [$2], {$5, $6}; mov.u32 $0, 0; }"
)
BUILD_BLOCK = 1024
# Static tables: the forward gathers from 32-byte quads (4 corners of a cell face = one L2 sector)
# instead of 16-byte pairs (H100: 0.57 vs 0.66 ms); ANIMATE124_GRID_QUADS=0 falls back to pairs.
# Time-stacked tables and blended slots keep pairs: a quad table of 64 grids is 2 GB and building the
# blended quads cost more than the gather saved (BENCHMARKS.md).
QUADS = os.environ.get("ANIMATE124_GRID_QUADS", "1") == "1"
SLOT_QUADS = False  # blended quads for clip slots: measured slower than blended pairs


def _vec2_atomics_enabled(device: torch.device) -> bool:
    if ATOMICS == "scalar" or _VEC2_BROKEN or interpreter_enabled() or device.type != "cuda":
        return False
    if ATOMICS == "vec2":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 9


def _disable_vec2(err: Exception) -> None:
    import logging

    logging.getLogger(__name__).warning("vector atomics unavailable (%s); using scalar atomics", err)
    _VEC2_BROKEN.append(str(err))


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(device: torch.device | str | None = None) -> bool:
    """Triton importable and usable on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if not HAS_TRITON:
        return False
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cpu":
        return interpreter_enabled()
    if dev is not None and dev.type != "cuda":
        return False
    return torch.cuda.is_available() or interpreter_enabled()


if HAS_TRITON:

    @triton.jit
    def _corner_rows(
        i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, CORNER: tl.constexpr
    ):  # pragma: no cover - jit
        """Row index within the level and trilinear weight of one corner (bits: x, y, z)."""
        if CORNER & 1:
            c0 = i0 + 1
            w = f0
        else:
            c0 = i0
            w = 1.0 - f0
        if (CORNER >> 1) & 1:
            c1 = i1 + 1
            w = w * f1
        else:
            c1 = i1
            w = w * (1.0 - f1)
        if (CORNER >> 2) & 1:
            c2 = i2 + 1
            w = w * f2
        else:
            c2 = i2
            w = w * (1.0 - f2)
        tiled = c0 + c1 * s1 + c2 * s2
        hashv = c0 ^ (c1 * -1640531535) ^ (c2 * 805459861)  # primes 2654435761 (as int32), 805459861
        idx = tl.where(hashed != 0, hashv, tiled) & wmask
        return idx, w

    @triton.jit
    def _setup(
        u_ptr,
        t_ptr,
        rows,
        rmask,
        lvl,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        time_max,
        grid_entries,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
    ):  # pragma: no cover - jit
        u0 = tl.load(u_ptr + rows * 3 + 0, mask=rmask, other=-1.0)
        u1 = tl.load(u_ptr + rows * 3 + 1, mask=rmask, other=-1.0)
        u2 = tl.load(u_ptr + rows * 3 + 2, mask=rmask, other=-1.0)
        inside = rmask & (u0 >= 0) & (u0 <= 1) & (u1 >= 0) & (u1 <= 1) & (u2 >= 0) & (u2 <= 1)
        scale = tl.load(scale_ptr + lvl)
        s1 = tl.load(stride_ptr + lvl * 3 + 1)
        s2 = tl.load(stride_ptr + lvl * 3 + 2)
        wmask = tl.load(wmask_ptr + lvl)
        start = tl.load(start_ptr + lvl)
        hashed = tl.load(hashed_ptr + lvl)
        p0 = u0 * scale + 0.5
        p1 = u1 * scale + 0.5
        p2 = u2 * scale + 0.5
        g0 = tl.floor(p0)
        g1 = tl.floor(p1)
        g2 = tl.floor(p2)
        f0 = p0 - g0
        f1 = p1 - g1
        f2 = p2 - g2
        if SMOOTH:
            f0 = f0 * f0 * (3.0 - 2.0 * f0)
            f1 = f1 * f1 * (3.0 - 2.0 * f1)
            f2 = f2 * f2 * (3.0 - 2.0 * f2)
        i0 = g0.to(tl.int32)
        i1 = g1.to(tl.int32)
        i2 = g2.to(tl.int32)
        if HAS_TIME:
            tt = tl.load(t_ptr + rows, mask=rmask, other=0.0)
            gt = tt * time_max
            lo = tl.floor(gt)
            w_hi = gt - lo
            lo_i = lo.to(tl.int32)
            hi_i = tl.ceil(gt).to(tl.int32)
            base_lo = lo_i * grid_entries + start
            base_hi = hi_i * grid_entries + start
            has_hi = inside & (hi_i != lo_i)
        else:
            w_hi = tl.zeros_like(u0)
            base_lo = tl.zeros_like(i0) + start
            base_hi = base_lo
            has_hi = inside  # unused without time
        return inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi

    @triton.jit
    def _grid_fwd_kernel(
        u_ptr,
        t_ptr,
        emb_ptr,
        out_ptr,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        N,
        out_stride,
        time_max,
        grid_entries,
        C: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
    ):  # pragma: no cover - jit
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr,
            t_ptr,
            rows,
            rmask,
            lvl,
            scale_ptr,
            stride_ptr,
            wmask_ptr,
            start_ptr,
            hashed_ptr,
            time_max,
            grid_entries,
            HAS_TIME,
            SMOOTH,
        )
        ch = tl.arange(0, C)
        m_lo = inside[:, None] & (ch[None, :] < C)
        m_hi = has_hi[:, None] & (ch[None, :] < C)
        acc = tl.zeros([BLOCK, C], dtype=tl.float32)
        for k in tl.static_range(8):
            idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
            v = tl.load(emb_ptr + (base_lo + idx)[:, None] * C + ch[None, :], mask=m_lo, other=0.0).to(
                tl.float32
            )
            if HAS_TIME:
                vh = tl.load(emb_ptr + (base_hi + idx)[:, None] * C + ch[None, :], mask=m_hi, other=0.0)
                v = vh.to(tl.float32) * w_hi[:, None] + v * (1.0 - w_hi)[:, None]
            acc += w[:, None] * v
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * C + ch[None, :]
        tl.store(out_ptrs, acc, mask=rmask[:, None] & (ch[None, :] < C))

    @triton.jit
    def _gather_build_kernel(
        table_ptr,
        out_ptr,
        lo_ptr,
        hi_ptr,
        a_ptr,
        size_ptr,
        wmask_ptr,
        start_ptr,
        stride_ptr,
        grid_entries,
        QUAD: tl.constexpr,
        BLEND: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # pragma: no cover - jit
        """The forward's gather tables, per level and grid (program axis 2).

        Pairs ``P[r] = (T[r], T[nx(r)])`` or, with ``QUAD``, ``Q[r] = (T[r], T[nx(r)], T[ny(r)],
        T[nx(ny(r))])`` (a cell face in one 32-byte L2 sector), ``nx(r) = (r+1) & m``, ``ny(r) = (r+s1) & m``
        within the level; rows past an unwrapped level's end repeat ``r`` (never read). With ``BLEND``,
        output grid ``k`` is the blend ``a_k·T[hi_k] + (1 − a_k)·T[lo_k]`` (the kernels' time interpolation).
        """
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        k = tl.program_id(2)
        size = tl.load(size_ptr + lvl)
        wm = tl.load(wmask_ptr + lvl)
        start = tl.load(start_ptr + lvl)
        s1 = tl.load(stride_ptr + lvl * 3 + 1)
        dst = k * grid_entries + start
        if BLEND:
            a = tl.load(a_ptr + k)
            src_lo = tl.load(lo_ptr + k) * grid_entries + start
            src_hi = tl.load(hi_ptr + k) * grid_entries + start
        else:
            a = 0.0
            src_lo = dst
            src_hi = dst
        r = pid * BLOCK + tl.arange(0, BLOCK)
        m = r < size
        nx = (r + 1) & wm
        nx = tl.where(nx < size, nx, r)
        ny = (r + s1) & wm
        ny = tl.where(ny < size, ny, r)
        nxy = (ny + 1) & wm
        nxy = tl.where(nxy < size, nxy, r)
        c2 = tl.arange(0, 2)
        m2 = tl.broadcast_to(m[:, None], [BLOCK, 2])
        width = 8 if QUAD else 4
        for j in tl.static_range(4 if QUAD else 2):
            if j == 0:
                rr = r
            elif j == 1:
                rr = nx
            elif j == 2:
                rr = ny
            else:
                rr = nxy
            v = tl.load(table_ptr + (src_lo + rr)[:, None] * 2 + c2[None, :], mask=m2, other=0.0)
            if BLEND:
                vh = tl.load(table_ptr + (src_hi + rr)[:, None] * 2 + c2[None, :], mask=m2, other=0.0)
                v = vh * a + v * (1.0 - a)
            tl.store(out_ptr + (dst + r)[:, None] * width + 2 * j + c2[None, :], v, mask=m2)

    @triton.jit
    def _fwd_quad_level(
        u_ptr,
        t_ptr,
        quad_ptr,
        out_ptr,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        rows,
        rmask,
        lvl,
        out_stride,
        time_max,
        grid_entries,
        BLOCK: tl.constexpr,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
    ):  # pragma: no cover - jit
        """One level from the quad table (tiled levels only): two 32-byte rows per point (z and z+1)."""
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            time_max, grid_entries, HAS_TIME, SMOOTH,
        )  # fmt: skip
        c8 = tl.arange(0, 8)
        c2 = tl.arange(0, 2)
        m8 = tl.broadcast_to(inside[:, None], [BLOCK, 8])
        m8h = tl.broadcast_to(has_hi[:, None], [BLOCK, 8])
        acc8 = tl.zeros([BLOCK, 8], dtype=tl.float32)
        for z in tl.static_range(2):
            ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z)
            ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 1)
            ic, wc = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 2)
            idd, wd = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 3)
            v = tl.load(quad_ptr + (base_lo + ia)[:, None] * 8 + c8[None, :], mask=m8, other=0.0)
            if HAS_TIME:
                vh = tl.load(quad_ptr + (base_hi + ia)[:, None] * 8 + c8[None, :], mask=m8h, other=0.0)
                v = vh * w_hi[:, None] + v * (1.0 - w_hi)[:, None]
            w8 = tl.where(
                c8[None, :] < 2,
                wa[:, None],
                tl.where(c8[None, :] < 4, wb[:, None], tl.where(c8[None, :] < 6, wc[:, None], wd[:, None])),
            )
            acc8 += w8 * v
        acc = tl.sum(tl.reshape(acc8, [BLOCK, 4, 2]), axis=1)
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * 2 + c2[None, :]
        tl.store(out_ptrs, acc, mask=tl.broadcast_to(rmask[:, None], [BLOCK, 2]))

    @triton.jit
    def _slot_scatter_kernel(
        acc_ptr,
        grad_ptr,
        lo_ptr,
        hi_ptr,
        a_ptr,
        K,
        size_ptr,
        wmask_ptr,
        start_ptr,
        grid_entries,
        PAIRED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # pragma: no cover - jit
        """Table gradient of grid ``g`` from the slot buffer: ``dW_g[r] = Σ_k w_gk·dB_k[r]`` with
        ``w_gk = (1 − a_k)·[lo_k = g] + a_k·[hi_k = g]`` and ``dB_k[r] = G_k[r, 0:2] + G_k[prev(r), 2:4]``
        (``PAIRED``; else ``acc`` is ``[K·E, 2]``). Writes every row of every grid, so no memset is needed."""
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        g = tl.program_id(2)
        size = tl.load(size_ptr + lvl)
        wm = tl.load(wmask_ptr + lvl)
        start = tl.load(start_ptr + lvl)
        r = pid * BLOCK + tl.arange(0, BLOCK)
        m = r < size
        prev = (r - 1) & wm
        pv = m & (prev < size)
        c2 = tl.arange(0, 2)
        m2 = tl.broadcast_to(m[:, None], [BLOCK, 2])
        pv2 = tl.broadcast_to(pv[:, None], [BLOCK, 2])
        total = tl.zeros([BLOCK, 2], dtype=tl.float32)
        for k in range(0, K):
            a = tl.load(a_ptr + k)
            w = tl.where(tl.load(lo_ptr + k) == g, 1.0 - a, 0.0) + tl.where(tl.load(hi_ptr + k) == g, a, 0.0)
            if w != 0.0:
                base = k * grid_entries + start
                if PAIRED:
                    own = tl.load(acc_ptr + (base + r)[:, None] * 4 + c2[None, :], mask=m2, other=0.0)
                    car = tl.load(acc_ptr + (base + prev)[:, None] * 4 + 2 + c2[None, :], mask=pv2, other=0.0)
                    total += w * (own + car)
                else:
                    own = tl.load(acc_ptr + (base + r)[:, None] * 2 + c2[None, :], mask=m2, other=0.0)
                    total += w * own
        tl.store(grad_ptr + (g * grid_entries + start + r)[:, None] * 2 + c2[None, :], total, mask=m2)

    @triton.jit
    def _pair_fold_kernel(
        g4_ptr, grad_ptr, size_ptr, wmask_ptr, start_ptr, grid_entries, BLOCK: tl.constexpr
    ):  # pragma: no cover - jit
        """``dT[r] = G[r, 0:2] + G[prev(r), 2:4]`` (the inverse of the pair gather)."""
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        tg = tl.program_id(2)
        size = tl.load(size_ptr + lvl)
        wm = tl.load(wmask_ptr + lvl)
        base = tg * grid_entries + tl.load(start_ptr + lvl)
        r = pid * BLOCK + tl.arange(0, BLOCK)
        m = r < size
        prev = (r - 1) & wm  # unwrapped level, r = 0: 0x7FFFFFFF >= size, no predecessor
        pv = m & (prev < size)
        c2 = tl.arange(0, 2)
        m2 = tl.broadcast_to(m[:, None], [BLOCK, 2])
        own = tl.load(g4_ptr + (base + r)[:, None] * 4 + c2[None, :], mask=m2, other=0.0)
        car = tl.load(
            g4_ptr + (base + prev)[:, None] * 4 + 2 + c2[None, :],
            mask=tl.broadcast_to(pv[:, None], [BLOCK, 2]),
            other=0.0,
        )
        tl.store(grad_ptr + (base + r)[:, None] * 2 + c2[None, :], own + car, mask=m2)

    @triton.jit
    def _fwd_pair_level(
        u_ptr,
        t_ptr,
        pair_ptr,
        out_ptr,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        rows,
        rmask,
        lvl,
        out_stride,
        time_max,
        grid_entries,
        BLOCK: tl.constexpr,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
    ):  # pragma: no cover - jit
        """One level of a block of points from the pair table (corners ``k``, ``k+1`` in one load)."""
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            time_max, grid_entries, HAS_TIME, SMOOTH,
        )  # fmt: skip
        c4 = tl.arange(0, 4)
        c2 = tl.arange(0, 2)
        first = c4[None, :] < 2
        m4 = tl.broadcast_to(inside[:, None], [BLOCK, 4])
        m4h = tl.broadcast_to(has_hi[:, None], [BLOCK, 4])
        acc4 = tl.zeros([BLOCK, 4], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK, 2], dtype=tl.float32)
        for k in tl.static_range(0, 8, 2):
            ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
            ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k + 1)
            pair = ib == ((ia + 1) & wmask)
            single = inside & (pair == 0)
            v = tl.load(pair_ptr + (base_lo + ia)[:, None] * 4 + c4[None, :], mask=m4, other=0.0)
            ms = tl.broadcast_to(single[:, None], [BLOCK, 2])
            vs = tl.load(pair_ptr + (base_lo + ib)[:, None] * 4 + c2[None, :], mask=ms, other=0.0)
            if HAS_TIME:
                vh = tl.load(pair_ptr + (base_hi + ia)[:, None] * 4 + c4[None, :], mask=m4h, other=0.0)
                v = vh * w_hi[:, None] + v * (1.0 - w_hi)[:, None]
                msh = tl.broadcast_to((has_hi & (pair == 0))[:, None], [BLOCK, 2])
                vsh = tl.load(pair_ptr + (base_hi + ib)[:, None] * 4 + c2[None, :], mask=msh, other=0.0)
                vs = vsh * w_hi[:, None] + vs * (1.0 - w_hi)[:, None]
            w4 = tl.where(first, wa[:, None], tl.where(pair, wb, 0.0)[:, None])
            acc4 += w4 * v
            acc2 += tl.where(pair, 0.0, wb)[:, None] * vs
        acc = tl.sum(tl.reshape(acc4, [BLOCK, 2, 2]), axis=1) + acc2
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * 2 + c2[None, :]
        tl.store(out_ptrs, acc, mask=tl.broadcast_to(rmask[:, None], [BLOCK, 2]))

    @triton.jit
    def _grid_fwd_pair_kernel(
        u_ptr,
        t_ptr,
        pair_ptr,
        out_ptr,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        N,
        out_stride,
        time_max,
        grid_entries,
        n_active,
        BLOCK: tl.constexpr,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
        ORDER: tl.constexpr,
        QUAD: tl.constexpr = False,
    ):  # pragma: no cover - jit
        """Forward from the pair table (or, with ``QUAD``, the quad table). ``ORDER``: 0 programs
        (block, level) with blocks fastest, 1 levels fastest, 2 one program per block looping over the
        levels."""
        if ORDER == 1:
            lvl = tl.program_id(0)
            pid = tl.program_id(1)
        else:
            pid = tl.program_id(0)
            lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        if ORDER == 2:
            for level in range(0, n_active):
                if QUAD:
                    _fwd_quad_level(
                        u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr,
                        hashed_ptr, rows, rmask, level, out_stride, time_max, grid_entries, BLOCK, HAS_TIME,
                        SMOOTH,
                    )  # fmt: skip
                else:
                    _fwd_pair_level(
                        u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr,
                        hashed_ptr, rows, rmask, level, out_stride, time_max, grid_entries, BLOCK, HAS_TIME,
                        SMOOTH,
                    )  # fmt: skip
        elif QUAD:
            _fwd_quad_level(
                u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
                rows, rmask, lvl, out_stride, time_max, grid_entries, BLOCK, HAS_TIME, SMOOTH,
            )  # fmt: skip
        else:
            _fwd_pair_level(
                u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
                rows, rmask, lvl, out_stride, time_max, grid_entries, BLOCK, HAS_TIME, SMOOTH,
            )  # fmt: skip

    @triton.jit
    def _pair_reduce(
        g4_ptr,
        ra,
        rb,
        pair,
        single,
        wa,
        wb,
        g0,
        g1,
        BLOCK: tl.constexpr,
        ASM4: tl.constexpr,
        USE_ASM: tl.constexpr,
    ):  # pragma: no cover - jit
        """Add corner gradients into the pair-layout buffer: ``G[ra] += (wa·g, wb·g)`` for a pair,
        else ``G[ra, 0:2] += wa·g`` and ``G[rb, 0:2] += wb·g``."""
        if USE_ASM:
            tl.inline_asm_elementwise(
                asm=ASM4,
                constraints="=r,l,l,f,f,f,f,r,r",
                args=[
                    (g4_ptr + ra * 4).to(tl.int64), (g4_ptr + rb * 4).to(tl.int64),
                    wa * g0, wa * g1, wb * g0, wb * g1, pair.to(tl.int32), single.to(tl.int32),
                ],
                dtype=tl.int32,
                is_pure=False,
                pack=1,
            )  # fmt: skip
        else:
            c4 = tl.arange(0, 4)
            c2 = tl.arange(0, 2)
            g4 = tl.where((c4 % 2)[None, :] == 0, g0[:, None], g1[:, None])
            w4 = tl.where(c4[None, :] < 2, wa[:, None], tl.where(pair, wb, 0.0)[:, None])
            tl.atomic_add(
                g4_ptr + ra[:, None] * 4 + c4[None, :],
                w4 * g4,
                mask=tl.broadcast_to((pair | single)[:, None], [BLOCK, 4]),
                sem="relaxed",
            )
            g2 = tl.where(c2[None, :] == 0, g0[:, None], g1[:, None])
            tl.atomic_add(
                g4_ptr + rb[:, None] * 4 + c2[None, :],
                wb[:, None] * g2,
                mask=tl.broadcast_to(single[:, None], [BLOCK, 2]),
                sem="relaxed",
            )

    @triton.jit
    def _grid_bwd_kernel(
        u_ptr,
        t_ptr,
        gout_ptr,
        gemb_ptr,
        scale_ptr,
        stride_ptr,
        wmask_ptr,
        start_ptr,
        hashed_ptr,
        N,
        gout_stride,
        time_max,
        grid_entries,
        C: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr,
        VEC2: tl.constexpr,
        ASM: tl.constexpr,
        LEVEL_FAST: tl.constexpr,
        PAIR: tl.constexpr = False,
        ASM4: tl.constexpr = "",
    ):  # pragma: no cover - jit
        if LEVEL_FAST:
            # level is the fastest-varying program id: programs in flight spread their atomics over
            # all levels' tables instead of hammering one small coarse table at a time
            lvl = tl.program_id(0)
            pid = tl.program_id(1)
        else:
            pid = tl.program_id(0)
            lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr,
            t_ptr,
            rows,
            rmask,
            lvl,
            scale_ptr,
            stride_ptr,
            wmask_ptr,
            start_ptr,
            hashed_ptr,
            time_max,
            grid_entries,
            HAS_TIME,
            SMOOTH,
        )
        ch = tl.arange(0, C)
        m_lo = inside[:, None] & (ch[None, :] < C)
        m_hi = has_hi[:, None] & (ch[None, :] < C)
        go = tl.load(gout_ptr + rows[:, None] * gout_stride + lvl * C + ch[None, :], mask=m_lo, other=0.0)
        go = go.to(tl.float32)
        if HAS_TIME:
            go_lo = go * (1.0 - w_hi)[:, None]
            go_hi = go * w_hi[:, None]
        else:
            go_lo = go
            go_hi = go
        if PAIR:
            # gemb_ptr is the pair-layout buffer G [rows, 4]; folded into dT afterwards
            g_lo0 = tl.sum(tl.where(ch[None, :] == 0, go_lo, 0.0), axis=1)
            g_lo1 = tl.sum(tl.where(ch[None, :] == 1, go_lo, 0.0), axis=1)
            g_hi0 = tl.sum(tl.where(ch[None, :] == 0, go_hi, 0.0), axis=1)
            g_hi1 = tl.sum(tl.where(ch[None, :] == 1, go_hi, 0.0), axis=1)
            for k in tl.static_range(0, 8, 2):
                ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k + 1)
                pair = ib == ((ia + 1) & wmask)
                _pair_reduce(
                    gemb_ptr, base_lo + ia, base_lo + ib, inside & pair, inside & (pair == 0),
                    wa, wb, g_lo0, g_lo1, BLOCK, ASM4, VEC2,
                )  # fmt: skip
                if HAS_TIME:
                    _pair_reduce(
                        gemb_ptr, base_hi + ia, base_hi + ib, has_hi & pair, has_hi & (pair == 0),
                        wa, wb, g_hi0, g_hi1, BLOCK, ASM4, VEC2,
                    )  # fmt: skip
        elif VEC2:
            # One 8-byte vector reduction per corner instead of two scalar atomics (sm_90+): the
            # backward is bound by the L2 atomic rate, so halving the atomic count nearly halves it.
            g_lo0 = tl.sum(tl.where(ch[None, :] == 0, go_lo, 0.0), axis=1)
            g_lo1 = tl.sum(tl.where(ch[None, :] == 1, go_lo, 0.0), axis=1)
            g_hi0 = tl.sum(tl.where(ch[None, :] == 0, go_hi, 0.0), axis=1)
            g_hi1 = tl.sum(tl.where(ch[None, :] == 1, go_hi, 0.0), axis=1)
            in_lo = inside.to(tl.int32)
            in_hi = has_hi.to(tl.int32)
            for k in tl.static_range(8):
                idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                tl.inline_asm_elementwise(
                    asm=ASM,
                    constraints="=r,l,f,f,r",
                    args=[(gemb_ptr + (base_lo + idx) * 2).to(tl.int64), w * g_lo0, w * g_lo1, in_lo],
                    dtype=tl.int32,
                    is_pure=False,
                    pack=1,
                )
                if HAS_TIME:
                    tl.inline_asm_elementwise(
                        asm=ASM,
                        constraints="=r,l,f,f,r",
                        args=[(gemb_ptr + (base_hi + idx) * 2).to(tl.int64), w * g_hi0, w * g_hi1, in_hi],
                        dtype=tl.int32,
                        is_pure=False,
                        pack=1,
                    )
        else:
            for k in tl.static_range(8):
                idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                tl.atomic_add(
                    gemb_ptr + (base_lo + idx)[:, None] * C + ch[None, :],
                    w[:, None] * go_lo,
                    mask=m_lo,
                    sem="relaxed",
                )
                if HAS_TIME:
                    tl.atomic_add(
                        gemb_ptr + (base_hi + idx)[:, None] * C + ch[None, :],
                        w[:, None] * go_hi,
                        mask=m_hi,
                        sem="relaxed",
                    )


def _pair_fwd_launch(n: int, n_active: int, block: int) -> tuple[int, tuple[int, ...]]:
    """``ORDER`` and launch grid of ``_grid_fwd_pair_kernel`` (``FWD_ORDER``; grid y is capped at 65535)."""
    order = {"block": 0, "level": 1, "all": 2}[FWD_ORDER]
    nb = triton.cdiv(n, block)
    if order == 1 and nb > 65535:
        order = 0
    return order, {0: (nb, n_active), 1: (n_active, nb), 2: (nb,)}[order]


def _bwd_launch(n: int, n_active: int, block: int) -> tuple[bool, tuple[int, int]]:
    """``LEVEL_FAST`` and launch grid of ``_grid_bwd_kernel`` (grid y is capped at 65535)."""
    nb = triton.cdiv(n, block)
    lf = BWD_LEVEL_FAST and nb <= 65535
    return lf, ((n_active, nb) if lf else (nb, n_active))


def _table_grid(bufs: _LevelBuffers, grids: int) -> tuple[int, int, int]:
    """Launch grid of the per-row table kernels: (row blocks of the largest level, levels, grids)."""
    return (triton.cdiv(bufs.max_size, BUILD_BLOCK), bufs.sizes.numel(), grids)


def _launch_args(bufs: _LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32, bufs.hashed32)


def _level_args(bufs: _LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.sizes32, bufs.wrap_masks, bufs.starts32)


def pairs_supported(table: Tensor, level_dim: int, bufs: _LevelBuffers) -> bool:
    """The pair layout is used for 2-feature fp32 tiled tables (the paper's grid) when ``PAIRS`` is on.

    Not for grids with hashed levels: hashed x-neighbours are rarely adjacent rows, and the measured
    forward and backward were slower with it (BENCHMARKS.md).
    """
    return (
        PAIRS
        and level_dim == 2
        and not bufs.any_hashed
        and table.dtype == torch.float32
        and table.numel() * 2 < 2**31
    )


def _build_gather(
    table: Tensor, bufs: _LevelBuffers, grids: int, entries_per_grid: int, quad: bool,
    blend: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:  # fmt: skip
    """Run :func:`_gather_build_kernel` over ``grids`` output grids (``blend``: ``(lo, hi, a)`` per grid)."""
    out = torch.empty(grids * entries_per_grid if blend is not None else table.shape[0], 8 if quad else 4,
                      device=table.device, dtype=torch.float32)  # fmt: skip
    grid = _table_grid(bufs, grids)
    if blend is None:
        lo = hi = bufs.sizes32  # unused
        a = table
    else:
        lo, hi, a = blend[0].to(torch.int32), blend[1].to(torch.int32), blend[2].float().contiguous()
    with torch.no_grad():
        _gather_build_kernel[grid](
            table.detach().contiguous(), out, lo, hi, a, *_level_args(bufs), bufs.strides32, entries_per_grid,
            QUAD=quad, BLEND=blend is not None, BLOCK=BUILD_BLOCK,
        )  # fmt: skip
    return out


def build_pair_table(
    table: Tensor, bufs: _LevelBuffers, time_grid_size: int, entries_per_grid: int
) -> Tensor:
    """The forward's gather table: ``[rows, 8]`` quads for a static table when ``QUADS`` is on, else
    ``[rows, 4]`` pairs ``P[r] = (T[r], T[next(r)])``, ``next(r) = (r+1) & wrap_mask`` within a level."""
    quad = QUADS and time_grid_size <= 1
    return _build_gather(table, bufs, max(time_grid_size, 1), entries_per_grid, quad)


def fold_pair_grad(g4: Tensor, bufs: _LevelBuffers, time_grid_size: int, entries_per_grid: int) -> Tensor:
    """Table gradient ``[rows, 2]`` from a pair-layout gradient ``G [rows, 4]``."""
    grad = torch.empty(g4.shape[0], 2, device=g4.device, dtype=torch.float32)
    grid = _table_grid(bufs, max(time_grid_size, 1))
    _pair_fold_kernel[grid](g4, grad, *_level_args(bufs), entries_per_grid, BLOCK=BUILD_BLOCK)
    return grad


def _bwd_pairs(table_shape: torch.Size, device: torch.device) -> bool:
    """Accumulate the backward in the pair layout: needs vector reductions (sm_90+) or the interpreter."""
    if table_shape[0] > BWD_PAIRS_MAX_ROWS or table_shape[0] * 4 >= 2**31:
        return False
    return interpreter_enabled() or _vec2_atomics_enabled(device)


class _GridEncodeFn(torch.autograd.Function):
    """Autograd wrapper: ``(u [N,3], table [E,C], t [N] | None) -> [N, L·C]``; grad only for ``table``.

    With ``pairs`` (the pair table of ``table``) the forward reads x-neighbour corner pairs with one
    16-byte load, and the backward (see :func:`_bwd_pairs`) accumulates into a ``[rows, 4]`` buffer that
    is folded into the ``[rows, 2]`` table gradient.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx,
        u: Tensor,
        table: Tensor,
        t: Tensor | None,
        pairs: Tensor | None,
        pair_layout: bool,
        bufs: _LevelBuffers,
        n_active: int,
        num_levels: int,
        level_dim: int,
        smooth: bool,
        time_grid_size: int,
        time_max: float,
        entries_per_grid: int,
        block: int | None,
        warps: int | None,
        bwd_block: int | None,
        bwd_warps: int | None,
    ) -> Tensor:
        n = u.shape[0]
        u = u.contiguous()
        table = table.contiguous()
        has_time = t is not None
        t_arg = t.contiguous() if has_time else u  # dummy pointer when unused
        alloc = torch.empty if n_active == num_levels else torch.zeros
        out = alloc(n, num_levels * level_dim, device=u.device, dtype=torch.float32)
        if pairs is not None:
            block, warps = block or PAIR_FWD_BLOCK, warps or PAIR_FWD_WARPS
        else:
            block, warps = block or FWD_BLOCK, warps or FWD_WARPS
        if pair_layout:
            bwd_block, bwd_warps = bwd_block or PAIR_BWD_BLOCK, bwd_warps or PAIR_BWD_WARPS
        else:
            bwd_block, bwd_warps = bwd_block or BWD_BLOCK, bwd_warps or BWD_WARPS
        grid = (triton.cdiv(n, block), n_active)
        if pairs is not None:
            order, pgrid = _pair_fwd_launch(n, n_active, block)
            _grid_fwd_pair_kernel[pgrid](
                u, t_arg, pairs, out, *_launch_args(bufs), n, out.stride(0), time_max, entries_per_grid,
                n_active, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth, ORDER=order, QUAD=pairs.shape[1] == 8,
                num_warps=warps,
            )  # fmt: skip
        else:
            _grid_fwd_kernel[grid](
                u, t_arg, table, out, *_launch_args(bufs), n, out.stride(0), time_max, entries_per_grid,
                C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth, num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(u, t_arg)
        ctx.meta = (bufs, n_active, level_dim, smooth, time_grid_size, time_max, entries_per_grid, has_time)
        ctx.bwd_launch = (bwd_block, bwd_warps)
        ctx.table_shape = table.shape
        ctx.table_dtype = table.dtype
        ctx.pair_layout = pair_layout
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        u, t_arg = ctx.saved_tensors
        bufs, n_active, level_dim, smooth, time_grid_size, time_max, entries_per_grid, has_time = ctx.meta
        n = u.shape[0]
        if not ctx.needs_input_grad[1] or n == 0:
            grad_table = torch.zeros(ctx.table_shape, device=u.device, dtype=torch.float32)
            return (None, grad_table.to(ctx.table_dtype)) + (None,) * 15
        grad_out = grad_out.contiguous()
        block, warps = ctx.bwd_launch
        lf, grid = _bwd_launch(n, n_active, block)
        # Inline-asm reductions run once per thread that holds an element: with fewer points than
        # threads (BLOCK < 32·warps) Triton replicates elements and each reduction would run twice.
        asm_ok = block >= 32 * warps
        use_pairs = ctx.pair_layout and asm_ok and _bwd_pairs(ctx.table_shape, u.device)
        vec2 = level_dim == 2 and asm_ok and _vec2_atomics_enabled(u.device)
        for attempt in (0, 1):
            rows = ctx.table_shape[0]
            acc = torch.zeros(rows, 4 if use_pairs else level_dim, device=u.device, dtype=torch.float32)
            args = (
                u, t_arg, grad_out, acc, *_launch_args(bufs),
                n, grad_out.stride(0), time_max, entries_per_grid,
            )  # fmt: skip
            try:
                _grid_bwd_kernel[grid](
                    *args, C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth,
                    VEC2=vec2, ASM=VEC2_ASM, LEVEL_FAST=lf, PAIR=use_pairs, ASM4=PAIR_ASM, num_warps=warps,
                )  # fmt: skip
                break
            except Exception as err:  # pragma: no cover - GPU/toolchain specific
                if attempt or not vec2:
                    raise
                _disable_vec2(err)
                vec2 = False
                use_pairs = use_pairs and interpreter_enabled()
        if use_pairs:
            acc = fold_pair_grad(acc, bufs, max(time_grid_size, 1), entries_per_grid)
        return (None, acc.view(ctx.table_shape).to(ctx.table_dtype)) + (None,) * 15


class _SlotEncodeFn(torch.autograd.Function):
    """Clip points with few distinct times (``TimeGridEncoding._encode_slots``).

    ``(u [N,3], W [T·E, 2], P, slot [N], lo/hi/a [K]) -> [N, L·2]``: the forward reads one grid per point
    from the blended pair table ``P`` (one table per slot, :func:`build_slot_pairs`); the backward
    accumulates into the ``[K·E, 4]`` pair-layout buffer and one kernel folds it and writes
    ``dW_g = Σ_k ((1 − a_k)·[lo_k = g] + a_k·[hi_k = g])·dB_k`` for every grid (``_slot_scatter_kernel``).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx,
        u,
        table,
        pairs,
        slot,
        lo,
        hi,
        a,
        bufs,
        n_active,
        num_levels,
        smooth,
        time_grid_size,
        entries_per_grid,
    ):
        n = u.shape[0]
        u = u.contiguous()
        slot_f = slot.float().contiguous()
        alloc = torch.empty if n_active == num_levels else torch.zeros
        out = alloc(n, num_levels * 2, device=u.device, dtype=torch.float32)
        block, warps = PAIR_FWD_BLOCK, PAIR_FWD_WARPS
        order, pgrid = _pair_fwd_launch(n, n_active, block)
        _grid_fwd_pair_kernel[pgrid](
            u, slot_f, pairs, out, *_launch_args(bufs), n, out.stride(0), 1.0, entries_per_grid,
            n_active, BLOCK=block, HAS_TIME=True, SMOOTH=smooth, ORDER=order, QUAD=pairs.shape[1] == 8,
            num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(u, slot_f, lo.to(torch.int32), hi.to(torch.int32), a.float().contiguous())
        ctx.meta = (bufs, n_active, smooth, time_grid_size, entries_per_grid)
        ctx.table_shape = table.shape
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):  # type: ignore[override]
        u, slot_f, lo, hi, a = ctx.saved_tensors
        bufs, n_active, smooth, time_grid_size, entries_per_grid = ctx.meta
        n, k = u.shape[0], lo.numel()
        grad_out = grad_out.contiguous()
        block, warps = PAIR_BWD_BLOCK, PAIR_BWD_WARPS
        lf, grid = _bwd_launch(n, n_active, block)
        rows = k * entries_per_grid
        use_pairs = _bwd_pairs(torch.Size([rows, 2]), u.device)
        vec2 = _vec2_atomics_enabled(u.device)
        acc = torch.zeros(rows, 4 if use_pairs else 2, device=u.device, dtype=torch.float32)
        _grid_bwd_kernel[grid](
            u, slot_f, grad_out, acc, *_launch_args(bufs), n, grad_out.stride(0), 1.0, entries_per_grid,
            C=2, BLOCK=block, HAS_TIME=True, SMOOTH=smooth, VEC2=vec2, ASM=VEC2_ASM, LEVEL_FAST=lf,
            PAIR=use_pairs, ASM4=PAIR_ASM, num_warps=warps,
        )  # fmt: skip
        grad = torch.empty(time_grid_size * entries_per_grid, 2, device=u.device, dtype=torch.float32)
        sgrid = _table_grid(bufs, time_grid_size)
        _slot_scatter_kernel[sgrid](
            acc, grad, lo, hi, a, k, *_level_args(bufs), entries_per_grid, PAIRED=use_pairs, BLOCK=BUILD_BLOCK
        )
        return (None, grad.view(ctx.table_shape)) + (None,) * 11


def build_slot_pairs(
    table: Tensor, lo: Tensor, hi: Tensor, a: Tensor, bufs: _LevelBuffers, entries_per_grid: int
) -> Tensor:
    """Blended gather table of ``K`` slots, ``[K·E, 4]`` pairs (``[K·E, 8]`` quads with ``SLOT_QUADS``)."""
    return _build_gather(table, bufs, lo.numel(), entries_per_grid, SLOT_QUADS, blend=(lo, hi, a))


def encode_slots(
    u: Tensor,
    table: Tensor,
    pairs: Tensor,
    slot: Tensor,
    lo: Tensor,
    hi: Tensor,
    a: Tensor,
    bufs: _LevelBuffers,
    n_active: int,
    num_levels: int,
    interpolation: str,
    time_grid_size: int,
    entries_per_grid: int,
) -> Tensor:
    """Encode points whose time is one of ``K`` slots: ``slot [N]`` int, slot ``k`` at grid position
    ``lo_k + a_k`` (``hi_k = ⌈·⌉``), ``pairs`` from :func:`build_slot_pairs` of the same ``table``. Same
    values as :func:`grid_encode` with ``t``; see ``_SlotEncodeFn``."""
    return _SlotEncodeFn.apply(
        u.float(), table, pairs, slot, lo, hi, a, bufs, n_active, num_levels, interpolation == "smoothstep",
        time_grid_size, entries_per_grid,
    )  # fmt: skip


def grid_encode(
    u: Tensor,
    table: Tensor,
    bufs: _LevelBuffers,
    n_active: int,
    num_levels: int,
    level_dim: int,
    interpolation: str = "linear",
    t: Tensor | None = None,
    time_grid_size: int = 1,
    entries_per_grid: int = 0,
    block: int | None = None,
    warps: int | None = None,
    bwd_block: int | None = None,
    bwd_warps: int | None = None,
    gather_tables: GatherTables | None = None,
    time_scale: float | None = None,
) -> Tensor:
    """Encode unit-cube points ``u [N,3]`` with ``table [E,C]`` (or stacked ``[T·E, C]`` with ``t [N]``).

    Returns ``[N, num_levels·C]`` float32; levels ``>= n_active`` are zero. ``block``/``warps`` override
    the launch configuration (benchmarks). ``gather_tables`` enables the pair layout (module docstring);
    without one the plain kernels run. ``time_scale`` replaces ``T − 1`` as the factor from ``t`` to the
    grid coordinate (1.0 with integer ``t`` selects whole grids: the blended-slot path of
    ``TimeGridEncoding``).
    """
    if not HAS_TRITON:  # pragma: no cover - depends on the environment
        raise RuntimeError("triton is not installed")
    if table.numel() >= 2**31:
        raise ValueError(f"table of {table.numel()} values exceeds the int32 index range of the kernels")
    if level_dim & (level_dim - 1):
        raise ValueError(f"level_dim must be a power of two for the Triton kernels, got {level_dim}")
    u = u.float()
    tt = t.float().reshape(-1) if t is not None else None
    # Pair-layout backward whenever supported; the gather table only for static tables: a 64-grid
    # table's would be 1 GB, rebuilt per call (0.7-1.2 ms), slower than the plain forward it replaces
    # (clips take TimeGridEncoding's slot path instead).
    pair_layout = gather_tables is not None and pairs_supported(table, level_dim, bufs)
    pairs = gather_tables.get(table, bufs, 1, entries_per_grid) if pair_layout and t is None else None
    tmax = float(max(time_grid_size - 1, 0)) if time_scale is None else float(time_scale)
    out = _GridEncodeFn.apply(
        u, table, tt, pairs, pair_layout, bufs, n_active, num_levels, level_dim, interpolation == "smoothstep",
        time_grid_size, tmax, entries_per_grid, block, warps, bwd_block, bwd_warps,
    )  # fmt: skip
    return out
