"""Triton kernels for the multiresolution grid encoding (SPEC 3.1), static and time-stacked.

Same maths as :func:`animate124.scene.encoding.encode_torch` (torch-ngp ``gridencoder``):

* forward: one program per (block of points, level); 8 corners, each a vectorised load of the ``C``
  features of one table row, fp32 accumulation, written into the ``[N, L·C]`` output;
* backward: recomputes corners and weights and ``atomic_add``s ``w·dL/df`` into an fp32 table
  gradient (like torch-ngp's ``kernel_grid_backward``);
* time-stacked tables (``[T·E, C]``): each corner reads the rows of grid ``⌊t(T−1)⌋`` and, when
  ``t(T−1)`` is not an integer, of grid ``⌈t(T−1)⌉``, so a point costs at most 2× a static one.

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
    from animate124.scene.encoding import _LevelBuffers

# defaults; benchmarks/bench_encoding.py sweeps these on the GPU
FWD_BLOCK = 64  # H100 sweep: 0.85 ms vs 1.04 ms at 128 (2^20 points, BENCHMARKS.md)
FWD_WARPS = 4
BWD_BLOCK = 128
BWD_WARPS = 4
# Backward program order: level-fastest spreads concurrent atomics over all levels (see the kernel).
BWD_LEVEL_FAST = os.environ.get("ANIMATE124_GRID_BWD_ORDER", "level") == "level"

# Backward atomics: "auto" uses one 8-byte vector reduction (PTX ``red.global.add.v2.f32``, sm_90+) per
# corner when level_dim == 2, else Triton's scalar ``atomic_add``; "scalar" forces the latter.
# Override with ANIMATE124_GRID_ATOMICS=scalar|vec2|auto.
ATOMICS = os.environ.get("ANIMATE124_GRID_ATOMICS", "auto")
VEC2_ASM = "{ .reg .pred p; setp.ne.b32 p, $4, 0; @p red.global.add.v2.f32 [$1], {$2, $3}; mov.u32 $0, 0; }"
_VEC2_BROKEN: list[str] = []


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
        if VEC2:
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


def _launch_args(bufs: _LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32, bufs.hashed32)


class _GridEncodeFn(torch.autograd.Function):
    """Autograd wrapper: ``(u [N,3], table [E,C], t [N] | None) -> [N, L·C]``; grad only for ``table``."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx,
        u: Tensor,
        table: Tensor,
        t: Tensor | None,
        bufs: _LevelBuffers,
        n_active: int,
        num_levels: int,
        level_dim: int,
        smooth: bool,
        time_grid_size: int,
        entries_per_grid: int,
        block: int,
        warps: int,
        bwd_block: int,
        bwd_warps: int,
    ) -> Tensor:
        n = u.shape[0]
        u = u.contiguous()
        table = table.contiguous()
        has_time = t is not None
        t_arg = t.contiguous() if has_time else u  # dummy pointer when unused
        alloc = torch.empty if n_active == num_levels else torch.zeros
        out = alloc(n, num_levels * level_dim, device=u.device, dtype=torch.float32)
        grid = (triton.cdiv(n, block), n_active)
        _grid_fwd_kernel[grid](
            u, t_arg, table, out, *_launch_args(bufs),
            n, out.stride(0), float(max(time_grid_size - 1, 0)), entries_per_grid,
            C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(u, t_arg)
        ctx.meta = (bufs, n_active, level_dim, smooth, time_grid_size, entries_per_grid, has_time)
        ctx.bwd_launch = (bwd_block, bwd_warps)
        ctx.table_shape = table.shape
        ctx.table_dtype = table.dtype
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        u, t_arg = ctx.saved_tensors
        bufs, n_active, level_dim, smooth, time_grid_size, entries_per_grid, has_time = ctx.meta
        n = u.shape[0]
        grad_table = torch.zeros(ctx.table_shape, device=u.device, dtype=torch.float32)
        if ctx.needs_input_grad[1] and n > 0:
            grad_out = grad_out.contiguous()
            block, warps = ctx.bwd_launch
            lf = BWD_LEVEL_FAST and triton.cdiv(n, block) <= 65535  # grid y is capped at 65535
            grid = (n_active, triton.cdiv(n, block)) if lf else (triton.cdiv(n, block), n_active)
            args = (
                u, t_arg, grad_out, grad_table, *_launch_args(bufs),
                n, grad_out.stride(0), float(max(time_grid_size - 1, 0)), entries_per_grid,
            )  # fmt: skip
            vec2 = level_dim == 2 and _vec2_atomics_enabled(u.device)
            try:
                _grid_bwd_kernel[grid](
                    *args, C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth,
                    VEC2=vec2, ASM=VEC2_ASM, LEVEL_FAST=lf, num_warps=warps,
                )  # fmt: skip
            except Exception as err:  # pragma: no cover - GPU/toolchain specific
                if not vec2:
                    raise
                _disable_vec2(err)
                grad_table.zero_()
                _grid_bwd_kernel[grid](
                    *args, C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth,
                    VEC2=False, ASM=VEC2_ASM, LEVEL_FAST=lf, num_warps=warps,
                )  # fmt: skip
        return (None, grad_table.to(ctx.table_dtype)) + (None,) * 12


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
) -> Tensor:
    """Encode unit-cube points ``u [N,3]`` with ``table [E,C]`` (or stacked ``[T·E, C]`` with ``t [N]``).

    Returns ``[N, num_levels·C]`` float32; levels ``>= n_active`` are zero. ``block``/``warps`` override
    the launch configuration (benchmarks).
    """
    if not HAS_TRITON:  # pragma: no cover - depends on the environment
        raise RuntimeError("triton is not installed")
    if table.numel() >= 2**31:
        raise ValueError(f"table of {table.numel()} values exceeds the int32 index range of the kernels")
    if level_dim & (level_dim - 1):
        raise ValueError(f"level_dim must be a power of two for the Triton kernels, got {level_dim}")
    u = u.float()
    tt = t.float().reshape(-1) if t is not None else None
    out = _GridEncodeFn.apply(
        u, table, tt, bufs, n_active, num_levels, level_dim, interpolation == "smoothstep",
        time_grid_size, entries_per_grid, block or FWD_BLOCK, warps or FWD_WARPS,
        bwd_block or BWD_BLOCK, bwd_warps or BWD_WARPS,
    )  # fmt: skip
    return out
