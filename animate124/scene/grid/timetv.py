"""The points form of the time TV (SPEC 3.6) as one autograd node over the whole stacked table.

``L = Σ_{i=0}^{T-2} mean_x ‖f_i(x) − f_{i+1}(x)‖² · k`` with ``f_i`` the features of time grid ``i`` at the
step's random points and ``k = 1/((T−1)·L)``. Written the plain way (one encoder call per grid on the
slice ``table[i]``), autograd turns each of the ``T`` slices' gradients into a table-sized gradient and
adds them up: 64 × (462 MB fill + add) per step at paper settings, about 28 ms on an H200
(BENCHMARKS.md §8.7). :class:`PointsTimeTV` computes the same loss with the same encoder calls, then in
backward writes each grid's gradient straight into its slice of one table gradient:

    dL/df_i = 2k/N · ((f_i − f_{i−1})·[i > 0] + (f_i − f_{i+1})·[i < T−1])

with the features recomputed grid by grid (three alive at a time; nothing but the points is kept between
forward and backward). Same loss bit for bit, same gradient up to fp32 summation order
(``tests/test_scene_encoding.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: ``encode(u [N,3], table_slice [E,C]) -> [N, L·C]`` (the encoder's plain call, autograd-capable)
SliceEncode = Callable[[Tensor, Tensor], Tensor]


def _keep(ctx: Any, table: Tensor, u: Tensor, total: Tensor, num_levels: int) -> Tensor:
    """Keep the table and the points for backward, and ``k = 1/((T−1)·L)``; returns the loss ``total·k``."""
    ctx.save_for_backward(table, u)
    denom = (table.shape[0] - 1) * num_levels
    ctx.k = 1.0 / denom
    return total / denom


class PointsTimeTV(torch.autograd.Function):
    """``apply(table [T,E,C], u [N,3], encode, num_levels) -> scalar`` (module docstring)."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        table, u, encode, num_levels = args
        t_size = table.shape[0]
        total = table.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            prev = encode(u, table[0])
            for i in range(1, t_size):
                cur = encode(u, table[i])
                total = total + (prev - cur).square().sum(-1).mean()
                prev = cur
        ctx.encode = encode
        return _keep(ctx, table, u, total, num_levels)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (grad,) = grads
        table, u = ctx.saved_tensors
        encode = ctx.encode
        t_size, n = table.shape[0], u.shape[0]
        out = torch.empty(table.shape, device=table.device)  # every grid's slice is written below
        c = grad.float() * (2.0 * ctx.k / n)

        def feats(i: int) -> tuple[Tensor, Tensor]:
            leaf = table[i].detach().requires_grad_(True)
            with torch.enable_grad():
                return leaf, encode(u, leaf)

        nxt = feats(0)
        prev_f: Tensor | None = None
        for i in range(t_size):
            leaf, f = nxt
            nxt = feats(i + 1) if i + 1 < t_size else None
            fd = f.detach()
            g = torch.zeros_like(fd)
            if prev_f is not None:
                g += fd - prev_f
            if nxt is not None:
                g += fd - nxt[1].detach()
            (gi,) = torch.autograd.grad(f, leaf, g * c)
            out[i] = gi.float()
            prev_f = fd
        return out.to(table.dtype), None, None, None


#: grids per encoder call in :class:`BatchedPointsTimeTV` (8: 8 × 100,000 points, about 100 MB of features)
TV_GRIDS_PER_CALL = 8


class BatchedPointsTimeTV(torch.autograd.Function):
    """``apply(table [T,E,C], u [N,3], encode_grids, num_levels, grids_per_call) -> scalar``: the loss and
    gradient of :class:`PointsTimeTV` (the same formulas) with the grids encoded ``grids_per_call`` at a time
    (issue 26): ``encode_grids(u [N,3], tables [K,E,C]) -> [K, N, L·C]`` gives the features of ``K`` consecutive
    grids at the same points in one encoder call, autograd-capable w.r.t. ``tables``. :class:`PointsTimeTV` makes two encoder calls per grid and one autograd call per grid, 64 + 192
    calls a step at paper settings, each a few tens of microseconds of GPU work behind its launch overhead;
    here each call covers ``grids_per_call`` grids (the clip path's slot kernels, one slot per grid:
    ``TimeGridEncoding.time_tv_loss``). Nothing but the points is kept between forward and backward. The same
    loss and gradient up to fp32 summation order (``tests/test_scene_timetv.py``)."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        table, u, encode_grids, num_levels, per_call = args
        t_size = table.shape[0]
        total = table.new_zeros((), dtype=torch.float32)
        with torch.no_grad():
            prev: Tensor | None = None  # the last grid of the previous call
            for a in range(0, t_size, per_call):
                f = encode_grids(u, table[a : a + per_call])
                if prev is not None:
                    total = total + (prev - f[0]).square().sum(-1).mean()
                if f.shape[0] > 1:
                    total = total + (f[:-1] - f[1:]).square().sum(-1).mean(-1).sum()
                prev = f[-1]
        ctx.encode_grids, ctx.per_call = encode_grids, per_call
        return _keep(ctx, table, u, total, num_levels)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (grad,) = grads
        table, u = ctx.saved_tensors
        encode_grids, per_call = ctx.encode_grids, ctx.per_call
        t_size, n = table.shape[0], u.shape[0]
        out = torch.empty(table.shape, device=table.device)  # every grid's slice is written below
        c = grad.float() * (2.0 * ctx.k / n)
        for a in range(0, t_size, per_call):
            b = min(a + per_call, t_size)
            leaf = table[a:b].detach().requires_grad_(True)
            with torch.enable_grad():
                f = encode_grids(u, leaf)
            fd = f.detach()
            with torch.no_grad():  # dL/df_i = 2k/N · ((f_i − f_{i−1})·[i > 0] + (f_i − f_{i+1})·[i < T−1])
                if b - a > 1:  # with d_i = f_{i+1} − f_i: g_i = d_{i−1} − d_i (f_i − f_{i+1} = −d_i exactly)
                    d = fd[1:] - fd[:-1]
                    g = torch.empty_like(fd)
                    g[0] = 0.0
                    g[1:] = d
                    g[:-1] -= d
                else:
                    g = torch.zeros_like(fd)
                if a > 0:
                    g[0] += fd[0] - encode_grids(u, table[a - 1 : a])[0]
                if b < t_size:
                    g[-1] += fd[-1] - encode_grids(u, table[b : b + 1])[0]
                g *= c
            (gi,) = torch.autograd.grad(f, leaf, g)
            out[a:b] = gi.float()
        return out.to(table.dtype), None, None, None, None
