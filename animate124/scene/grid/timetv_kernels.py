"""Triton kernels of the fused points-form time TV (issue 26); launched by :mod:`.timetv`.

``L = k/N · Σ_x Σ_{i=0}^{T-2} ‖f_i(x) − f_{i+1}(x)‖²`` with ``k = 1/((T−1)·L)`` (SPEC 3.6). All ``T`` time
grids share one level layout, so a point's cell, corner rows and weights at a level are the same in every
grid; only the grid's slice of the stacked table ``[T·E, 2]`` differs. One program per (level, block of
points) therefore computes the cell once and sweeps the ``T`` grids, with the features of the previous grid
(and, in backward, of the next) in registers:

* forward (``_tv_fwd_kernel``): ``Σ_x Σ_i ‖f_i − f_{i+1}‖²`` of its block and level, one fp32 partial sum per
  program, written (not added) to its own slot; the launch sums the slots in a fixed order, so the loss is
  deterministic;
* backward (``_tv_bwd_kernel``): ``dL/df_i = 2k/N·((f_i − f_{i−1})·[i > 0] + (f_i − f_{i+1})·[i < T−1])``
  from the sliding window ``f_{i−1}, f_i, f_{i+1}``, scattered with the corner weights into slice ``i`` of
  the table gradient: one 8-byte vector reduction per corner (``kernels.VEC2_ASM``, sm_90+) or Triton's
  ``atomic_add`` per feature (other cards, the interpreter).

Levels whose index ignores z (the tiled levels cut by the stride guard, ``strides[2] == 0``; 9–15 of the
paper grid) read 4 corners with weights ``w_x·w_y``: their z and z+1 corners are the same rows and the two
z weights sum to 1, so this is the same value up to fp32 rounding with half the loads and reductions. The
choice is uniform per program (one level), a branch, not a mask.

Tiled levels only (no hash; the launch falls back for hashed grids), 2 fp32 features per level.
"""

from __future__ import annotations

from animate124.scene.grid import kernels as K

