"""Fused finite-difference normals (issue 26): one Triton kernel per direction instead of six field calls.

:func:`stencil_normals` computes what ``RadianceField.normals`` computes (SPEC 3.1: central differences of
``σ = trunc_exp(MLP(grid(x))₀ + blob(x))`` at ``x ± ε e_d``, clamped to the box, ``n = −∇σ/‖∇σ‖``, NaN → 0)
for a 2-layer decoder and a tiled 2-feature fp32 grid, static or time-stacked with few distinct times (a
clip), in fp32 throughout. Kernels and the layout of the work: :mod:`.stencil_kernels`.

Memory: the autograd node keeps the points, their slots and the slot plan, nothing per neighbour; the
pair tables are rebuilt in backward. So it needs no activation checkpoint (the renderer skips its
``checkpoint_normals`` recompute for fields that take this path) and never holds ``6N`` feature rows. The
backward works on chunks of ``KernelOptions.fused_normals_chunk`` samples; per sample of a chunk it keeps
``6 × (16·L + 4 + 4·⌈H/16⌉)`` bytes (the neighbours' features and their gradients, ``dh``, the ReLU bits:
1,656 B at the paper grid and decoder, 217 MB for the default 2^17 samples), reused from chunk to chunk; with
``KernelOptions.stencil_linear="blas"`` the ReLU bits become ``dhid`` (``4·H`` bytes a lane: 406 MB in all).

Chosen by ``KernelOptions(fused_normals=True)``, in the stages by ``run.fused_normals``. It computes the same
function up to fp32 rounding; its first backward, one kernel that spilled registers, made the dynamic step slower
on an H100 (BENCHMARKS.md §15.6); with the present one, three kernels (§15.7), and ``z_merge`` the NeRF side of a
dynamic or refine step is 12-18 % faster on an H100 (§15.8). On in every preset (``run.fused_normals``) since the
oracle check (``benchmarks/oracle_stages.py``) gave the recorded PSNRs with it on an H100. Under autocast it runs in fp32 (the plain path runs
the MLP in fp16 there), so on a GPU its normals are closer to the exact ones than the path it replaces.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from animate124.scene.grid import kernels as K
from animate124.scene.grid import launch
from animate124.scene.grid import stencil_kernels as SK
from animate124.scene.grid.layout import LevelBuffers
from animate124.scene.grid.options import KernelOptions

BLOCK = 16  # forward: samples per program (× 8 lanes = 128 lanes: one per thread at 4 warps)
WARPS = 4
# The backward's three kernels (stencil_kernels, "Backward"); launch shapes chosen by what ptxas makes of them for
# sm_90a (BENCHMARKS.md §15.2b: no spills, at most 128 registers; benchmarks/kernel_resources.py)
MLP_BLOCK, MLP_WARPS = 8, 4  # part 1: samples per program (64 lanes; 89 registers; 16 samples: 154)
TILE, TILE_WARPS, TILES_PER_PROGRAM = 32, 8, 32  # part 2: lanes per tile (80 registers at hidden 64)
SCATTER_BLOCK, SCATTER_WARPS = 32, 4  # part 3: samples per (level, block) program (256 lanes, 40 registers)


class _StencilNormalsFn(torch.autograd.Function):
    """``apply(x [N,3], table [T·E, 2], w1 [H,F], b1 [H], w2 [4,H], b2 [4], slot [N], lo, hi, a [K], meta)``
    -> normals ``[N, 3]``; gradients for the table and the MLP (rows/entries 0 of ``w2``/``b2``)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx: Any, *args: Any, **kwargs: Any) -> Tensor:
        x, table, w1, b1, w2, b2, slot, lo, hi, a, meta = args  # the class docstring's order
        x = x.float().contiguous()
        pairs = launch.build_slot_pairs(table, lo, hi, a, meta["bufs"], meta["entries"])
        out = torch.empty(x.shape[0], 3, device=x.device, dtype=torch.float32)
        n = x.shape[0]
        if n:
            nblocks = K.triton.cdiv(n, BLOCK)
            SK._stencil_fwd_kernel[(nblocks,)](
                x, slot, pairs, w1.contiguous(), b1.contiguous(), w2[0].contiguous(), b2[:1].contiguous(), out,
                *_level_ptrs(meta["bufs"]), n, meta["n_active"], meta["entries"], *_scalars(meta),
                BLOCK=BLOCK, H=w1.shape[0], F=w1.shape[1], SMOOTH=meta["smooth"], num_warps=WARPS,
            )  # fmt: skip
        ctx.save_for_backward(x, table, w1, b1, w2, b2, slot, lo, hi, a)
        ctx.meta = meta
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        (grad_out,) = grad_outputs
        x, table, w1, b1, w2, b2, slot, lo, hi, a = ctx.saved_tensors
        meta = ctx.meta
        bufs, entries, t_size = meta["bufs"], meta["entries"], meta["time_grid_size"]
        pairs = launch.build_slot_pairs(table, lo, hi, a, bufs, entries)
        g4 = torch.zeros(lo.numel() * entries, 4, device=x.device, dtype=torch.float32)
        dw1, db1, dw2_0, db2_0 = _backward_chunks(x, slot, pairs, w1, b1, w2, b2, grad_out, g4, meta)
        grad = torch.empty(t_size * entries, 2, device=x.device, dtype=torch.float32)
        K._slot_scatter_kernel[launch._table_grid(bufs, t_size)](
            g4, grad, lo.to(torch.int32), hi.to(torch.int32), a.float().contiguous(), lo.numel(),
            *launch._level_args(bufs), entries, PAIRED=True, BLOCK=launch.BUILD_BLOCK,
        )  # fmt: skip
        dw2 = torch.zeros_like(w2, dtype=torch.float32)
        dw2[0] = dw2_0
        db2 = torch.zeros_like(b2, dtype=torch.float32)
        db2[0] = db2_0
        return (
            None, grad.view(table.shape).to(table.dtype), dw1.to(w1.dtype), db1.to(b1.dtype), dw2.to(w2.dtype),
            db2.to(b2.dtype), None, None, None, None, None,
        )  # fmt: skip


