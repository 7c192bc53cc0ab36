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

:class:`FusedPointsTimeTV` (``KernelOptions(fused_time_tv=True)``, issue 26) computes the same loss and
gradient in two Triton kernels (:mod:`.timetv_kernels`) instead of ``T`` encoder calls each way: a point's
cell and corner weights are computed once per level and the ``T`` grids swept in registers, so no ``[N, L·C]``
feature tensor is written, no per-grid gradient is allocated, and the levels that ignore z read 4 corners,
not 8. Where it does not apply (:func:`fused_supported`) the encoder keeps :class:`PointsTimeTV`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from animate124.scene.grid import kernels as K
from animate124.scene.grid import launch
from animate124.scene.grid import timetv_kernels as TK
from animate124.scene.grid.layout import LevelBuffers
from animate124.scene.grid.options import KernelOptions

logger = logging.getLogger(__name__)

BLOCK = 128  # points per program; >= 32·WARPS, so each point's vector reductions run on one thread
WARPS = 4

#: ``encode(u [N,3], table_slice [E,C]) -> [N, L·C]`` (the encoder's plain call, autograd-capable)
SliceEncode = Callable[[Tensor, Tensor], Tensor]


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
        ctx.save_for_backward(table, u)
        ctx.encode = encode
        denom = (t_size - 1) * num_levels
        ctx.k = 1.0 / denom
        return total / denom

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


def fused_supported(table: Tensor, level_dim: int, bufs: LevelBuffers) -> bool:
    """The fused kernels cover tiled grids (no hashed level) of 2 fp32 features per level whose stacked
    table ``[T, E, 2]`` fits the kernels' int32 indices, with Triton on the table's device (CUDA, or the CPU
    under ``TRITON_INTERPRET=1``). Anything else takes :class:`PointsTimeTV`."""
    return (
        K.HAS_TRITON
        and launch.is_available(table.device)
        and table.dim() == 3
        and table.shape[0] >= 2
        and level_dim == 2
        and table.shape[-1] == 2
        and table.dtype == torch.float32
        and not bufs.any_hashed
        and table.numel() < 2**31
    )


def _blocks(n: int, options: KernelOptions) -> list[tuple[int, int]]:
    return list(launch._chunks(n, BLOCK, options))


class FusedPointsTimeTV(torch.autograd.Function):
    """``apply(table [T,E,2], u [N,3], bufs, num_levels, smooth, options, state) -> scalar``: the loss of
    :class:`PointsTimeTV` by the fused kernels (module docstring); gradient for ``table`` only."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx: Any, *args: Any) -> Tensor:
        table, u, bufs, num_levels, smooth, options, state = args
        t_size, entries = table.shape[0], table.shape[1]
        table = table.contiguous()
        u = u.float().contiguous()
        n = u.shape[0]
        nblocks = K.triton.cdiv(n, BLOCK)
        part = torch.empty(max(nblocks, 1), num_levels, device=u.device, dtype=torch.float32)
        if n == 0:
            part.zero_()
        for s, e in _blocks(n, options):
            TK._tv_fwd_kernel[(num_levels, K.triton.cdiv(e - s, BLOCK))](
                u[s:e], table, part[s // BLOCK :], bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32,
                e - s, t_size, entries, num_levels, BLOCK=BLOCK, SMOOTH=smooth, num_warps=WARPS,
            )  # fmt: skip
        denom = (t_size - 1) * num_levels
        ctx.save_for_backward(table, u)
        ctx.meta = (bufs, num_levels, smooth, options, state, 2.0 / (denom * max(n, 1)))
        return part.sum() / float(max(n, 1) * denom)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, *grads: Any) -> Any:
        (grad,) = grads
        table, u = ctx.saved_tensors
        bufs, num_levels, smooth, options, state, scale = ctx.meta
        t_size, entries = table.shape[0], table.shape[1]
        n = u.shape[0]
        coef = (grad.float() * scale).reshape(1).contiguous()  # 2k/N · dL_total/dL, stays on the device
        use_asm = BLOCK >= 32 * WARPS and launch.vec2_enabled(u.device, options, state)
        for attempt in (0, 1):
            out = torch.zeros(t_size * entries, 2, device=u.device, dtype=torch.float32)
            try:
                for s, e in _blocks(n, options):
                    TK._tv_bwd_kernel[(num_levels, K.triton.cdiv(e - s, BLOCK))](
                        u[s:e], table, out, coef, bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32,
                        e - s, t_size, entries, BLOCK=BLOCK, SMOOTH=smooth, USE_ASM=use_asm, ASM=K.VEC2_ASM,
                        num_warps=WARPS,
                    )  # fmt: skip
                break
            except Exception as err:  # pragma: no cover - GPU/toolchain specific
                if attempt or not use_asm:
                    raise
                logger.warning("vector atomics unavailable (%s); this encoder now uses scalar atomics", err)
                if state is not None:
                    state.vec2_error = str(err)
                use_asm = False
        return out.view(table.shape), None, None, None, None, None, None
