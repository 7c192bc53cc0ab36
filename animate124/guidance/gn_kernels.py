"""Triton kernels of the fused group norm (+ SiLU) in :mod:`animate124.guidance.groupnorm`.

Imported lazily (Triton's interpreter switch ``TRITON_INTERPRET=1`` must be set before the kernels are
decorated). Every kernel sees its tensor as ``[N, C, S]`` through three strides, so NCHW, channels-last and
the attention block's transposed ``[N, C, HW]`` views are read in place. One program owns one group ``g`` of
one image ``n`` (``CG = C / G`` channels) and one or more tiles of ``BLOCK_S`` spatial positions; all
arithmetic is fp32, loads and stores are in the tensors' own dtypes.

* :func:`gn_stats_kernel`: per program, the count, mean and centred sum of squares ``M2`` of its tiles
  (each tile two-pass in registers, tiles merged with Chan's formula);
* :func:`gn_finalize_kernel`: per group, merges the programs' partials (Chan again) into ``mean`` and
  ``rstd = 1/√(M2/count + eps)`` (the biased variance, as ``torch.nn.functional.group_norm``);
* :func:`gn_apply_kernel`: ``y = act(x̂·w_c + b_c)``, ``x̂ = (x − mean)·rstd``, act = SiLU or identity;
* :func:`gn_bwd_partial_kernel`: per program, ``Σ ĝ`` and ``Σ ĝ·x̂`` with ``ĝ = w_c·∂L/∂z``
  (``∂L/∂z = dy·σ(z)(1 + z(1 − σ(z)))`` through the SiLU, as PyTorch's ``silu_backward``);
* :func:`gn_bwd_apply_kernel`: ``dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))`` (group means over ``CG·S``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(base, c, cmask, s, S, s_c, s_s):
    m = cmask[:, None] & (s < S)[None, :]
    return tl.load(base + c[:, None] * s_c + s[None, :] * s_s, mask=m, other=0.0).to(tl.float32), m


@triton.jit
def _group(ng, G, CG, BLOCK_C: tl.constexpr):
    """Program ``ng``'s image ``n``, its group's channel indices ``c`` (padded to ``BLOCK_C``) and their mask."""
    cc = tl.arange(0, BLOCK_C)
    return ng // G, (ng % G) * CG + cc, cc < CG


@triton.jit
def _affine(W, B, c, cmask):
    return tl.load(W + c, mask=cmask, other=0.0).to(tl.float32), tl.load(B + c, mask=cmask, other=0.0).to(
        tl.float32
    )


@triton.jit
def gn_stats_kernel(
    X, PCNT, PMEAN, PM2, S, CG, G, P, TILES, sx_n, sx_c, sx_s,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0)
    pb = tl.program_id(1)
    n, c, cmask = _group(ng, G, CG, BLOCK_C)
    base = X + n.to(tl.int64) * sx_n
    cnt = tl.zeros([BLOCK_C], tl.float32).sum(0)
    mean = tl.zeros([BLOCK_C], tl.float32).sum(0)
    m2 = tl.zeros([BLOCK_C], tl.float32).sum(0)
    for t in range(TILES):
        s = (pb * TILES + t) * BLOCK_S + tl.arange(0, BLOCK_S)
        x, m = _tile(base, c, cmask, s, S, sx_c, sx_s)
        k = tl.sum(tl.sum(m.to(tl.float32), 1), 0)
        tmean = tl.sum(tl.sum(x, 1), 0) / tl.maximum(k, 1.0)
        d = tl.where(m, x - tmean, 0.0)
        tm2 = tl.sum(tl.sum(d * d, 1), 0)
        tot = cnt + k
        w = k / tl.maximum(tot, 1.0)
        delta = tmean - mean
        mean = mean + delta * w
        m2 = m2 + tm2 + delta * delta * cnt * w
        cnt = tot
    o = ng * P + pb
    tl.store(PCNT + o, cnt)
    tl.store(PMEAN + o, mean)
    tl.store(PM2 + o, m2)


@triton.jit
def gn_finalize_kernel(PCNT, PMEAN, PM2, MEAN, RSTD, P, eps, BLOCK_P: tl.constexpr):
    ng = tl.program_id(0)
    p = tl.arange(0, BLOCK_P)
    pm = p < P
    o = ng * P + p
    cnt = tl.load(PCNT + o, mask=pm, other=0.0)
    pmean = tl.load(PMEAN + o, mask=pm, other=0.0)
    pm2 = tl.load(PM2 + o, mask=pm, other=0.0)
    total = tl.sum(cnt, 0)
    mean = tl.sum(cnt * pmean, 0) / total
    d = pmean - mean
    m2 = tl.sum(pm2 + cnt * d * d, 0)
    var = tl.maximum(m2 / total, 0.0)
    tl.store(MEAN + ng, mean)
    tl.store(RSTD + ng, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _z(x, mean, rstd, w, b):
    xhat = (x - mean) * rstd
    return xhat, xhat * w[:, None] + b[:, None]


@triton.jit
def gn_apply_kernel(
    X, Y, MEAN, RSTD, W, B, S, CG, G, sx_n, sx_c, sx_s, sy_n, sy_c, sy_s,
    ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0)
    n, c, cmask = _group(ng, G, CG, BLOCK_C)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    x, m = _tile(X + n.to(tl.int64) * sx_n, c, cmask, s, S, sx_c, sx_s)
    w, b = _affine(W, B, c, cmask)
    _, z = _z(x, tl.load(MEAN + ng), tl.load(RSTD + ng), w, b)
    if ACT:
        z = z * tl.sigmoid(z)
    ptr = Y + n.to(tl.int64) * sy_n + c[:, None] * sy_c + s[None, :] * sy_s
    tl.store(ptr, z.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _dxhat(x, dy, mean, rstd, w, b, ACT: tl.constexpr):
    xhat, z = _z(x, mean, rstd, w, b)
    if ACT:
        sig = tl.sigmoid(z)
        dy = dy * (sig * (1.0 + z * (1.0 - sig)))
    return xhat, dy * w[:, None]


@triton.jit
def gn_bwd_partial_kernel(
    X, DY, MEAN, RSTD, W, B, PSUM, S, CG, G, P, NG, TILES, sx_n, sx_c, sx_s, sd_n, sd_c, sd_s,
    ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0)
    pb = tl.program_id(1)
    n, c, cmask = _group(ng, G, CG, BLOCK_C)
    w, b = _affine(W, B, c, cmask)
    mean = tl.load(MEAN + ng)
    rstd = tl.load(RSTD + ng)
    acc1 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for t in range(TILES):
        s = (pb * TILES + t) * BLOCK_S + tl.arange(0, BLOCK_S)
        x, m = _tile(X + n.to(tl.int64) * sx_n, c, cmask, s, S, sx_c, sx_s)
        dy, _ = _tile(DY + n.to(tl.int64) * sd_n, c, cmask, s, S, sd_c, sd_s)
        xhat, gh = _dxhat(x, dy, mean, rstd, w, b, ACT)
        gh = tl.where(m, gh, 0.0)
        acc1 += gh
        acc2 += gh * xhat
    o = ng * P + pb
    tl.store(PSUM + o, tl.sum(tl.sum(acc1, 1), 0))
    tl.store(PSUM + NG * P + o, tl.sum(tl.sum(acc2, 1), 0))


@triton.jit
def gn_bwd_apply_kernel(
    X, DY, DX, MEAN, RSTD, W, B, SUMS, S, CG, G, NG, sx_n, sx_c, sx_s, sd_n, sd_c, sd_s, so_n, so_c, so_s,
    ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    ng = tl.program_id(0)
    n, c, cmask = _group(ng, G, CG, BLOCK_C)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    w, b = _affine(W, B, c, cmask)
    mean = tl.load(MEAN + ng)
    rstd = tl.load(RSTD + ng)
    count = (CG * S).to(tl.float32)
    m1 = tl.load(SUMS + ng) / count
    m2 = tl.load(SUMS + NG + ng) / count
    x, m = _tile(X + n.to(tl.int64) * sx_n, c, cmask, s, S, sx_c, sx_s)
    dy, _ = _tile(DY + n.to(tl.int64) * sd_n, c, cmask, s, S, sd_c, sd_s)
    xhat, gh = _dxhat(x, dy, mean, rstd, w, b, ACT)
    dx = rstd * (gh - m1 - xhat * m2)
    ptr = DX + n.to(tl.int64) * so_n + c[:, None] * so_c + s[None, :] * so_s
    tl.store(ptr, dx.to(DX.dtype.element_ty), mask=m)