def _backward_chunks(
    x: Tensor, slot: Tensor, pairs: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, grad_out: Tensor,
    g4: Tensor, meta: dict,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The backward's three kernels over chunks of ``KernelOptions.fused_normals_chunk`` samples (module
    docstring): adds the table gradient into the pair-layout buffer ``g4`` and returns the fp32 gradients
    ``dW₁ [H, F]``, ``db₁ [H]``, ``dW₂[0] [H]``, ``db₂[0] []``, each a fixed-order sum of per-program partials."""
    n, (h, f) = x.shape[0], w1.shape
    na, entries, bufs = meta["n_active"], meta["entries"], meta["bufs"]
    fa, hp, fp, nw = 2 * na, max(16, h), max(16, K.triton.next_power_of_2(f)), (h + 15) // 16
    dev, f32 = x.device, torch.float32
    tot_a = torch.zeros(h + 1, device=dev, dtype=f32)  # (dW₂[0], db₂[0])
    tot_b = torch.zeros(hp * fp + hp, device=dev, dtype=f32)  # (dW₁ padded to [HP, FP], db₁ padded)
    blas = meta["options"].stencil_linear in ("blas", "blas_ones")
    # "blas_ones": db₁ as the dW₁ product's last column (_first_layer_blas)
    ones = meta["options"].stencil_linear == "blas_ones"
    if blas:
        dw1_blas = torch.zeros(h, fa + ones, device=dev, dtype=f32)
    if n:
        chunk = min(n, meta["options"].fused_normals_chunk)
        lanes = 6 * chunk  # the chunk's six neighbours per sample: row 6p + n of every per-lane buffer
        rows = max(fa + ones, 1)  # the features' rows (and a row of ones with "blas_ones")
        feat_buf = torch.empty(rows * lanes, device=dev, dtype=f32)
        dfeat_buf = torch.empty(max(fa, 1) * lanes, device=dev, dtype=f32)
        dh = torch.empty(lanes, device=dev, dtype=f32)
        # "blas": dhid [lanes, H] fp32 for the two matrix products; else the ReLU bits
        relu = torch.empty(lanes, h if blas else nw, device=dev, dtype=f32 if blas else torch.int32)
        part_a = torch.empty(K.triton.cdiv(chunk, MLP_BLOCK), h + 1, device=dev, dtype=f32)
        part_b = (
            None
            if blas
            else torch.empty(  # the Triton first-layer kernel's per-program partial sums
                K.triton.cdiv(K.triton.cdiv(lanes, TILE), TILES_PER_PROGRAM),
                hp * fp + hp,
                device=dev,
                dtype=f32,
            )
        )
        w1, b1, w2, b2 = w1.contiguous(), b1.contiguous(), w2[0].contiguous(), b2[:1].contiguous()
        gout = grad_out.float().contiguous()
        use_asm = launch.vec2_enabled(x.device, meta["options"], meta["state"])
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            m = e - s
            ml = 6 * m  # the chunk's lanes: the row stride of feat and dfeat ([2·n_active, ml], contiguous)
            feat = feat_buf[: rows * ml].view(rows, ml)
            if ones:
                feat[fa].fill_(1.0)  # the recompute kernel writes rows 0 … FA−1 (row stride ml)
            dfeat = dfeat_buf[: max(fa, 1) * ml].view(max(fa, 1), ml)
            nb = K.triton.cdiv(m, MLP_BLOCK)
            SK._stencil_mlp_bwd_kernel[(nb,)](
                x[s:e], slot[s:e], pairs, w1, b1, w2, b2, gout[s:e], feat, dh, relu, part_a, *_level_ptrs(bufs),
                m, ml, na, entries, *_scalars(meta), BLOCK=MLP_BLOCK, H=h, F=f, SMOOTH=meta["smooth"], DHID=blas,
                num_warps=MLP_WARPS,
            )  # fmt: skip
            if blas:
                _first_layer_blas(
                    relu[:ml],
                    feat[: fa + ones],
                    w1[:, :fa],
                    dfeat[:fa],
                    dw1_blas,
                    None if ones else tot_b[hp * fp :],
                )
            else:
                ntiles = K.triton.cdiv(ml, TILE)
                tiles = min(TILES_PER_PROGRAM, ntiles)
                pb = K.triton.cdiv(ntiles, tiles)
                SK._stencil_linear_bwd_kernel[(pb,)](
                    feat, dh, relu, w1, w2, dfeat, part_b, ml, fa, ml, tiles, H=h, HP=hp, F=f, FP=fp, TILE=TILE,
                    PREC=meta["options"].stencil_dot, num_warps=TILE_WARPS,
                )  # fmt: skip
                tot_b += part_b[:pb].sum(0)
            if na:
                SK._stencil_scatter_kernel[(na, K.triton.cdiv(m, SCATTER_BLOCK))](
                    x[s:e], slot[s:e], dfeat, g4, *_level_ptrs(bufs), m, ml, entries, *_scalars(meta)[:3],
                    BLOCK=SCATTER_BLOCK, SMOOTH=meta["smooth"], USE_ASM=use_asm, ASM=SK.RED4_ASM,
                    num_warps=SCATTER_WARPS,
                )  # fmt: skip
            tot_a += part_a[:nb].sum(0)
    if not blas:
        return tot_b[: hp * fp].view(hp, fp)[:h, :f], tot_b[hp * fp : hp * fp + h], tot_a[:h], tot_a[h]
    dw1 = torch.zeros(h, f, device=dev, dtype=f32)  # columns past 2·n_active (levels not active): zero
    dw1[:, :fa] = dw1_blas[:, :fa]
    db1 = dw1_blas[:, fa] if ones else tot_b[hp * fp : hp * fp + h]
    return dw1, db1, tot_a[:h], tot_a[h]


def _first_layer_blas(
    dhid: Tensor, feat: Tensor, w1: Tensor, dfeat: Tensor, dw1: Tensor, db1: Tensor | None
) -> None:
    """``KernelOptions.stencil_linear="blas"``: the first layer's gradients of a chunk as three library calls
    instead of ``_stencil_linear_bwd_kernel``: ``dfeat = (dhid·W₁)ᵀ`` (written into ``dfeat [FA, lanes]``),
    ``dW₁ += dhidᵀ·featᵀ`` (``dw1 [H, FA]``) and ``db₁ += Σ dhid`` (``dhid [lanes, H]`` from the recompute
    kernel). With ``db1=None`` (``"blas_ones"``), ``feat`` has one more row of ones and ``dw1 [H, FA + 1]`` one
    more column, so the product adds ``Σ dhid·1`` there: ``db₁`` without a reduction of its own over the 201 MB
    of a chunk's ``dhid`` (about 4.5 ms of a dynamic step on an H100, BENCHMARKS.md §15.16), the same exact
    products summed in another order. IEEE fp32 products whatever torch's TF32 flags and autocast say, so the
    same function as the kernel's up to fp32 summation order; cuBLAS's split-K sums are fixed-order, so the
    same bits run to run on one GPU."""
    if not dhid.shape[0]:
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(dhid.device.type, enabled=False):
            torch.mm(w1.t(), dhid.t(), out=dfeat)
            dw1.addmm_(dhid.t(), feat.t())
            if db1 is not None:
                db1[: dhid.shape[1]] += dhid.sum(0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def kernel_settings(
    hidden: int = 64, features: int = 32, smooth: bool = False, dot: str = "ieee"
) -> list[tuple[str, Any, dict, int]]:
    """``(name, kernel, constexprs, warps)`` of the forward and the backward's three kernels as the launches
    above compile them (for the sm_90 compile test and ``benchmarks/kernel_resources.py``;
    the defaults are the paper decoder's, 16 levels × 2 features in, 64 hidden)."""
    fp = max(16, K.triton.next_power_of_2(features))
    mlp = {"H": hidden, "F": features, "SMOOTH": smooth}
    scatter = {"BLOCK": SCATTER_BLOCK, "SMOOTH": smooth, "USE_ASM": True, "ASM": SK.RED4_ASM}
    return [
        ("forward", SK._stencil_fwd_kernel, {**mlp, "BLOCK": BLOCK}, WARPS),
        ("backward 1: recompute, dh", SK._stencil_mlp_bwd_kernel, {**mlp, "BLOCK": MLP_BLOCK}, MLP_WARPS),
        ("backward 1, blas: recompute, dhid", SK._stencil_mlp_bwd_kernel, {
            **mlp, "BLOCK": MLP_BLOCK, "DHID": True}, MLP_WARPS),
        ("backward 2: first layer", SK._stencil_linear_bwd_kernel, {
            "H": hidden, "HP": max(16, hidden), "F": features, "FP": fp, "TILE": TILE, "PREC": dot}, TILE_WARPS),
        ("backward 3: table scatter", SK._stencil_scatter_kernel, scatter, SCATTER_WARPS),
    ]  # fmt: skip


def _level_ptrs(bufs: LevelBuffers) -> tuple[Tensor, ...]:
    return (bufs.scales, bufs.strides32, bufs.wrap_masks, bufs.starts32)


def _scalars(meta: dict) -> tuple[float, ...]:
    """``eps, bound, 2·bound, blob amplitude, 2·radius²`` as the fp32 values torch uses."""
    b = meta["bound"]
    return (meta["eps"], b, 2 * b, meta["blob_density"], 2 * meta["blob_radius"] ** 2)


def supported(table: Tensor, level_dim: int, bufs: LevelBuffers, options: KernelOptions, hidden: int) -> bool:
    """The fused normals cover the pair layout's tables (tiled, 2 features, fp32) and hidden widths that are
    powers of two up to 128 (a ``[lanes, hidden]`` register tile)."""
    return (
        launch.pairs_supported(table, level_dim, bufs, options)
        and hidden & (hidden - 1) == 0
        and 1 <= hidden <= 128
        and K.HAS_TRITON
    )


def stencil_normals(
    x: Tensor, table: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *, bufs: LevelBuffers,
    n_active: int, interpolation: str, eps: float, bound: float, blob_density: float, blob_radius: float,
    options: KernelOptions, state: launch.LaunchState | None = None,
    slots: tuple[Tensor, Tensor, Tensor, Tensor] | None = None, time_grid_size: int = 1,
) -> Tensor:  # fmt: skip
    """Unit normals ``[N, 3]`` of the field at world points ``x [N, 3]`` (module docstring).

    ``table``: the encoder's ``[T·E, 2]`` table (``T = time_grid_size``; 1 for a static grid); ``w1, b1, w2,
    b2``: the decoder's two layers (``[H, L·2]``, ``[H]``, ``[4, H]``, ``[4]``); ``slots``: the points' clip
    slots ``(slot [N], lo [K], hi [K], a [K])`` of a time-stacked table (``TimeGridEncoding.slot_plan``),
    None for a static one. Levels ``>= n_active`` contribute nothing (coarse-to-fine masking).
    """
    entries = table.shape[0] // time_grid_size
    dev = x.device
    if slots is None:
        slot = torch.zeros(x.shape[0], device=dev, dtype=torch.int32)
        zero = torch.zeros(1, device=dev, dtype=torch.long)
        lo, hi, a = zero, zero, torch.zeros(1, device=dev, dtype=torch.float32)
    else:
        slot, lo, hi, a = slots
        slot = slot.to(torch.int32)
    if state is not None:
        state.slot_builds += 1
    meta = {
        "bufs": bufs, "n_active": int(n_active), "entries": entries, "time_grid_size": time_grid_size,
        "smooth": interpolation == "smoothstep", "eps": float(eps), "bound": float(bound),
        "blob_density": float(blob_density), "blob_radius": float(blob_radius), "options": options, "state": state,
    }  # fmt: skip
    return _StencilNormalsFn.apply(
        x, table, w1, b1, w2, b2, slot.contiguous(), lo.long(), hi.long(), a.float(), meta
    )
