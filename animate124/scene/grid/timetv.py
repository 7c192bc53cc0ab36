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


def _feature_grad(d: Tensor | None, first: Tensor | None, last: Tensor | None, c: float, g: Tensor) -> None:
    """Writes ``dL/df_i = c·((f_i − f_{i−1})·[i > 0] + (f_i − f_{i+1})·[i < T−1])`` for one call's ``K`` grids
    into ``g [K, N, F]``, from the differences the loss uses too: ``d [K−1, N, F]`` with ``d_i = f_{i+1} − f_i``
    (None when ``K = 1``), ``first = f_0 − f_prev`` and ``last = f_{K−1} − f_next`` against the grids just before
    and after the call (None at the table's ends). Written as ``g_i = d_{i−1} − d_i`` (``f_i − f_{i+1} = −d_i``
    exactly)."""
    if d is not None:
        g[0] = 0.0
        g[1:] = d
        g[:-1] -= d
    else:
        g.zero_()
    if first is not None:
        g[0] += first
    if last is not None:
        g[-1] += last
    g.mul_(c)


class BatchedPointsTimeTV(torch.autograd.Function):
    """``apply(table [T,E,C], u [N,3], encode_grids, num_levels, grids_per_call, grad_enabled[, replay]) -> scalar``
    (``grad_enabled``: the caller's ``torch.is_grad_enabled()``; ``replay(u)``: the one pass from a CUDA graph,
    :mod:`.tvgraph`, or None to run it): the loss and gradient of :class:`PointsTimeTV`
    (the same formulas) with the grids encoded ``grids_per_call`` at a time
    (issue 26): ``encode_grids(u [N,3], tables [K,E,C]) -> [K, N, L·C]`` gives the features of ``K`` consecutive
    grids at the same points in one encoder call, autograd-capable w.r.t. ``tables``. :class:`PointsTimeTV` makes
    two encoder calls per grid and one autograd call per grid, 64 + 192 calls a step at paper settings, each a few
    tens of microseconds of GPU work behind its launch overhead; here each call covers ``grids_per_call`` grids
    (the clip path's slot kernels, one slot per grid: ``TimeGridEncoding.time_tv_loss``;
    ``KernelOptions.tv_grids_per_call``, 8 by default).

    **One pass.** The loss is quadratic in the features and its gradient linear in the upstream scalar, so the
    forward encodes each call's grids once, with grad, and computes both the loss and the table gradient for an
    upstream gradient of 1, ``G``; the backward returns ``G·grad``. Before 2026-12-07 the forward encoded every grid
    without grad for the loss and the backward encoded them all again with grad: 8.8 ms of a dynamic step's
    kernels on an H100 went to that first pass (BENCHMARKS.md §15.10, §15.15). A grid's left neighbour is the
    previous call's last grid, whose features that call already has (the slot kernels give a grid the same
    bits in any call: one slot, blend weight 0); its right neighbour, the next call's first grid, is one more
    slot of the same call, with a zero feature gradient (before 2026-12-08: a separate one-grid encoder call,
    7 more launches a step at paper settings; the TV was measured launch-bound, BENCHMARKS.md §15.16).
    ``G`` (table-sized, fp32) waits from the forward to the backward; the time TV is the step's last term, so
    its backward runs first, where the old backward built the same table-sized gradient. The same loss bit for bit, and the gradient up to one fp32 rounding of the product by the
    upstream scalar (``tests/test_scene_timetv.py``). Called without grad for the table (``no_grad``, or a
    frozen table), the forward computes the loss alone."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        table, u, encode_grids, num_levels, per_call, with_grad, *rest = args
        replay = rest[0] if rest else None
        # the caller's grad mode (a Function's forward runs without grad): no table gradient under no_grad
        want_grad = bool(with_grad) and bool(ctx.needs_input_grad[0])
        out = replay(u) if want_grad and replay is not None else None  # (loss, G) from a CUDA graph, or None
        if out is None:
            out = batched_tv_pass(table, u, encode_grids, num_levels, per_call, want_grad)
        total, grad_table = out
        ctx.table_dtype = table.dtype
        if want_grad:
            ctx.save_for_backward(grad_table)
        return total

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (grad,) = grads
        (grad_table,) = ctx.saved_tensors
        rest = (None,) * (len(ctx.needs_input_grad) - 1)  # six or seven inputs (with ``replay``)
        return ((grad_table * grad.float()).to(ctx.table_dtype), *rest)


def batched_tv_pass(
    table: Tensor, u: Tensor, encode_grids: Callable[[Tensor, Tensor], Tensor], num_levels: int, per_call: int,
    want_grad: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """:class:`BatchedPointsTimeTV`'s one pass: the loss ``[]`` and, with ``want_grad``, the table gradient ``G``
    for an upstream gradient of 1 (fp32, the table's shape; else None). A pure function of the table and the
    points, so it can be replayed from a CUDA graph (:mod:`.tvgraph`)."""
    t_size, n = table.shape[0], u.shape[0]
    # every slice of the table gradient is written below
    grad_table = torch.empty(table.shape, device=table.device) if want_grad else None
    c = 2.0 / ((t_size - 1) * num_levels * n)  # 2k/N, dL/df's factor for an upstream gradient of 1
    total = table.new_zeros((), dtype=torch.float32)
    prev: Tensor | None = None  # the features of the previous call's last grid
    with torch.autocast(table.device.type, enabled=False):
        for a in range(0, t_size, per_call):
            b = min(a + per_call, t_size)
            # with grad, the next call's first grid rides along as one more slot: its features are grid
            # b−1's right neighbour; its feature gradient is zero (rows the backward skips)
            e = min(b + 1, t_size) if want_grad else b
            leaf = table[a:e].detach().requires_grad_(want_grad)
            with torch.set_grad_enabled(want_grad):
                f = encode_grids(u, leaf)
            fd = f.detach()
            own = fd[: b - a]
            with torch.no_grad():
                # each difference once, for the loss and the gradient ((x − y)² and (y − x)² are the same bits)
                first = own[0] - prev if prev is not None else None
                d = own[1:] - own[:-1] if b - a > 1 else None
                if first is not None:
                    total = total + first.square().sum(-1).mean()
                if d is not None:
                    total = total + d.square().sum(-1).mean(-1).sum()
                if want_grad:
                    g = torch.empty_like(fd)
                    if e > b:
                        g[b - a :] = 0.0
                    last = own[-1] - fd[b - a] if e > b else None
                    _feature_grad(d, first, last, c, g[: b - a])
            if want_grad:
                (gi,) = torch.autograd.grad(f, leaf, g)
                grad_table[a:b] = gi[: b - a].float()
            prev = own[-1]
    return total / ((t_size - 1) * num_levels), grad_table