if K.HAS_TRITON:
    import triton.language as tl

    @K.triton.jit  # pragma: no cover - jit
    def _tv_setup(u_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH: tl.constexpr):
        """Per point of a block at level ``lvl``: inside mask, floor cell and fractions (as ``kernels._setup``)
        and the level's constants."""
        u0 = tl.load(u_ptr + rows * 3 + 0, mask=rmask, other=-1.0)
        u1 = tl.load(u_ptr + rows * 3 + 1, mask=rmask, other=-1.0)
        u2 = tl.load(u_ptr + rows * 3 + 2, mask=rmask, other=-1.0)
        inside = rmask & (u0 >= 0) & (u0 <= 1) & (u1 >= 0) & (u1 <= 1) & (u2 >= 0) & (u2 <= 1)
        scale = tl.load(scale_ptr + lvl)
        s1 = tl.load(stride_ptr + lvl * 3 + 1)
        s2 = tl.load(stride_ptr + lvl * 3 + 2)
        wmask = tl.load(wmask_ptr + lvl)
        start = tl.load(start_ptr + lvl)
        i0, f0 = K._cell(u0, scale, SMOOTH)
        i1, f1 = K._cell(u1, scale, SMOOTH)
        i2, f2 = K._cell(u2, scale, SMOOTH)
        return inside, i0, i1, i2, f0, f1, f2, s1, s2, wmask, start

    @K.triton.jit  # pragma: no cover - jit
    def _tv_feats(
        table_ptr, base, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK: tl.constexpr, NC: tl.constexpr,
    ):  # fmt: skip
        """Features ``[BLOCK, 2]`` of one grid at one level: the first ``NC`` corners (8, or the z face's 4
        with ``f2 = 0`` where the level ignores z), rows ``base + idx``; masked points read nothing."""
        acc = tl.zeros([BLOCK, 2], dtype=tl.float32)
        for k in tl.static_range(NC):
            idx, w = K._corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, 0, wmask, k)
            v = tl.load(table_ptr + (base + idx)[:, None] * 2 + c2[None, :], mask=m2, other=0.0)
            acc += w[:, None] * v
        return acc

    @K.triton.jit  # pragma: no cover - jit
    def _tv_fwd_sweep(
        table_ptr, T, grid_entries, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK: tl.constexpr,
        NC: tl.constexpr,
    ):  # fmt: skip
        """``Σ_i ‖f_i − f_{i+1}‖²`` per point ``[BLOCK]`` over the ``T`` grids (``f_{i}`` kept in registers)."""
        prev = _tv_feats(table_ptr, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK, NC)
        acc = tl.zeros([BLOCK, 2], dtype=tl.float32)
        for t in range(1, T):
            cur = _tv_feats(
                table_ptr, t * grid_entries + start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK, NC
            )
            d = prev - cur
            acc += d * d
            prev = cur
        return tl.sum(acc, axis=1)

    @K.triton.jit  # pragma: no cover - jit
    def _tv_fwd_kernel(
        u_ptr, table_ptr, part_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, N, T, grid_entries, n_levels,
        BLOCK: tl.constexpr, SMOOTH: tl.constexpr,
    ):  # fmt: skip
        """``part[pid, lvl] = Σ_{x in block} Σ_i ‖f_i(x) − f_{i+1}(x)‖²`` at level ``lvl``; programs
        (level, block of points) with levels fastest."""
        lvl = tl.program_id(0)
        pid = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, wmask, start = _tv_setup(
            u_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH
        )
        c2 = tl.arange(0, 2)
        m2 = tl.broadcast_to(inside[:, None], [BLOCK, 2])
        if s2 != 0:
            per_point = _tv_fwd_sweep(
                table_ptr, T, grid_entries, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK, 8
            )
        else:  # z ignored: the z face's 4 corners with weights w_x·w_y
            fz = tl.zeros_like(f2)
            per_point = _tv_fwd_sweep(
                table_ptr, T, grid_entries, start, i0, i1, i2, f0, f1, fz, s1, s2, wmask, m2, c2, BLOCK, 4
            )
        tl.store(part_ptr + pid * n_levels + lvl, tl.sum(per_point, axis=0))

    @K.triton.jit  # pragma: no cover - jit
    def _tv_scatter(
        grad_ptr, base, g, i0, i1, i2, f0, f1, f2, s1, s2, wmask, inside, m2, c2, BLOCK: tl.constexpr,
        NC: tl.constexpr, USE_ASM: tl.constexpr, ASM: tl.constexpr,
    ):  # fmt: skip
        """``dT[base + idx_k] += w_k·g`` for the first ``NC`` corners of every point inside."""
        if USE_ASM:
            g0 = tl.sum(tl.where(c2[None, :] == 0, g, 0.0), axis=1)
            g1 = tl.sum(tl.where(c2[None, :] == 1, g, 0.0), axis=1)
            on = inside.to(tl.int32)
            for k in tl.static_range(NC):
                idx, w = K._corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, 0, wmask, k)
                tl.inline_asm_elementwise(
                    asm=ASM, constraints="=r,l,f,f,r",
                    args=[(grad_ptr + (base + idx) * 2).to(tl.int64), w * g0, w * g1, on],
                    dtype=tl.int32, is_pure=False, pack=1,
                )  # fmt: skip
        else:
            for k in tl.static_range(NC):
                idx, w = K._corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, 0, wmask, k)
                tl.atomic_add(
                    grad_ptr + (base + idx)[:, None] * 2 + c2[None, :], w[:, None] * g, mask=m2, sem="relaxed"
                )

    @K.triton.jit  # pragma: no cover - jit
    def _tv_bwd_sweep(
        table_ptr, grad_ptr, coef, T, grid_entries, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, inside, m2,
        c2, BLOCK: tl.constexpr, NC: tl.constexpr, USE_ASM: tl.constexpr, ASM: tl.constexpr,
    ):  # fmt: skip
        """Grid by grid: ``g_i = coef·((f_i − f_{i−1}) + (f_i − f_{i+1}))`` with ``f_{−1} = f_0`` and
        ``f_T = f_{T−1}`` (the missing terms are exactly zero), scattered into slice ``i``."""
        cur = _tv_feats(table_ptr, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, m2, c2, BLOCK, NC)
        prv = cur
        for t in range(0, T):
            # a per-point mask: the interpreter's loads take no scalar condition
            has_next = ((i0 * 0 + t + 1) < T)[:, None]
            nxt = _tv_feats(  # grid (t + 1) mod T: an address inside the table even where nothing is read
                table_ptr, ((t + 1) % T) * grid_entries + start, i0, i1, i2, f0, f1, f2, s1, s2, wmask,
                m2 & has_next, c2, BLOCK, NC,
            )  # fmt: skip
            nxt = tl.where(has_next, nxt, cur)
            g = ((cur - prv) + (cur - nxt)) * coef
            _tv_scatter(
                grad_ptr, t * grid_entries + start, g, i0, i1, i2, f0, f1, f2, s1, s2, wmask, inside, m2, c2,
                BLOCK, NC, USE_ASM, ASM,
            )  # fmt: skip
            prv = cur
            cur = nxt

    @K.triton.jit  # pragma: no cover - jit
    def _tv_bwd_kernel(
        u_ptr, table_ptr, grad_ptr, coef_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, N, T, grid_entries,
        BLOCK: tl.constexpr, SMOOTH: tl.constexpr, USE_ASM: tl.constexpr, ASM: tl.constexpr,
    ):  # fmt: skip
        """Table gradient of the time TV (``coef = dL_total/dL · 2k/N``, a device scalar); programs
        (level, block of points) with levels fastest, which spreads concurrent reductions over all levels."""
        lvl = tl.program_id(0)
        pid = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, wmask, start = _tv_setup(
            u_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH
        )
        c2 = tl.arange(0, 2)
        m2 = tl.broadcast_to(inside[:, None], [BLOCK, 2])
        coef = tl.load(coef_ptr)
        if s2 != 0:
            _tv_bwd_sweep(
                table_ptr, grad_ptr, coef, T, grid_entries, start, i0, i1, i2, f0, f1, f2, s1, s2, wmask, inside,
                m2, c2, BLOCK, 8, USE_ASM, ASM,
            )  # fmt: skip
        else:  # z ignored: the z face's 4 corners with weights w_x·w_y
            fz = tl.zeros_like(f2)
            _tv_bwd_sweep(
                table_ptr, grad_ptr, coef, T, grid_entries, start, i0, i1, i2, f0, f1, fz, s1, s2, wmask, inside, m2,
                c2, BLOCK, 4, USE_ASM, ASM,
            )  # fmt: skip
