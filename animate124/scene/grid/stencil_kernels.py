"""Triton kernels of the fused finite-difference normals (issue 26); launched by :mod:`.stencil`.

``RadianceField.normals`` evaluates σ at the six points ``x ± ε e_d`` (clamped to the box) as six field
evaluations: six gathers through the grid, six ``[N, 32]`` feature tensors and six MLP passes through global
memory. These kernels compute, per sample, the same six densities and the normal in registers:

* lanes: a block of ``BLOCK`` samples has ``BLOCK × 8`` lanes, lane ``8p + n`` is sample ``p``'s neighbour
  ``n`` (0–5: +x, +y, +z, −x, −y, −z, as ``normals``), lane 6 the sample itself (its cell only, no
  density) and lane 7 unused. A sample's lanes are adjacent threads, so where its neighbours share a cell
  (the coarse levels) their loads of the same 32-byte sector are one request of the warp;
* per level: the cell, weights and the 4 x-pairs of corners read from the pair table ``P[r] = (T[r],
  T[r+1])`` (16 bytes; the blended table of the sample's clip time, :func:`.launch.build_slot_pairs`), and
  the level's two features go straight into the first layer, ``hid += f₀·W₁[:, 2l] + f₁·W₁[:, 2l+1]``;
  levels whose index ignores z (the tiled levels cut by the stride guard, see ``layout``) read the 2
  pairs of the z face only with weights ``w_x·w_y`` (their z and z+1 corners are the same rows, and the
  two z weights sum to 1: the same value up to fp32 rounding, half the loads and reductions);
* ``σ = exp(relu(hid + b₁)·W₂[0] + b₂[0] + blob(x'))`` and ``n = −g/‖g‖``, ``g_d = 0.5·(σ₊ − σ₋)/ε``,
  NaN → 0 (``safe_normalize`` and ``nan_to_num`` of ``fields.py``); all in fp32.

The backward is three kernels over a chunk of samples (:func:`.stencil._backward_chunks`), so that no kernel
holds more than the forward's ``[lanes, H]`` tile (one kernel doing all of it sat at 255 registers with
spills, BENCHMARKS.md §15.2b):

1. ``_stencil_mlp_bwd_kernel`` recomputes the forward (the same code, ``_hidden``, at another block size, so
   its sums over the hidden units may round differently), stores the neighbours' features (``feat``), and
   runs autograd's maths by hand: ``nan_to_num`` → ``safe_normalize`` → the difference quotient →
   ``trunc_exp`` (gradient ``exp(min(h, 15))``) → ``dh`` per lane, stored with the lane's ReLU pattern
   ``hid > 0`` (16 bits a word); the gradients of ``W₂[0]`` and ``b₂[0]`` as per-program partial sums;
2. ``_stencil_linear_bwd_kernel``, over tiles of lanes: ``dhid = [hid > 0]·dh·W₂[0]`` (the same fp32 products
   as autograd's), ``dfeat = dhid·W₁`` and ``dW₁ = Σ dhidᵀ·feat``, ``db₁ = Σ dhid`` as per-program partial sums
   (IEEE fp32 products, no TF32);
3. ``_stencil_scatter_kernel``, programs (level, block of samples) with levels fastest as the grid backward:
   the table gradient ``w·dfeat`` of each corner into the pair-layout buffer ``G [rows, 4]`` (16-byte
   reductions; the neighbours that sit in the sample's cell add theirs first and lane 6 issues one
   reduction for them), folded and spread onto the time grids by ``_slot_scatter_kernel``.

Determinism follows the grid backward's policy (:mod:`.kernels`): the MLP gradients are fixed-order sums of
per-program partials (the same bits on every run); the table gradient is a sum of float reductions whose
order the GPU chooses (the same up to fp32 rounding).
"""

from __future__ import annotations

from animate124.scene.grid import kernels as K

