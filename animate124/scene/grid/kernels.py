"""Triton kernels of the multiresolution grid encoding (SPEC 3.1); launched by :mod:`.launch`.

Same maths as :func:`animate124.scene.grid.reference.encode_torch` (torch-ngp ``gridencoder``):

* plain forward (``_grid_fwd_kernel``): one program per (block of points, level); 8 corners, each a
  vectorised load of the ``C`` features of one table row, fp32 accumulation into the ``[N, L·C]`` output;
* plain backward (``_grid_bwd_kernel``): recomputes corners and weights and adds ``w·dL/df`` into an
  fp32 table gradient (like torch-ngp's ``kernel_grid_backward``): Triton ``atomic_add`` per feature, or
  one 8-byte ``red.global.add.v2.f32`` per corner (``VEC2``, sm_90+);
* time-stacked tables (``[T·E, C]``): each corner reads the rows of grid ``⌊t(T−1)⌋`` and, when
  ``t(T−1)`` is not an integer, of grid ``⌈t(T−1)⌉``, so a point costs at most 2× a static one.

Pair layout (2-feature fp32 tiled tables). Corners ``k`` and ``k+1`` of a point differ only in x, and x
has stride 1 in a tiled level, so their rows are ``r`` and ``next(r) = (r+1) & wrap_mask``; the
y-neighbours are ``(r+s1) & wrap_mask``.

* backward (``PAIR``): ``(w_k·g, w_{k+1}·g)`` goes out as one 16-byte reduction into ``G [rows, 4]``,
  folded afterwards into ``dT[r] = G[r, 0:2] + G[prev(r), 2:4]`` (``_pair_fold_kernel``): 4 reductions
  per level instead of 8;
* forward of a static table: a 32-byte quad table ``Q[r] = (T[r], T[r+1], T[r+s1], T[r+s1+1])``
  (``_gather_build_kernel``; one L2 sector holds a cell face, 2 sectors per level instead of 8 loads);
* a clip's points (few distinct times): one blended 16-byte pair table ``P[r] = (B[r], B[next(r)])``
  per time, one grid read per point (``_fwd_pair_level``), and ``_slot_scatter_kernel`` spreads the
  slot gradients onto the time grids.

z-merge (``ZMERGE``, ``KernelOptions.z_merge``; issue 26). A tiled level whose index ignores z (the stride
guard of :mod:`.layout`: ``strides[2] == 0``, levels 9–15 of the paper grid) has the same rows at its z and
z+1 corners, and the two z weights sum to 1, so ``Σ_c w_x w_y w_z f_c = Σ_{(x,y)} w_x w_y f_c``. With
``ZMERGE`` such a level (``_zmerge``: one scalar per program, the level being a program id) sets ``f₂ = 0``,
so the z face's weights are exactly ``w_x·w_y`` and the z+1 face's are 0, and masks the z+1 face's loads and
reductions off (``_zface``): 4 corners (2 pairs, 1 quad row) gathered or reduced instead of 8, in the same
straight-line code as the other levels (a per-level branch to a 4-corner path was tried: more registers in
the plain forward, BENCHMARKS.md §15.5). The value differs from the 8-corner sum by fp32 rounding only
(``tests/test_scene_zmerge.py`` derives the bound). Without ``ZMERGE`` the kernels read all 8 corners at every level.

Programs of the pair kernels put the level on axis 0 (fastest varying): concurrent programs then spread
their loads and atomics over all levels' tables (BENCHMARKS.md §2).

Atomics use ``sem="relaxed"`` (Triton's default is acq_rel, which adds fences per add); the sum is
order-independent up to fp32 rounding, so gradients are not bitwise deterministic (nor are upstream's).
Index arithmetic is done in int32 with two's-complement wrap-around and ``& (size−1)`` for wrapped
levels, which equals upstream's uint32 ``% size`` because wrapped table sizes are powers of two. The
hash prime 2654435761 is used as its int32 bit pattern −1640531535.

With ``TRITON_INTERPRET=1`` (set before this module is imported) these kernels run on CPU tensors.
"""

