"""Launches of the Triton grid kernels (:mod:`.kernels`) and their autograd Functions.

Which kernels run (:class:`~animate124.scene.grid.options.KernelOptions`, held by the encoder module):

* 2-feature fp32 tiled tables with ``pair_layout`` on: a static table's forward gathers from the quad
  table built inside every call (:func:`build_quad_table`, about 55 µs for the paper's 8 MB table), the
  backward accumulates x-neighbour pairs into ``[rows, 4]`` and folds (:func:`fold_pair_grad`);
  time-stacked tables use the plain forward and the pair backward, and a clip's points (few distinct
  times) take the blended-slot path (:func:`encode_slots`);
* everything else (hashed levels, other feature counts or dtypes, ``pair_layout=False``): the plain
  kernels.

``z_merge`` (on by default) makes every one of these kernels gather and reduce 4 corners instead of 8 at
the tiled levels whose index ignores z (:mod:`.kernels`, z-merge).

The gather tables are deliberately not cached across calls: a cache keyed on the parameter's autograd
version counter goes stale under ``torch.optim.Adam(fused=True)``, whose step does not bump the counter
(a test checks this), and under writes through ``.data``.

Not supported, by design: gradients w.r.t. positions ``u`` and times ``t`` (returned as ``None``). SPEC
computes normals by finite differences of σ, so nothing needs ``dL/dx``. Tables are read and outputs
written in fp32 even under autocast (upstream reads an fp16 copy; fp32 is more accurate and the next
``Linear`` casts anyway).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from animate124.scene.grid import kernels as K
from animate124.scene.grid.layout import LevelBuffers
from animate124.scene.grid.options import KernelOptions

logger = logging.getLogger(__name__)

BUILD_BLOCK = 1024  # rows per program of the per-row table kernels (build, fold, scatter)


@dataclass
class LaunchState:
    """Mutable per-encoder record of what the launches did; the encoder module owns one.

    ``gather_builds``: calls that built the quad gather table; ``slot_builds``: calls that took the
    blended-slot path; ``vec2_error``: set when the vector reductions failed to compile on this device,
    after which this encoder uses scalar atomics (the capability probe, per encoder, not global).
    """

    gather_builds: int = 0
    slot_builds: int = 0
    vec2_error: str | None = None


def interpreter_enabled() -> bool:
    """Triton's own CPU interpreter switch (must be set before :mod:`.kernels` is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(device: torch.device | str | None = None) -> bool:
    """Triton importable and usable on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if not K.HAS_TRITON:
        return False
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cpu":
        return interpreter_enabled()
    if dev is not None and dev.type != "cuda":
        return False
    return torch.cuda.is_available() or interpreter_enabled()


def vec2_enabled(device: torch.device, options: KernelOptions, state: LaunchState | None) -> bool:
    """Vector reductions (inline PTX) for this launch: CUDA, not disabled, sm_90+ under ``auto``."""
    if options.atomics == "scalar" or interpreter_enabled() or device.type != "cuda":
        return False
    if state is not None and state.vec2_error is not None:
        return False
    if options.atomics == "vec2":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 9


def pairs_supported(table: Tensor, level_dim: int, bufs: LevelBuffers, options: KernelOptions) -> bool:
    """The pair layout is used for 2-feature fp32 tiled tables (the paper's grid) when the options allow.

    Not for grids with hashed levels: hashed x-neighbours are rarely adjacent rows, and the measured
    forward and backward were slower with it (BENCHMARKS.md §2).
    """
    return (
        options.pair_layout
        and level_dim == 2
        and not bufs.any_hashed
        and table.dtype == torch.float32
        and table.numel() * 2 < 2**31
    )


def _bwd_pairs(rows: int, device: torch.device, options: KernelOptions, state: LaunchState | None) -> bool:
    """Accumulate the backward in the pair layout: needs vector reductions (sm_90+) or the interpreter."""
    if rows > options.bwd_pairs_max_rows or rows * 4 >= 2**31:
        return False
    return interpreter_enabled() or vec2_enabled(device, options, state)


def _chunks(n: int, block: int, options: KernelOptions) -> Iterator[tuple[int, int]]:
    """Row ranges of at most ``max_launch_blocks`` blocks (the point blocks are grid axis 1)."""
    step = options.max_launch_blocks * block
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _table_grid(bufs: LevelBuffers, grids: int) -> tuple[int, int, int]:
    """Launch grid of the per-row table kernels: (row blocks of the largest level, levels, grids)."""
    return (K.triton.cdiv(bufs.max_size, BUILD_BLOCK), bufs.sizes.numel(), grids)


def _launch_args(bufs: LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32, bufs.hashed32)


def _level_args(bufs: LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.sizes32, bufs.wrap_masks, bufs.starts32)


def build_quad_table(table: Tensor, bufs: LevelBuffers) -> Tensor:
    """Quad gather table ``[rows, 8]`` of a static table: ``Q[r] = (T[r], T[nx(r)], T[ny(r)], T[nx(ny(r))])``."""
    out = torch.empty(table.shape[0], 8, device=table.device, dtype=torch.float32)
    with torch.no_grad():
        K._gather_build_kernel[_table_grid(bufs, 1)](
            table.detach().contiguous(), out, bufs.sizes32, bufs.sizes32, table, *_level_args(bufs),
            bufs.strides32, 0, QUAD=True, BLEND=False, BLOCK=BUILD_BLOCK,
        )  # fmt: skip
    return out


def build_slot_pairs(
    table: Tensor, lo: Tensor, hi: Tensor, a: Tensor, bufs: LevelBuffers, entries_per_grid: int
) -> Tensor:
    """Blended pair tables of ``K`` slots, ``[K·E, 4]``: slot ``k`` pairs ``a_k·W[hi_k] + (1−a_k)·W[lo_k]``."""
    k = lo.numel()
    out = torch.empty(k * entries_per_grid, 4, device=table.device, dtype=torch.float32)
    with torch.no_grad():
        K._gather_build_kernel[_table_grid(bufs, k)](
            table.detach().contiguous(), out, lo.to(torch.int32), hi.to(torch.int32), a.float().contiguous(),
            *_level_args(bufs), bufs.strides32, entries_per_grid, QUAD=False, BLEND=True, BLOCK=BUILD_BLOCK,
        )  # fmt: skip
    return out


def fold_pair_grad(g4: Tensor, bufs: LevelBuffers, grids: int, entries_per_grid: int) -> Tensor:
    """Table gradient ``[rows, 2]`` from a pair-layout gradient ``G [rows, 4]``."""
    grad = torch.empty(g4.shape[0], 2, device=g4.device, dtype=torch.float32)
    K._pair_fold_kernel[_table_grid(bufs, grids)](
        g4, grad, *_level_args(bufs), entries_per_grid, BLOCK=BUILD_BLOCK
    )
    return grad


def _backward_acc(
    u: Tensor, t_arg: Tensor, grad_out: Tensor, bufs: LevelBuffers, rows: int, n_active: int, level_dim: int,
    has_time: bool, smooth: bool, time_max: float, entries_per_grid: int, pair_layout: bool,
    options: KernelOptions, state: LaunchState | None,
) -> tuple[Tensor, bool]:  # fmt: skip
    """Run the backward kernel; returns the accumulator (``[rows, 4]`` when paired, else ``[rows, C]``)
    and whether it is in the pair layout."""
    n = u.shape[0]
    block, warps = (options.pair_bwd_block, options.pair_bwd_warps) if pair_layout else (
        options.bwd_block, options.bwd_warps)  # fmt: skip
    # Inline-asm reductions run once per thread that holds an element: with fewer points than threads
    # (BLOCK < 32·warps) Triton replicates elements and each reduction would run twice.
    asm_ok = block >= 32 * warps
    use_pairs = pair_layout and asm_ok and _bwd_pairs(rows, u.device, options, state)
    vec2 = level_dim == 2 and asm_ok and vec2_enabled(u.device, options, state)
    for attempt in (0, 1):
        acc = torch.zeros(rows, 4 if use_pairs else level_dim, device=u.device, dtype=torch.float32)
        try:
            for s, e in _chunks(n, block, options):
                K._grid_bwd_kernel[(n_active, K.triton.cdiv(e - s, block))](
                    u[s:e], t_arg[s:e], grad_out[s:e], acc, *_launch_args(bufs), e - s, grad_out.stride(0),
                    time_max, entries_per_grid, C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth,
                    VEC2=vec2, ASM=K.VEC2_ASM, PAIR=use_pairs, ASM4=K.PAIR_ASM, ZMERGE=options.z_merge,
                    SKIP0=options.skip_zero_rows, num_warps=warps,
                )  # fmt: skip
            break
        except Exception as err:  # pragma: no cover - GPU/toolchain specific
            if attempt or not vec2:
                raise
            logger.warning("vector atomics unavailable (%s); this encoder now uses scalar atomics", err)
            if state is not None:
                state.vec2_error = str(err)
            vec2 = False
            use_pairs = use_pairs and interpreter_enabled()
    return acc, use_pairs


class _GridEncodeFn(torch.autograd.Function):
    """``(u [N,3], table [E,C], t [N] | None, quads | None, …) -> [N, L·C]``; grad only for ``table``.

    With ``quads`` (the quad table of a static ``table``) the forward reads a cell face per 32-byte row;
    with ``pair_layout`` the backward accumulates into a ``[rows, 4]`` buffer that is folded into the
    ``[rows, 2]`` table gradient (see :func:`_bwd_pairs` for when).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx, u: Tensor, table: Tensor, t: Tensor | None, quads: Tensor | None, pair_layout: bool,
        bufs: LevelBuffers, n_active: int, num_levels: int, level_dim: int, smooth: bool, time_grid_size: int,
        time_max: float, entries_per_grid: int, options: KernelOptions, state: LaunchState | None,
    ) -> Tensor:  # fmt: skip
        n = u.shape[0]
        u = u.contiguous()
        table = table.contiguous()
        has_time = t is not None
        t_arg = t.contiguous() if has_time else u  # dummy pointer when unused
        alloc = torch.empty if n_active == num_levels else torch.zeros
        out = alloc(n, num_levels * level_dim, device=u.device, dtype=torch.float32)
        if quads is not None:
            block, warps = options.pair_fwd_block, options.pair_fwd_warps
            for s, e in _chunks(n, block, options):
                K._grid_fwd_pair_kernel[(n_active, K.triton.cdiv(e - s, block))](
                    u[s:e], u[s:e], quads, out[s:e], *_launch_args(bufs), e - s, out.stride(0), 0.0, 0,
                    BLOCK=block, HAS_TIME=False, SMOOTH=smooth, QUAD=True, ZMERGE=options.z_merge,
                    num_warps=warps,
                )  # fmt: skip
        elif n > 0:
            block, warps = options.fwd_block, options.fwd_warps
            K._grid_fwd_kernel[(K.triton.cdiv(n, block), n_active)](
                u, t_arg, table, out, *_launch_args(bufs), n, out.stride(0), time_max, entries_per_grid,
                C=level_dim, BLOCK=block, HAS_TIME=has_time, SMOOTH=smooth, ZMERGE=options.z_merge,
                num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(u, t_arg)
        ctx.meta = (bufs, n_active, level_dim, smooth, time_grid_size, time_max, entries_per_grid, has_time)
        ctx.launch = (pair_layout, options, state)
        ctx.table_shape = table.shape
        ctx.table_dtype = table.dtype
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        u, t_arg = ctx.saved_tensors
        bufs, n_active, level_dim, smooth, time_grid_size, time_max, entries_per_grid, has_time = ctx.meta
        pair_layout, options, state = ctx.launch
        nones = (None,) * 13
        if not ctx.needs_input_grad[1] or u.shape[0] == 0:
            grad_table = torch.zeros(ctx.table_shape, device=u.device, dtype=torch.float32)
            return (None, grad_table.to(ctx.table_dtype)) + nones
        acc, paired = _backward_acc(
            u, t_arg, grad_out.contiguous(), bufs, ctx.table_shape[0], n_active, level_dim, has_time, smooth,
            time_max, entries_per_grid, pair_layout, options, state,
        )  # fmt: skip
        if paired:
            acc = fold_pair_grad(acc, bufs, max(time_grid_size, 1), entries_per_grid)
        return (None, acc.view(ctx.table_shape).to(ctx.table_dtype)) + nones


class _SlotEncodeFn(torch.autograd.Function):
    """Clip points with few distinct times (``TimeGridEncoding``'s slot path).

    ``(u [N,3], W [T·E, 2], P, slot [N], lo/hi/a [K], …) -> [N, L·2]``: the forward reads one grid per
    point from the blended pair table ``P`` (one table per slot, :func:`build_slot_pairs`); the backward
    accumulates per slot (pair layout when available) and one kernel folds it and writes
    ``dW_g = Σ_k ((1 − a_k)·[lo_k = g] + a_k·[hi_k = g])·dB_k`` for every grid (``_slot_scatter_kernel``).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx, u, table, pairs, slot, lo, hi, a, bufs, n_active, num_levels, smooth, time_grid_size,
        entries_per_grid, options, state,
    ):  # fmt: skip
        n = u.shape[0]
        u = u.contiguous()
        slot_f = slot.float().contiguous()  # the slot index as a time with time_max 1: one grid per point
        alloc = torch.empty if n_active == num_levels else torch.zeros
        out = alloc(n, num_levels * 2, device=u.device, dtype=torch.float32)
        block, warps = options.pair_fwd_block, options.pair_fwd_warps
        for s, e in _chunks(n, block, options):
            K._grid_fwd_pair_kernel[(n_active, K.triton.cdiv(e - s, block))](
                u[s:e], slot_f[s:e], pairs, out[s:e], *_launch_args(bufs), e - s, out.stride(0), 1.0,
                entries_per_grid, BLOCK=block, HAS_TIME=True, SMOOTH=smooth, QUAD=False,
                ZMERGE=options.z_merge, num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(u, slot_f, lo.to(torch.int32), hi.to(torch.int32), a.float().contiguous())
        ctx.meta = (bufs, n_active, smooth, time_grid_size, entries_per_grid, options, state)
        ctx.table_shape = table.shape
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):  # type: ignore[override]
        u, slot_f, lo, hi, a = ctx.saved_tensors
        bufs, n_active, smooth, time_grid_size, entries_per_grid, options, state = ctx.meta
        k = lo.numel()
        acc, paired = _backward_acc(
            u, slot_f, grad_out.contiguous(), bufs, k * entries_per_grid, n_active, 2, True, smooth, 1.0,
            entries_per_grid, True, options, state,
        )  # fmt: skip
        grad = torch.empty(time_grid_size * entries_per_grid, 2, device=u.device, dtype=torch.float32)
        K._slot_scatter_kernel[_table_grid(bufs, time_grid_size)](
            acc, grad, lo, hi, a, k, *_level_args(bufs), entries_per_grid, PAIRED=paired, BLOCK=BUILD_BLOCK
        )
        return (None, grad.view(ctx.table_shape)) + (None,) * 13


def _check(table: Tensor, level_dim: int) -> None:
    if not K.HAS_TRITON:  # pragma: no cover - depends on the environment
        raise RuntimeError("triton is not installed")
    if table.numel() >= 2**31:
        raise ValueError(f"table of {table.numel()} values exceeds the int32 index range of the kernels")
    if level_dim & (level_dim - 1):
        raise ValueError(f"level_dim must be a power of two for the Triton kernels, got {level_dim}")


def encode_slots(
    u: Tensor, table: Tensor, slot: Tensor, lo: Tensor, hi: Tensor, a: Tensor, bufs: LevelBuffers,
    n_active: int, num_levels: int, interpolation: str, time_grid_size: int, entries_per_grid: int,
    options: KernelOptions, state: LaunchState | None = None,
) -> Tensor:  # fmt: skip
    """Encode points whose time is one of ``K`` slots: ``slot [N]`` int, slot ``k`` at grid position
    ``lo_k + a_k`` (``hi_k = ⌈·⌉``) of the stacked ``table [T·E, 2]``. Same values as :func:`grid_encode`
    with the points' times; needs :func:`pairs_supported`. Builds the blended tables in every call."""
    _check(table, 2)
    pairs = build_slot_pairs(table, lo, hi, a, bufs, entries_per_grid)
    if state is not None:
        state.slot_builds += 1
    return _SlotEncodeFn.apply(
        u.float(), table, pairs, slot, lo, hi, a, bufs, n_active, num_levels, interpolation == "smoothstep",
        time_grid_size, entries_per_grid, options, state,
    )  # fmt: skip


def grid_encode(
    u: Tensor, table: Tensor, bufs: LevelBuffers, n_active: int, num_levels: int, level_dim: int,
    interpolation: str, options: KernelOptions, state: LaunchState | None = None, t: Tensor | None = None,
    time_grid_size: int = 1, entries_per_grid: int = 0,
) -> Tensor:  # fmt: skip
    """Encode unit-cube points ``u [N,3]`` with ``table [E,C]`` (or stacked ``[T·E, C]`` with ``t [N]``).

    Returns ``[N, num_levels·C]`` float32; levels ``>= n_active`` are zero. ``options`` chooses the
    kernels and launches (module docstring); ``state`` (the encoder's) records what ran.
    """
    _check(table, level_dim)
    tt = t.float().reshape(-1) if t is not None else None
    # Pair-layout backward whenever supported; the gather table only for static tables: a 64-grid
    # table's would be 1 GB, rebuilt per call (0.7-1.2 ms), slower than the plain forward it replaces
    # (clips take the slot path instead).
    pair_layout = pairs_supported(table, level_dim, bufs, options)
    quads = None
    if pair_layout and t is None:
        quads = build_quad_table(table, bufs)
        if state is not None:
            state.gather_builds += 1
    tmax = float(max(time_grid_size - 1, 0))
    return _GridEncodeFn.apply(
        u.float(), table, tt, quads, pair_layout, bufs, n_active, num_levels, level_dim,
        interpolation == "smoothstep", time_grid_size, tmax, entries_per_grid, options, state,
    )  # fmt: skip