if K.HAS_TRITON:
    import triton
    import triton.language as tl

    #: one 16-byte reduction (sm_90+), predicated
    RED4_ASM = "{ .reg .pred p; setp.ne.b32 p, $6, 0; @p red.global.add.v4.f32 [$1], {$2, $3, $4, $5}; mov.u32 $0, 0; }"

    @triton.jit  # pragma: no cover - jit
    def _lanes(x_ptr, slot_ptr, blk, N, eps, bound, two_bound, BLOCK: tl.constexpr):
        """Lane indices, the clamped world position of every lane (``normals``' offsets and clamp), its unit
        coordinates, which lanes evaluate a neighbour (``ev``) inside the box, and each sample's slot."""
        S: tl.constexpr = BLOCK * 8
        j = tl.arange(0, S)
        nl = j % 8
        pt = blk * BLOCK + j // 8
        ok = pt < N
        o = tl.where(nl < 3, eps, tl.where(nl < 6, -eps, 0.0))
        dim = nl % 3
        x0 = tl.load(x_ptr + pt * 3 + 0, mask=ok, other=0.0) + tl.where((dim == 0) & (nl < 6), o, 0.0)
        x1 = tl.load(x_ptr + pt * 3 + 1, mask=ok, other=0.0) + tl.where((dim == 1) & (nl < 6), o, 0.0)
        x2 = tl.load(x_ptr + pt * 3 + 2, mask=ok, other=0.0) + tl.where((dim == 2) & (nl < 6), o, 0.0)
        x0 = tl.minimum(tl.maximum(x0, -bound), bound)
        x1 = tl.minimum(tl.maximum(x1, -bound), bound)
        x2 = tl.minimum(tl.maximum(x2, -bound), bound)
        ev = ok & (nl < 6)
        u0 = (x0 + bound) / two_bound
        u1 = (x1 + bound) / two_bound
        u2 = (x2 + bound) / two_bound
        inside = ev & (u0 >= 0) & (u0 <= 1) & (u1 >= 0) & (u1 <= 1) & (u2 >= 0) & (u2 <= 1)
        slot = tl.load(slot_ptr + pt, mask=ok, other=0)
        return nl, pt, ok, x0, x1, x2, ev, u0, u1, u2, inside, slot

    @triton.jit  # pragma: no cover - jit
    def _level(u0, u1, u2, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH: tl.constexpr):
        """Cell, fractions and constants of one level (``kernels._setup`` for given unit coordinates); a
        level whose index ignores z gets ``f₂ = 0`` so its z-face weights are ``w_x·w_y`` (module doc)."""
        scale = tl.load(scale_ptr + lvl)
        s1 = tl.load(stride_ptr + lvl * 3 + 1)
        s2 = tl.load(stride_ptr + lvl * 3 + 2)
        wmask = tl.load(wmask_ptr + lvl)
        start = tl.load(start_ptr + lvl)
        i0, f0 = K._cell(u0, scale, SMOOTH)
        i1, f1 = K._cell(u1, scale, SMOOTH)
        i2, f2 = K._cell(u2, scale, SMOOTH)
        zkeep = (i0 * 0 + s2) != 0  # per lane; False: the level's index ignores z
        f2 = tl.where(zkeep, f2, 0.0)
        return i0, i1, i2, f0, f1, f2, s1, s2, wmask, start, zkeep

    @triton.jit  # pragma: no cover - jit
    def _corner_pair(i0, i1, i2, f0, f1, f2, s1, s2, wmask, zkeep, m, KK: tl.constexpr):
        """Rows and weights of corners ``KK`` and ``KK + 1`` (one pair-table row each) and the lanes that touch
        them: ``m``, and for the z+1 face (``KK >= 4``) only where the level's index does not ignore z."""
        ia, wa = K._corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, 0, wmask, KK)
        ib, wb = K._corner_rows(i0, i1, i2, f0, f1, f2, s1, s2, 0, wmask, KK + 1)
        if KK < 4:
            mk = m
        else:
            mk = m & zkeep
        return ia, wa, ib, wb, mk

    @triton.jit  # pragma: no cover - jit
    def _level_features(
        pair_ptr, base, i0, i1, i2, f0, f1, f2, s1, s2, wmask, zkeep, m, S: tl.constexpr,
    ):  # fmt: skip
        """The two features of every lane at one level from the pair table (masked lanes read nothing)."""
        c4 = tl.arange(0, 4)
        acc = tl.zeros([S, 4], dtype=tl.float32)
        for kk in tl.static_range(0, 8, 2):
            ia, wa, ib, wb, mk = _corner_pair(i0, i1, i2, f0, f1, f2, s1, s2, wmask, zkeep, m, kk)
            v = tl.load(
                pair_ptr + (base + ia)[:, None] * 4 + c4[None, :],
                mask=tl.broadcast_to(mk[:, None], [S, 4]),
                other=0.0,
            )
            acc += tl.where(c4[None, :] < 2, wa[:, None], wb[:, None]) * v
        even = (c4 % 2)[None, :] == 0
        return tl.sum(tl.where(even, acc, 0.0), axis=1), tl.sum(tl.where(even, 0.0, acc), axis=1)

    @triton.jit  # pragma: no cover - jit
    def _hidden(
        x_ptr, slot_ptr, pair_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr,
        feat_ptr, feat_stride, blk, N, n_active, grid_entries, eps, bound, two_bound, blob_a, blob_k,
        BLOCK: tl.constexpr, H: tl.constexpr, F: tl.constexpr, SMOOTH: tl.constexpr, STORE: tl.constexpr,
    ):  # fmt: skip
        """Forward of every lane: ``hid [S, H]`` (pre-activation), ``h = h₀ + blob`` and ``σ = exp(h)``; with
        ``STORE`` the features of the six neighbour lanes go to ``feat [2·n_active, ·]`` (column ``6p + n``, row
        stride ``feat_stride``: stores of adjacent lanes are adjacent)."""
        S: tl.constexpr = BLOCK * 8
        nl, pt, ok, x0, x1, x2, ev, u0, u1, u2, inside, slot = _lanes(
            x_ptr, slot_ptr, blk, N, eps, bound, two_bound, BLOCK
        )
        # the blob before the sweep: one value live across it instead of the three coordinates
        blob = blob_a * tl.exp(-(x0 * x0 + x1 * x1 + x2 * x2) / blob_k)
        hc = tl.arange(0, H)
        hid = tl.zeros([S, H], dtype=tl.float32)
        for lvl in range(0, n_active):
            i0, i1, i2, f0, f1, f2, s1, s2, wmask, start, zkeep = _level(
                u0, u1, u2, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH
            )
            base = slot * grid_entries + start
            a, b = _level_features(pair_ptr, base, i0, i1, i2, f0, f1, f2, s1, s2, wmask, zkeep, inside, S)
            if STORE:
                fp = feat_ptr + (2 * lvl) * feat_stride + pt * 6 + nl
                tl.store(fp, a, mask=ok & (nl < 6))
                tl.store(fp + feat_stride, b, mask=ok & (nl < 6))
            w1a = tl.load(w1_ptr + hc * F + 2 * lvl)
            w1b = tl.load(w1_ptr + hc * F + 2 * lvl + 1)
            hid += a[:, None] * w1a[None, :] + b[:, None] * w1b[None, :]
        hid += tl.load(b1_ptr + hc)[None, :]
        act = tl.maximum(hid, 0.0)
        h0 = tl.sum(act * tl.load(w2_ptr + hc)[None, :], axis=1) + tl.load(b2_ptr)
        h = h0 + blob
        return nl, pt, ok, ev, u0, u1, u2, inside, slot, hid, act, h, tl.exp(h)

    @triton.jit  # pragma: no cover - jit
    def _col(v, nl, n: tl.constexpr, BLOCK: tl.constexpr):
        """Per sample, the value of lane ``n``: ``[S] -> [BLOCK]``."""
        return tl.sum(tl.reshape(tl.where(nl == n, v, 0.0), [BLOCK, 8]), axis=1)

    @triton.jit  # pragma: no cover - jit
    def _icol(v, nl, n: tl.constexpr, BLOCK: tl.constexpr):
        return tl.sum(tl.reshape(tl.where(nl == n, v, 0), [BLOCK, 8]), axis=1)

    @triton.jit  # pragma: no cover - jit
    def _to_lanes(v, BLOCK: tl.constexpr):
        """A per-sample value on each of its 8 lanes: ``[BLOCK] -> [S]``."""
        return tl.reshape(tl.broadcast_to(v[:, None], [BLOCK, 8]), [BLOCK * 8])

    @triton.jit  # pragma: no cover - jit
    def _normal(sig, nl, eps, BLOCK: tl.constexpr):
        """``g_d = 0.5·(σ_d − σ_{d+3})/ε``, ``v = −g``, ``s = sqrt(max(‖v‖², 1e-20))`` per sample."""
        g0 = 0.5 * (_col(sig, nl, 0, BLOCK) - _col(sig, nl, 3, BLOCK)) / eps
        g1 = 0.5 * (_col(sig, nl, 1, BLOCK) - _col(sig, nl, 4, BLOCK)) / eps
        g2 = 0.5 * (_col(sig, nl, 2, BLOCK) - _col(sig, nl, 5, BLOCK)) / eps
        v0 = -g0
        v1 = -g1
        v2 = -g2
        ss = v0 * v0 + v1 * v1 + v2 * v2
        s = tl.sqrt(tl.maximum(ss, 1e-20))
        return v0, v1, v2, ss, s

    @triton.jit  # pragma: no cover - jit
    def _finite(v):
        return (v == v) & (tl.abs(v) < float("inf"))

    @triton.jit  # pragma: no cover - jit
    def _nan_to_num(v):
        big = 3.4028234663852886e38
        return tl.where(v != v, 0.0, tl.minimum(tl.maximum(v, -big), big))

    @triton.jit  # pragma: no cover - jit
    def _stencil_fwd_kernel(
        x_ptr, slot_ptr, pair_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, scale_ptr, stride_ptr, wmask_ptr,
        start_ptr, N, n_active, grid_entries, eps, bound, two_bound, blob_a, blob_k,
        BLOCK: tl.constexpr, H: tl.constexpr, F: tl.constexpr, SMOOTH: tl.constexpr,
    ):  # fmt: skip
        """Normals ``[N, 3]`` of a block of samples per program."""
        blk = tl.program_id(0)
        nl, pt, ok, ev, u0, u1, u2, inside, slot, hid, act, h, sig = _hidden(
            x_ptr, slot_ptr, pair_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr,
            out_ptr, 0, blk, N, n_active, grid_entries, eps, bound, two_bound, blob_a, blob_k, BLOCK, H, F, SMOOTH,
            False,
        )  # fmt: skip
        v0, v1, v2, ss, s = _normal(sig, nl, eps, BLOCK)
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        m = rows < N
        tl.store(out_ptr + rows * 3 + 0, _nan_to_num(v0 / s), mask=m)
        tl.store(out_ptr + rows * 3 + 1, _nan_to_num(v1 / s), mask=m)
        tl.store(out_ptr + rows * 3 + 2, _nan_to_num(v2 / s), mask=m)

    @triton.jit  # pragma: no cover - jit
    def _red4(g4_ptr, row, a, b, c, d, m, S: tl.constexpr, USE_ASM: tl.constexpr, ASM: tl.constexpr):
        """``G[row] += (a, b, c, d)`` where ``m``: one 16-byte reduction (sm_90+) or four atomics."""
        if USE_ASM:
            tl.inline_asm_elementwise(
                asm=ASM, constraints="=r,l,f,f,f,f,r",
                args=[(g4_ptr + row * 4).to(tl.int64), a, b, c, d, m.to(tl.int32)],
                dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip
        else:
            c4 = tl.arange(0, 4)[None, :]
            v = tl.where(
                c4 == 0, a[:, None], tl.where(c4 == 1, b[:, None], tl.where(c4 == 2, c[:, None], d[:, None]))
            )
            tl.atomic_add(g4_ptr + row[:, None] * 4 + c4, v, mask=m[:, None] & (c4 < 4), sem="relaxed")

    @triton.jit  # pragma: no cover - jit
    def _group(v, share, nl, BLOCK: tl.constexpr):
        """On lane 6: the sum of ``v`` over the sample's lanes that share its cell; elsewhere ``v``."""
        tot = tl.sum(tl.reshape(tl.where(share, v, 0.0), [BLOCK, 8]), axis=1)
        return tl.where(nl == 6, _to_lanes(tot, BLOCK), v)

    @triton.jit  # pragma: no cover - jit
    def _stencil_mlp_bwd_kernel(
        x_ptr, slot_ptr, pair_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gout_ptr, feat_ptr, dh_ptr, relu_ptr, part_ptr,
        scale_ptr, stride_ptr, wmask_ptr, start_ptr, N, lane_stride, n_active, grid_entries, eps, bound, two_bound, blob_a,
        blob_k, BLOCK: tl.constexpr, H: tl.constexpr, F: tl.constexpr, SMOOTH: tl.constexpr,
        DHID: tl.constexpr = False,
    ):  # fmt: skip
        """Backward, part 1 (a block of samples per program): the forward again, storing the neighbours'
        features ``feat``; then autograd's maths down to ``dh = ∂L/∂h`` per lane (``dh [6·N]``), the lane's ReLU
        pattern ``hid > 0`` as 16-bit words (``relu [6·N, ⌈H/16⌉]`` int32) and the program's partial sums
        ``part[pid] = (Σ dh·relu(hid) [H], Σ dh)``, the gradients of ``W₂[0]`` and ``b₂[0]``. With ``DHID``,
        ``relu_ptr`` is ``dhid [6·N, H]`` fp32 instead: ``[hid > 0]·dh·W₂[0]``, the first layer's output gradient
        (the same fp32 products as ``_stencil_linear_bwd_kernel``'s), for the first layer's two products as
        matrix products (``KernelOptions.stencil_linear="blas"``)."""
        blk = tl.program_id(0)
        nl, pt, ok, ev, u0, u1, u2, inside, slot, hid, act, h, sig = _hidden(
            x_ptr, slot_ptr, pair_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr,
            feat_ptr, lane_stride, blk, N, n_active, grid_entries, eps, bound, two_bound, blob_a, blob_k, BLOCK, H, F, SMOOTH,
            True,
        )  # fmt: skip
        v0, v1, v2, ss, s = _normal(sig, nl, eps, BLOCK)
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        m = rows < N
        dn0 = tl.load(gout_ptr + rows * 3 + 0, mask=m, other=0.0)
        dn1 = tl.load(gout_ptr + rows * 3 + 1, mask=m, other=0.0)
        dn2 = tl.load(gout_ptr + rows * 3 + 2, mask=m, other=0.0)
        # nan_to_num: the gradient passes where the normal is finite
        dn0 = tl.where(_finite(v0 / s), dn0, 0.0)
        dn1 = tl.where(_finite(v1 / s), dn1, 0.0)
        dn2 = tl.where(_finite(v2 / s), dn2, 0.0)
        # n = v / s, s = sqrt(clamp(‖v‖², 1e-20)) (clamp passes the gradient where ‖v‖² >= 1e-20)
        ds = -(dn0 * v0 + dn1 * v1 + dn2 * v2) / (s * s)
        dss = tl.where(ss >= 1e-20, ds / (2.0 * s), 0.0)
        # v = −g, g_d = 0.5·(σ_d − σ_{d+3})/ε
        p0 = 0.5 * (-(dn0 / s + 2.0 * v0 * dss) / eps)
        p1 = 0.5 * (-(dn1 / s + 2.0 * v1 * dss) / eps)
        p2 = 0.5 * (-(dn2 / s + 2.0 * v2 * dss) / eps)
        q0 = _to_lanes(p0, BLOCK)
        q1 = _to_lanes(p1, BLOCK)
        q2 = _to_lanes(p2, BLOCK)
        dsig = tl.where(nl == 0, q0, tl.where(nl == 1, q1, tl.where(nl == 2, q2, 0.0)))
        dsig = tl.where(nl == 3, -q0, tl.where(nl == 4, -q1, tl.where(nl == 5, -q2, dsig)))
        ex = tl.exp(tl.minimum(h, 15.0))  # trunc_exp's gradient
        dh = tl.where(ev, dsig * ex, 0.0)
        # db₂ = Σ dh with each direction's two lanes paired first, p_d·(E_d − E_{d+3}): the same sum, whose terms
        # cancel (n is unchanged when every σ is scaled), so its fp32 residue is that of the differences, not of
        # the terms (a sum of the lanes one by one leaves a few ulps of |dh| ~ 300)
        db2 = p0 * (_col(ex, nl, 0, BLOCK) - _col(ex, nl, 3, BLOCK))
        db2 += p1 * (_col(ex, nl, 1, BLOCK) - _col(ex, nl, 4, BLOCK))
        db2 += p2 * (_col(ex, nl, 2, BLOCK) - _col(ex, nl, 5, BLOCK))
        lane = pt * 6 + nl
        keep = ok & (nl < 6)
        tl.store(dh_ptr + lane, dh, mask=keep)
        hc = tl.arange(0, H)
        on = act > 0  # = hid > 0 (ReLU's gradient mask)
        if DHID:
            dhid = tl.where(on, dh[:, None] * tl.load(w2_ptr + hc)[None, :], 0.0)
            tl.store(relu_ptr + lane[:, None] * H + hc[None, :], dhid, mask=keep[:, None])
        else:
            NW: tl.constexpr = (H + 15) // 16
            for w in tl.static_range(NW):
                bits = tl.where(on & ((hc // 16) == w)[None, :], (1 << (hc % 16))[None, :], 0)
                tl.store(relu_ptr + lane * NW + w, tl.sum(bits, axis=1), mask=keep)
        pa = part_ptr + blk * (H + 1)
        tl.store(pa + hc, tl.sum(dh[:, None] * act, axis=0))
        tl.store(pa + H, tl.sum(tl.where(m, db2, 0.0), axis=0))

    @triton.jit  # pragma: no cover - jit
    def _stencil_linear_bwd_kernel(
        feat_ptr, dh_ptr, relu_ptr, w1_ptr, w2_ptr, dfeat_ptr, part_ptr, R, FA, lane_stride, tiles,
        H: tl.constexpr, HP: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, TILE: tl.constexpr,
        PREC: tl.constexpr = "ieee",
    ):  # fmt: skip
        """Backward, part 2 (``tiles`` tiles of ``TILE`` lanes per program): the first layer's two gradients.
        ``dhid = [hid > 0]·dh·W₂[0]`` (the same fp32 products as autograd's), ``dfeat = dhid·W₁`` written
        transposed (``dfeat [2·n_active, ·]``, row stride ``dfeat_stride``: a level's two columns are contiguous
        for the scatter), and the program's partial sums ``part[pid] = (Σ dhidᵀ·feat [HP, FP], Σ dhid [HP])``.
        IEEE fp32 products (``PREC="ieee"``: no TF32, whatever torch's matmul flags say), or ``PREC="tf32x3"``
        (``KernelOptions.stencil_dot``: three TF32 tensor-core products, close to fp32)."""
        pid = tl.program_id(0)
        hc = tl.arange(0, HP)
        fc = tl.arange(0, FP)
        hm = hc < H
        fm = fc < FA
        NW: tl.constexpr = (H + 15) // 16
        w2 = tl.load(w2_ptr + hc, mask=hm, other=0.0)
        w1 = tl.load(w1_ptr + hc[:, None] * F + fc[None, :], mask=hm[:, None] & fm[None, :], other=0.0)
        acc = tl.zeros([HP, FP], dtype=tl.float32)
        db1 = tl.zeros([HP], dtype=tl.float32)
        for i in range(0, tiles):
            r = (pid * tiles + i) * TILE + tl.arange(0, TILE)
            rm = r < R
            dh = tl.load(dh_ptr + r, mask=rm, other=0.0)
            wm = rm[:, None] & hm[None, :]
            word = tl.load(relu_ptr + r[:, None] * NW + (hc // 16)[None, :], mask=wm, other=0)
            dhid = tl.where(((word >> (hc % 16)[None, :]) & 1) != 0, dh[:, None] * w2[None, :], 0.0)
            db1 += tl.sum(dhid, axis=0)
            tm = rm[:, None] & fm[None, :]
            feat = tl.load(feat_ptr + fc[None, :] * lane_stride + r[:, None], mask=tm, other=0.0)
            acc = tl.dot(tl.trans(dhid), feat, acc, input_precision=PREC)
            g = tl.dot(dhid, w1, input_precision=PREC)
            tl.store(dfeat_ptr + fc[None, :] * lane_stride + r[:, None], g, mask=tm)
        pw = part_ptr + pid * (HP * FP + HP)
        tl.store(pw + hc[:, None] * FP + fc[None, :], acc)
        tl.store(pw + HP * FP + hc, db1)

    @triton.jit  # pragma: no cover - jit
    def _stencil_scatter_kernel(
        x_ptr, slot_ptr, dfeat_ptr, g4_ptr, scale_ptr, stride_ptr, wmask_ptr, start_ptr, N, dfeat_stride,
        grid_entries, eps, bound, two_bound, BLOCK: tl.constexpr, SMOOTH: tl.constexpr, USE_ASM: tl.constexpr,
        ASM: tl.constexpr,
    ):  # fmt: skip
        """Backward, part 3 (programs: level, block of samples; levels fastest, as the grid backward): the
        table gradient of one level, ``G[corner rows] += w·dfeat``, with 16-byte pair reductions; the
        neighbours that sit in the sample's cell add theirs first and lane 6 issues one reduction for them."""
        lvl = tl.program_id(0)
        blk = tl.program_id(1)
        nl, pt, ok, x0, x1, x2, ev, u0, u1, u2, inside, slot = _lanes(
            x_ptr, slot_ptr, blk, N, eps, bound, two_bound, BLOCK
        )
        i0, i1, i2, f0, f1, f2, s1, s2, wmask, start, zkeep = _level(
            u0, u1, u2, lvl, scale_ptr, stride_ptr, wmask_ptr, start_ptr, SMOOTH
        )
        base = slot * grid_entries + start
        same = (
            (i0 == _to_lanes(_icol(i0, nl, 6, BLOCK), BLOCK))
            & (i1 == _to_lanes(_icol(i1, nl, 6, BLOCK), BLOCK))
            & (i2 == _to_lanes(_icol(i2, nl, 6, BLOCK), BLOCK))
        )
        share = inside & same
        anyshare = _to_lanes(tl.max(tl.reshape(share.to(tl.int32), [BLOCK, 8]), axis=1), BLOCK) > 0
        own = tl.where(nl == 6, ok & anyshare, inside & (share == 0))
        lane = pt * 6 + nl
        ga = tl.load(dfeat_ptr + (2 * lvl) * dfeat_stride + lane, mask=ev, other=0.0)
        gb = tl.load(dfeat_ptr + (2 * lvl + 1) * dfeat_stride + lane, mask=ev, other=0.0)
        for kk in tl.static_range(0, 8, 2):
            ia, wa, ib, wb, mk = _corner_pair(i0, i1, i2, f0, f1, f2, s1, s2, wmask, zkeep, own, kk)
            _red4(
                g4_ptr, base + ia, _group(wa * ga, share, nl, BLOCK), _group(wa * gb, share, nl, BLOCK),
                _group(wb * ga, share, nl, BLOCK), _group(wb * gb, share, nl, BLOCK), mk, BLOCK * 8, USE_ASM, ASM,
            )  # fmt: skip