from __future__ import annotations

try:  # optional dependency
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

# one 8-byte reduction per corner (sm_90+)
VEC2_ASM = "{ .reg .pred p; setp.ne.b32 p, $4, 0; @p red.global.add.v2.f32 [$1], {$2, $3}; mov.u32 $0, 0; }"
# one 16-byte reduction for a pair, else two 8-byte ones (sm_90+)
PAIR_ASM = (
    "{ .reg .pred p4, p2; setp.ne.b32 p4, $7, 0; setp.ne.b32 p2, $8, 0; "
    "@p4 red.global.add.v4.f32 [$1], {$3, $4, $5, $6}; "
    "@p2 red.global.add.v2.f32 [$1], {$3, $4}; @p2 red.global.add.v2.f32 [$2], {$5, $6}; mov.u32 $0, 0; }"
)

if HAS_TRITON:

    @triton.jit  # pragma: no cover - jit
    def _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, CORNER: tl.constexpr):
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

    @triton.jit  # pragma: no cover - jit
    def _cell(u, scale, SMOOTH: tl.constexpr):
        """Floor cell (int32) and interpolation fraction along one axis of a level (``smoothstep``'d when
        ``SMOOTH``) for a unit coordinate ``u``: upstream's ``pos = u·scale + 0.5``."""
        p = u * scale + 0.5
        g = tl.floor(p)
        f = p - g
        if SMOOTH:
            f = f * f * (3.0 - 2.0 * f)
        return g.to(tl.int32), f

    @triton.jit  # pragma: no cover - jit
    def _zmerge(f2, s2, hashed, ZMERGE: tl.constexpr):
        """``(f2, keep_z)`` of a level (module docstring, z-merge): with ``ZMERGE`` at a tiled level whose
        index ignores z, ``f2 = 0`` and ``keep_z`` false (a scalar); else unchanged and true (``s2 == s2``,
        folded by the compiler, so the kernels without ``ZMERGE`` are today's)."""
        if ZMERGE:
            keep = (s2 != 0) | (hashed != 0)
            f2 = tl.where(keep, f2, 0.0)
        else:
            keep = s2 == s2
        return f2, keep

    @triton.jit  # pragma: no cover - jit
    def _zface(m, keep, K: tl.constexpr):
        """The mask ``m`` of corner ``K``, off at the z+1 face (``K >= 4``) of a z-merged level. (``tl.where``:
        Triton 3.9's interpreter turns ``block & scalar`` of booleans into int32, which loads reject.)"""
        if K >= 4:
            m = tl.where(keep, m, False)
        return m

    @triton.jit  # pragma: no cover - jit
    def _setup(
        u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, time_max,
        grid_entries, HAS_TIME: tl.constexpr, SMOOTH: tl.constexpr,
    ):  # fmt: skip
        """Per point of a block at level ``lvl``: inside mask, floor cell, weights, level constants and
        the row bases (and weight) of the two time grids."""
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
        i0, f0 = _cell(u0, scale, SMOOTH)
        i1, f1 = _cell(u1, scale, SMOOTH)
        i2, f2 = _cell(u2, scale, SMOOTH)
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

    @triton.jit  # pragma: no cover - jit
    def _channel_masks(inside, has_hi, C: tl.constexpr):
        """Channel indices ``[C]`` and the load masks of the low and high time grids ``[BLOCK, C]``."""
        ch = tl.arange(0, C)
        return ch, inside[:, None] & (ch[None, :] < C), has_hi[:, None] & (ch[None, :] < C)

    @triton.jit  # pragma: no cover - jit
    def _grid_fwd_kernel(
        u_ptr, t_ptr, emb_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, N, out_stride,
        time_max, grid_entries, C: tl.constexpr, BLOCK: tl.constexpr, HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr, ZMERGE: tl.constexpr = False,
    ):  # fmt: skip
        """Plain forward; programs (block of points, level)."""
        pid = tl.program_id(0)
        lvl = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            time_max, grid_entries, HAS_TIME, SMOOTH,
        )  # fmt: skip
        f2, keep_z = _zmerge(f2, s2, hashed, ZMERGE)
        ch, m_lo, m_hi = _channel_masks(inside, has_hi, C)
        acc = tl.zeros([BLOCK, C], dtype=tl.float32)
        for k in tl.static_range(8):
            idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
            v = tl.load(
                emb_ptr + (base_lo + idx)[:, None] * C + ch[None, :], mask=_zface(m_lo, keep_z, k), other=0.0
            ).to(tl.float32)
            if HAS_TIME:
                vh = tl.load(
                    emb_ptr + (base_hi + idx)[:, None] * C + ch[None, :],
                    mask=_zface(m_hi, keep_z, k),
                    other=0.0,
                )
                v = vh.to(tl.float32) * w_hi[:, None] + v * (1.0 - w_hi)[:, None]
            acc += w[:, None] * v
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * C + ch[None, :]
        tl.store(out_ptrs, acc, mask=rmask[:, None] & (ch[None, :] < C))

    @triton.jit  # pragma: no cover - jit
    def _gather_build_kernel(
        table_ptr, out_ptr, lo_ptr, hi_ptr, a_ptr, size_ptr, wmask_ptr, start_ptr, stride_ptr, grid_entries,
        QUAD: tl.constexpr, BLEND: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """The forward's gather tables, per level and grid (program axis 2).

        Pairs ``P[r] = (T[r], T[nx(r)])`` or, with ``QUAD``, ``Q[r] = (T[r], T[nx(r)], T[ny(r)],
        T[nx(ny(r))])`` (a cell face in one 32-byte L2 sector), ``nx(r) = (r+1) & m``, ``ny(r) = (r+s1) & m``
        within the level; rows past an unwrapped level's end repeat ``r`` (never read). With ``BLEND``,
        output grid ``k`` is the blend ``a_k·T[hi_k] + (1 − a_k)·T[lo_k]`` (the kernels' time interpolation).
        The launches use quads for static tables and blended pairs for clip slots.
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

    @triton.jit  # pragma: no cover - jit
    def _fwd_quad_level(
        u_ptr, quad_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, rows, rmask, lvl,
        out_stride, BLOCK: tl.constexpr, SMOOTH: tl.constexpr, ZMERGE: tl.constexpr = False,
    ):  # fmt: skip
        """One level of a static table from the quad table (tiled levels only): two 32-byte rows per point
        (z and z+1; the z row only at a z-merged level)."""
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, u_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            0.0, 0, False, SMOOTH,
        )  # fmt: skip
        f2, keep_z = _zmerge(f2, s2, hashed, ZMERGE)
        c8 = tl.arange(0, 8)
        c2 = tl.arange(0, 2)
        m8 = tl.broadcast_to(inside[:, None], [BLOCK, 8])
        acc8 = tl.zeros([BLOCK, 8], dtype=tl.float32)
        for z in tl.static_range(2):
            ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z)
            ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 1)
            ic, wc = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 2)
            idd, wd = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, 4 * z + 3)
            v = tl.load(
                quad_ptr + (base_lo + ia)[:, None] * 8 + c8[None, :],
                mask=_zface(m8, keep_z, 4 * z),
                other=0.0,
            )
            w8 = tl.where(
                c8[None, :] < 2,
                wa[:, None],
                tl.where(c8[None, :] < 4, wb[:, None], tl.where(c8[None, :] < 6, wc[:, None], wd[:, None])),
            )
            acc8 += w8 * v
        acc = tl.sum(tl.reshape(acc8, [BLOCK, 4, 2]), axis=1)
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * 2 + c2[None, :]
        tl.store(out_ptrs, acc, mask=tl.broadcast_to(rmask[:, None], [BLOCK, 2]))

    @triton.jit  # pragma: no cover - jit
    def _fwd_pair_level(
        u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, rows, rmask,
        lvl, out_stride, time_max, grid_entries, BLOCK: tl.constexpr, HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr, ZMERGE: tl.constexpr = False,
    ):  # fmt: skip
        """One level of a block of points from the pair table (corners ``k``, ``k+1`` in one load; the z
        face's 2 pairs only at a z-merged level).

        A corner whose x-neighbour is not the next row (only possible in hashed levels, which the launches
        never send here) is read on its own."""
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            time_max, grid_entries, HAS_TIME, SMOOTH,
        )  # fmt: skip
        f2, keep_z = _zmerge(f2, s2, hashed, ZMERGE)
        c4 = tl.arange(0, 4)
        c2 = tl.arange(0, 2)
        first = c4[None, :] < 2
        acc4 = tl.zeros([BLOCK, 4], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK, 2], dtype=tl.float32)
        for k in tl.static_range(0, 8, 2):
            ins = _zface(inside, keep_z, k)
            hh = _zface(has_hi, keep_z, k)
            m4 = tl.broadcast_to(ins[:, None], [BLOCK, 4])
            m4h = tl.broadcast_to(hh[:, None], [BLOCK, 4])
            ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
            ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k + 1)
            pair = ib == ((ia + 1) & wmask)
            single = ins & (pair == 0)
            v = tl.load(pair_ptr + (base_lo + ia)[:, None] * 4 + c4[None, :], mask=m4, other=0.0)
            ms = tl.broadcast_to(single[:, None], [BLOCK, 2])
            vs = tl.load(pair_ptr + (base_lo + ib)[:, None] * 4 + c2[None, :], mask=ms, other=0.0)
            if HAS_TIME:
                vh = tl.load(pair_ptr + (base_hi + ia)[:, None] * 4 + c4[None, :], mask=m4h, other=0.0)
                v = vh * w_hi[:, None] + v * (1.0 - w_hi)[:, None]
                msh = tl.broadcast_to((hh & (pair == 0))[:, None], [BLOCK, 2])
                vsh = tl.load(pair_ptr + (base_hi + ib)[:, None] * 4 + c2[None, :], mask=msh, other=0.0)
                vs = vsh * w_hi[:, None] + vs * (1.0 - w_hi)[:, None]
            w4 = tl.where(first, wa[:, None], tl.where(pair, wb, 0.0)[:, None])
            acc4 += w4 * v
            acc2 += tl.where(pair, 0.0, wb)[:, None] * vs
        acc = tl.sum(tl.reshape(acc4, [BLOCK, 2, 2]), axis=1) + acc2
        out_ptrs = out_ptr + rows[:, None] * out_stride + lvl * 2 + c2[None, :]
        tl.store(out_ptrs, acc, mask=tl.broadcast_to(rmask[:, None], [BLOCK, 2]))

    @triton.jit  # pragma: no cover - jit
    def _grid_fwd_pair_kernel(
        u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, N, out_stride,
        time_max, grid_entries, BLOCK: tl.constexpr, HAS_TIME: tl.constexpr, SMOOTH: tl.constexpr,
        QUAD: tl.constexpr, ZMERGE: tl.constexpr = False,
    ):  # fmt: skip
        """Forward from the quad table (``QUAD``, static tables) or the pair table (clip slots); programs
        (level, block of points) with levels fastest."""
        lvl = tl.program_id(0)
        pid = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        if QUAD:
            _fwd_quad_level(
                u_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, rows, rmask,
                lvl, out_stride, BLOCK, SMOOTH, ZMERGE,
            )  # fmt: skip
        else:
            _fwd_pair_level(
                u_ptr, t_ptr, pair_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, rows,
                rmask, lvl, out_stride, time_max, grid_entries, BLOCK, HAS_TIME, SMOOTH, ZMERGE,
            )  # fmt: skip

    @triton.jit  # pragma: no cover - jit
    def _pair_reduce(
        g4_ptr, ra, rb, pair, single, wa, wb, g0, g1, BLOCK: tl.constexpr, ASM4: tl.constexpr,
        USE_ASM: tl.constexpr,
    ):  # fmt: skip
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

    @triton.jit  # pragma: no cover - jit
    def _channel_grads(gout_ptr, rows, gout_stride, lvl, inside, w_hi, HAS_TIME: tl.constexpr):
        """A level's two output-gradient channels as ``[BLOCK]`` vectors, split between the low and the high time
        grid: ``(g_lo0, g_lo1, g_hi0, g_hi1)`` (the high pair equals the low one without ``HAS_TIME``).

        Two 1-D loads, not a ``[BLOCK, 2]`` load summed over its channels: the inline-asm reductions that take
        these values run once per thread that holds an element, and a sum over a ``[BLOCK, 2]`` tile can leave
        each row on two threads. Triton lays the tile out so whenever it cannot prove 8-byte rows (a row
        stride ``L·C`` that is not a multiple of 16, e.g. 6 or 4 levels): every table addition was then issued
        twice and the table gradient came out doubled on the GPU (found 2026-12-07 on an H100; the CPU
        interpreter runs the atomic fallback and could not see it; BENCHMARKS.md §15.14). The sm_90 compile tests
        (``tests/test_scene_triton.py``, ``tests/test_scene_stencil.py``) read every inline-asm op's layout in
        the compiled kernels (``helpers_triton.inline_asm_replication``): one thread an element."""
        base = gout_ptr + rows * gout_stride + lvl * 2
        g0 = tl.load(base, mask=inside, other=0.0).to(tl.float32)
        g1 = tl.load(base + 1, mask=inside, other=0.0).to(tl.float32)
        if HAS_TIME:
            return g0 * (1.0 - w_hi), g1 * (1.0 - w_hi), g0 * w_hi, g1 * w_hi
        return g0, g1, g0, g1

    @triton.jit  # pragma: no cover - jit
    def _nonzero_rows(g_lo0, g_lo1, g_hi0, g_hi1, SKIP0: tl.constexpr):
        """Which points have a nonzero gradient at their low and high grid (all True without ``SKIP0``)."""
        nz_lo = (g_lo0 != 0.0) | (g_lo1 != 0.0)
        nz_hi = (g_hi0 != 0.0) | (g_hi1 != 0.0)
        if not SKIP0:
            nz_lo = nz_lo | True
            nz_hi = nz_hi | True
        return nz_lo, nz_hi

    @triton.jit  # pragma: no cover - jit
    def _grid_bwd_kernel(
        u_ptr, t_ptr, gout_ptr, gemb_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr, N,
        gout_stride, time_max, grid_entries, C: tl.constexpr, BLOCK: tl.constexpr, HAS_TIME: tl.constexpr,
        SMOOTH: tl.constexpr, VEC2: tl.constexpr, ASM: tl.constexpr, PAIR: tl.constexpr, ASM4: tl.constexpr,
        ZMERGE: tl.constexpr = False, SKIP0: tl.constexpr = False,
    ):  # fmt: skip
        """Table gradient; programs (level, block of points) with levels fastest, which spreads concurrent
        atomics over all levels' tables instead of hammering one small coarse table at a time. With
        ``PAIR``, ``gemb_ptr`` is the pair-layout buffer ``G [rows, 4]``. With ``ZMERGE`` a level whose
        index ignores z reduces the 4 corners of its z face, with weights ``w_x·w_y``. With ``SKIP0`` a
        point whose gradient at the level (at its slot's grid, for each of the two) is all zero issues no
        additions there: they would add exact zeros (``KernelOptions.skip_zero_rows``)."""
        lvl = tl.program_id(0)
        pid = tl.program_id(1)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < N
        inside, i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, base_lo, base_hi, w_hi, has_hi = _setup(
            u_ptr, t_ptr, rows, rmask, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, hashed_ptr,
            time_max, grid_entries, HAS_TIME, SMOOTH,
        )  # fmt: skip
        f2, keep_z = _zmerge(f2, s2, hashed, ZMERGE)
        if PAIR or VEC2:
            tl.static_assert(C == 2, "the pair layout and the vector reductions hold two channels")
            g_lo0, g_lo1, g_hi0, g_hi1 = _channel_grads(
                gout_ptr, rows, gout_stride, lvl, inside, w_hi, HAS_TIME
            )
            nz_lo, nz_hi = _nonzero_rows(g_lo0, g_lo1, g_hi0, g_hi1, SKIP0)
        if PAIR:
            for k in tl.static_range(0, 8, 2):
                ia, wa = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                ib, wb = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k + 1)
                pair = ib == ((ia + 1) & wmask)
                ins = _zface(inside, keep_z, k) & nz_lo
                hh = _zface(has_hi, keep_z, k) & nz_hi
                _pair_reduce(
                    gemb_ptr, base_lo + ia, base_lo + ib, ins & pair, ins & (pair == 0),
                    wa, wb, g_lo0, g_lo1, BLOCK, ASM4, VEC2,
                )  # fmt: skip
                if HAS_TIME:
                    _pair_reduce(
                        gemb_ptr, base_hi + ia, base_hi + ib, hh & pair, hh & (pair == 0),
                        wa, wb, g_hi0, g_hi1, BLOCK, ASM4, VEC2,
                    )  # fmt: skip
        elif VEC2:
            # One 8-byte vector reduction per corner instead of two scalar atomics (sm_90+): the
            # backward is bound by the L2 atomic rate, so halving the atomic count nearly halves it.
            for k in tl.static_range(8):
                in_lo = (_zface(inside, keep_z, k) & nz_lo).to(tl.int32)
                in_hi = (_zface(has_hi, keep_z, k) & nz_hi).to(tl.int32)
                idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                tl.inline_asm_elementwise(
                    asm=ASM, constraints="=r,l,f,f,r",
                    args=[(gemb_ptr + (base_lo + idx) * 2).to(tl.int64), w * g_lo0, w * g_lo1, in_lo],
                    dtype=tl.int32, is_pure=False, pack=1,
                )  # fmt: skip
                if HAS_TIME:
                    tl.inline_asm_elementwise(
                        asm=ASM, constraints="=r,l,f,f,r",
                        args=[(gemb_ptr + (base_hi + idx) * 2).to(tl.int64), w * g_hi0, w * g_hi1, in_hi],
                        dtype=tl.int32, is_pure=False, pack=1,
                    )  # fmt: skip
        else:
            ch, m_lo, m_hi = _channel_masks(inside, has_hi, C)
            go = tl.load(gout_ptr + rows[:, None] * gout_stride + lvl * C + ch[None, :], mask=m_lo, other=0.0)
            go = go.to(tl.float32)
            if HAS_TIME:
                go_lo = go * (1.0 - w_hi)[:, None]
                go_hi = go * w_hi[:, None]
            else:
                go_lo = go
                go_hi = go
            nz_lo = tl.sum((go_lo != 0.0).to(tl.int32), axis=1) > 0
            nz_hi = tl.sum((go_hi != 0.0).to(tl.int32), axis=1) > 0
            if not SKIP0:
                nz_lo = nz_lo | True
                nz_hi = nz_hi | True
            for k in tl.static_range(8):
                idx, w = _corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, hashed, wmask, k)
                tl.atomic_add(
                    gemb_ptr + (base_lo + idx)[:, None] * C + ch[None, :], w[:, None] * go_lo,
                    mask=_zface(m_lo, keep_z, k) & nz_lo[:, None], sem="relaxed",
                )  # fmt: skip
                if HAS_TIME:
                    tl.atomic_add(
                        gemb_ptr + (base_hi + idx)[:, None] * C + ch[None, :], w[:, None] * go_hi,
                        mask=_zface(m_hi, keep_z, k) & nz_hi[:, None], sem="relaxed",
                    )  # fmt: skip

    @triton.jit  # pragma: no cover - jit
    def _pair_fold_kernel(
        g4_ptr, grad_ptr, size_ptr, wmask_ptr, start_ptr, grid_entries, BLOCK: tl.constexpr
    ):
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

    @triton.jit  # pragma: no cover - jit
    def _slot_scatter_kernel(
        acc_ptr, grad_ptr, lo_ptr, hi_ptr, a_ptr, K, size_ptr, wmask_ptr, start_ptr, grid_entries,
        PAIRED: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
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
