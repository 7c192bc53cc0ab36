"""Torch reference of the grid encoding (any device, autograd) and the table form of the time TV.

Trilinear weights (or smoothstep) over the 8 corners of each level's cell, corner rows from
:mod:`animate124.scene.grid.layout`; points outside the unit cube give zero features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from animate124.scene.grid.layout import HASH_PRIMES, UINT32, LevelBuffers

# corner bit patterns: corner k uses x+bit0, y+bit1, z+bit2 (torch-ngp order)
CORNER_BITS = [(k & 1, (k >> 1) & 1, (k >> 2) & 1) for k in range(8)]


def corner_index(pg: Tensor, bits: tuple[int, int, int], bufs: LevelBuffers, n_levels: int) -> Tensor:
    """Global table rows ``[N, La]`` of one corner for the first ``n_levels`` levels.

    ``pg``: ``[N, La, 3]`` int64 floor grid coordinates.
    """
    cx = pg[..., 0] + bits[0]
    cy = pg[..., 1] + bits[1]
    cz = pg[..., 2] + bits[2]
    strides = bufs.strides[:n_levels]
    tiled = cx * strides[:, 0] + cy * strides[:, 1] + cz * strides[:, 2]
    hashed = (cx * HASH_PRIMES[0]) ^ ((cy * HASH_PRIMES[1]) & UINT32) ^ ((cz * HASH_PRIMES[2]) & UINT32)
    idx = torch.where(bufs.hashed[:n_levels], hashed, tiled) & UINT32
    return idx % bufs.sizes[:n_levels] + bufs.starts[:n_levels]


def gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` (``[*idx.shape, C]``) whose backward adds the rows in a fixed order.

    Plain indexing differentiates to ``index_put_(accumulate=True)``, which on a multi-threaded CPU adds
    the rows of repeated indices in an order that changes from run to run (two runs of a stage differ in
    the last bits, and the difference grows with training); ``index_select`` differentiates to
    ``index_add_``, which on the CPU adds them in index order (and is about three times faster there).
    """
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[-1])


def interp_weights(frac: Tensor, interpolation: str) -> Tensor:
    if interpolation == "smoothstep":
        return frac * frac * (3.0 - 2.0 * frac)
    return frac


def encode_torch(
    u: Tensor,
    table: Tensor,
    bufs: LevelBuffers,
    n_levels: int,
    level_dim: int,
    interpolation: str = "linear",
    time_rows: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Reference encoder, vectorised over points and levels (8 corner iterations only).

    Args:
        u: ``[N, 3]`` unit-cube coordinates (outside [0,1] -> zero features).
        table: ``[E_all, C]`` flattened table (for time grids all ``T`` grids stacked).
        n_levels: number of active levels (the rest are not computed).
        time_rows: optional ``(row_lo [N,1], row_hi [N,1], w_hi [N,1])`` row offsets of the two time
            grids and the weight of the later one (SPEC 3.1 "Time").

    Returns:
        ``[N, n_levels, C]`` features in the table dtype promoted to float32.
    """
    n = u.shape[0]
    scales = bufs.scales[:n_levels]
    pos = u[:, None, :] * scales[None, :, None] + 0.5  # [N, La, 3]
    pgf = torch.floor(pos)
    frac = interp_weights(pos - pgf, interpolation)
    pg = pgf.long()
    table = table.float()
    out = torch.zeros(n, n_levels, level_dim, dtype=torch.float32, device=u.device)
    for bits in CORNER_BITS:
        w = torch.ones_like(frac[..., 0])
        for d in range(3):
            w = w * (frac[..., d] if bits[d] else 1.0 - frac[..., d])
        idx = corner_index(pg, bits, bufs, n_levels)  # [N, La]
        if time_rows is None:
            val = gather_rows(table, idx)
        else:
            row_lo, row_hi, w_hi = time_rows
            v_lo = gather_rows(table, idx + row_lo)
            v_hi = gather_rows(table, idx + row_hi)
            val = v_hi * w_hi[..., None] + v_lo * (1.0 - w_hi[..., None])
        out = out + w[..., None] * val
    inside = ((u >= 0) & (u <= 1)).all(dim=-1)
    return out * inside[:, None, None].to(out.dtype)


class TableTimeTV(torch.autograd.Function):
    """Time TV on the stacked table ``[T, E, C]``, chunked so no ``[T-1, E, C]`` temporary is kept.

    ``loss = Σ_{i=0}^{T-2} mean_e Σ_c (W_i[e,c] − W_{i+1}[e,c])² / ((T−1)·L)``;
    ``dW_i = 2k·((W_i − W_{i−1})·[i>0] + (W_i − W_{i+1})·[i<T−1])`` with ``k = 1/(E·(T−1)·L)``.
    ``apply(table, num_levels, chunk)``.
    """

    @staticmethod
    def forward(ctx, table: Tensor, num_levels: int, chunk: int) -> Tensor:  # type: ignore[override]
        t, e, _ = table.shape
        k = 1.0 / (e * (t - 1) * num_levels)
        total = table.new_zeros((), dtype=torch.float32)
        for s in range(0, t - 1, chunk):
            stop = min(s + chunk, t - 1)
            d = table[s:stop].float() - table[s + 1 : stop + 1].float()
            total = total + d.square().sum()
        ctx.save_for_backward(table)
        ctx.k = k
        ctx.chunk = chunk
        return total * k

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (table,) = ctx.saved_tensors
        t = table.shape[0]
        out = torch.empty_like(table)
        c = 2.0 * ctx.k * grad
        for s in range(0, t, ctx.chunk):
            stop = min(s + ctx.chunk, t)
            lo, hi = max(s - 1, 0), min(stop + 1, t)
            full = table[lo:hi].float()  # W[lo:hi]; w[j] = W[s + j] = full[a + j]
            a, n = s - lo, stop - s
            w = full[a : a + n]
            g = torch.zeros_like(w)
            i0 = 1 if s == 0 else 0  # W_i − W_{i−1} exists for i > 0
            g[i0:] += w[i0:] - full[a + i0 - 1 : a + n - 1]
            m = n if stop < t else n - 1  # W_i − W_{i+1} exists for i < T − 1
            g[:m] += w[:m] - full[a + 1 : a + 1 + m]
            out[s:stop] = (c * g).to(out.dtype)
        return out, None, None
