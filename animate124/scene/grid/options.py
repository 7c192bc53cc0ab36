"""Launch options of the Triton grid kernels, as one frozen object (no environment variables).

An encoder module holds a :class:`KernelOptions` and passes it down to every launch; tests and
benchmarks choose a variant by building the encoder with other options, e.g.
``GridEncoding(cfg, backend="triton", kernel_options=KernelOptions(pair_layout=False))``.

The defaults are the fastest variants measured on an H100 (BENCHMARKS.md §2): the pair layout (quad
gather forward for static tiled tables, 16-byte pair backward), blended time slots for clips, the
forward with levels as the fastest-varying program id at 256 points × 2 warps. ``fused_normals`` (BENCHMARKS.md
§15.8) is off here and on in the stages (``run.fused_normals``, on in every preset since the oracle check ran with it).
None of these fields is a model hyperparameter: they change speed, never the values (up to fp32 summation order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from animate124.errors import ConfigError

Atomics = Literal["auto", "scalar", "vec2"]
DotPrecision = Literal["ieee", "tf32x3"]

_WARPS = (1, 2, 4, 8, 16, 32)
MAX_LAUNCH_BLOCKS = 65535  # CUDA limit of grid axes y and z; the point blocks run on axis 1


@dataclass(frozen=True)
class KernelOptions:
    """Which Triton kernels run and how they are launched.

    Attributes:
        pair_layout: for 2-feature fp32 tiled tables, the forward of a static table gathers from a 32-byte
            quad table (four corners of a cell face per row) and the backward adds two x-neighbour corners
            with one 16-byte reduction into a ``[rows, 4]`` buffer that is folded afterwards. ``False``
            runs the plain kernels (one load / one reduction per corner), which hashed grids and other
            feature counts always use.
        bwd_pairs_max_rows: the pair-layout backward is used for tables of at most this many rows (its
            ``[rows, 4]`` buffer is zeroed and folded on every backward); larger tables use the plain one.
        atomics: plain backward reductions: ``"auto"`` uses one 8-byte vector reduction per corner
            (``red.global.add.v2.f32``, sm_90+) for 2-feature tables, ``"scalar"`` Triton's
            ``atomic_add`` per feature, ``"vec2"`` forces the vector form. The pair backward needs the
            vector reductions (or the interpreter) and falls back to the plain one without them.
        fwd_block, fwd_warps, bwd_block, bwd_warps: launch of the plain kernels (points per program).
        pair_fwd_block, pair_fwd_warps, pair_bwd_block, pair_bwd_warps: launch of the pair-layout kernels.
        slot_blend: a time-stacked encoder whose points come in few runs of equal time (a clip's frames)
            blends one table per distinct time and reads one grid per point (``TimeGridEncoding``).
        slot_max_times, slot_min_points_per_time: the slot path runs for at most ``slot_max_times`` runs
            with at least ``slot_min_points_per_time`` points per run on average.
        fused_normals: ``RadianceField.normals`` runs one fused stencil kernel per direction (grid gathers of
            the six neighbours, the density MLP and the normal in registers; :mod:`.stencil`) instead of six
            field evaluations, where it applies (a tiled 2-feature fp32 grid, static or a clip's few times; a
            2-layer decoder). Same function up to fp32 rounding. Its first backward, one kernel that spilled
            registers, made the dynamic step slower on an H100 (BENCHMARKS.md §15.6); the present one, three
            kernels without spills (§15.7), makes it faster: with ``z_merge``, 12-18 % off the NeRF side of a
            dynamic or refine step on an H100 (§15.8: 223 → 196 ms fresh field, 331 → 271 ms trained-like scene,
            356 → 291 ms refine). The stages set it from ``run.fused_normals`` (``stages.build.kernel_options``),
            on in every preset since the oracle check (``benchmarks/oracle_stages.py``) gave the recorded PSNRs
            with it on an H100 (``benchmarks/results/oracle.json`` reruns); off here, so that a bare encoder is
            the plain path the tests compare against.
        fused_normals_chunk: samples per chunk of the fused normals' backward, which keeps about 1.7 KB of
            per-sample buffers for the chunk it works on (the neighbours' features and their gradients: 217 MB
            at 2^17 samples and the paper grid, whatever the batch). At most 2^20 (well inside its scatter's
            65,535 launch blocks of 32 samples and its buffers' int32 offsets); tests lower it to cross chunk
            boundaries.
        z_merge: the grid kernels (plain, quad and pair forward, the backward) gather and reduce only the 4
            corners of the z face, with weights ``w_x·w_y``, at the tiled levels whose index ignores z (the
            stride guard: levels 9–15 of the paper grid), whose z and z+1 corners are the same rows and
            whose two z weights sum to 1; 8 corners at every other level. Same function up to fp32 rounding
            (``tests/test_scene_zmerge.py``, on the CPU and the GPU); on since measured on an H100
            (BENCHMARKS.md §15.6: 2–3 % off the dynamic step). The fused normals
            (``fused_normals``) always read the z face only there.
        tv_batched: the points-form time TV (``TimeGridEncoding.time_tv_loss``) encodes 8 grids per call through
            the clip path's slot kernels (:class:`~.timetv.BatchedPointsTimeTV`) instead of one plain call per
            grid: about 24 launches of the forward and 40 of the backward instead of 64 and 192 at paper settings
            (issue 26). Same loss and gradient up to fp32 summation order (``tests/test_scene_timetv.py``, on the
            CPU and the GPU). On since measured on an H100 (BENCHMARKS.md §15.10: 10 ms off a dynamic step).
        tv_grids_per_call: grids per encoder call of the batched time TV (8: 8 calls a step for 64 grids, each
            with 9 slots, about 100 MB of features and as much of their gradient at 100,000 points; the TV was
            measured launch-bound, BENCHMARKS.md §15.16, so 16 halves its launches for twice those buffers). Same
            loss and gradient whatever the value.
        tv_cuda_graph: the batched time TV's one pass replayed from a CUDA graph (:mod:`.tvgraph`: one replay
            instead of a few hundred launches a step; a private pool of about the table gradient, 462 MB at paper
            settings). The same kernels on the same inputs. Built on 2026-12-08 without a GPU: off, not in any
            preset, for ``benchmarks/bench_field_step.py``'s ``tv_graph`` variant and the GPU test.
        stencil_dot: the fused normals' backward computes the first layer's two gradients (``dfeat = dhid·W₁``,
            ``dW₁ = Σ dhidᵀ·feat``) as ``tl.dot`` products in IEEE fp32 on the FMA units (``"ieee"``), or with
            ``"tf32x3"``: three TF32 tensor-core products per product (the operands split into a TF32 head and a
            TF32 tail, the tail × tail term dropped), about 2^-21 relative per product against fp32's 2^-24, with
            fp32 accumulation. That kernel is 30 of a dynamic step's 152 ms on an H100 (BENCHMARKS.md §15.10), at
            about a tenth of the FMA units' rate; ``"tf32x3"`` took only 4.5 % off it (§15.11), so off.
        stencil_linear: how the fused normals' backward computes those two gradients: ``"triton"``, the
            ``_stencil_linear_bwd_kernel`` above (its recompute kernel stores 16-bit ReLU masks, 8 B a lane), or
            ``"blas"``: the recompute kernel stores ``dhid = [hid > 0]·dh·W₂[0]`` (256 B a lane, 201 MB for a
            chunk of 2^17 samples) and torch's fp32 matrix products (cuBLAS on a GPU, TF32 off) compute
            ``dfeat``, ``dW₁`` and ``db₁`` (``stencil._first_layer_blas``). The same function up to fp32
            summation order (``tests/test_scene_stencil.py``). The Triton kernel ran at about a tenth of the FMA
            rate and was not made faster by tensor-core products (BENCHMARKS.md §15.11). ``"blas"`` is the
            default since it took 12 ms off a dynamic step on an H100 at the same peak (§15.14). ``"blas_ones"``:
            ``"blas"`` with ``db₁`` as one more column of the ``dW₁`` product (a row of ones under the features)
            instead of a reduction of its own over ``dhid`` (about 4.5 ms of a dynamic step on an H100, §15.16);
            the same products, summed in another order. Built on 2026-12-08 without a GPU; off until measured.
        skip_zero_rows: the grid backward issues no table additions for a point whose gradient at a level is all
            zero (they would add exact zeros, so the table gradient is bit for bit the same). Behind early
            termination a sample's gradient is exactly 0 (``render.marcher.composite``), and at paper settings
            about half of a dynamic step's samples lie there (issue 26). Checked in the interpreter and compiled
            for sm_90; on since it took 6-7 ms off a dynamic step on an H100 (11 with ``"blas"``, §15.14).
        max_launch_blocks: point blocks per launch; larger batches are launched in chunks (the kernels
            put the point blocks on grid axis 1, capped at 65,535 by CUDA). Tests lower it to exercise
            the chunking.
    """

    pair_layout: bool = True
    bwd_pairs_max_rows: int = 2**26
    atomics: Atomics = "auto"
    fwd_block: int = 64  # H100: 0.85 ms vs 1.04 ms at 128 (2^20 points)
    fwd_warps: int = 4
    bwd_block: int = 128
    bwd_warps: int = 4
    pair_fwd_block: int = 256  # H100 sweep: levels fastest, 256 x 2 (grid_sweep_pairs.json)
    pair_fwd_warps: int = 2
    pair_bwd_block: int = 256  # flat at 1.14-1.18 ms for BLOCK >= 128
    pair_bwd_warps: int = 4
    slot_blend: bool = True
    slot_max_times: int = 32
    slot_min_points_per_time: int = 2**14
    fused_normals: bool = False
    fused_normals_chunk: int = 2**17
    z_merge: bool = True
    tv_batched: bool = True
    tv_grids_per_call: int = 8
    tv_cuda_graph: bool = False
    stencil_dot: DotPrecision = "ieee"
    stencil_linear: Literal["triton", "blas", "blas_ones"] = "blas"
    skip_zero_rows: bool = True
    max_launch_blocks: int = MAX_LAUNCH_BLOCKS

    def __post_init__(self) -> None:
        if self.stencil_linear not in ("triton", "blas", "blas_ones"):
            raise ConfigError(
                f"unknown stencil_linear {self.stencil_linear!r}", "use 'triton', 'blas' or 'blas_ones'"
            )
        if self.stencil_dot not in ("ieee", "tf32x3"):
            raise ConfigError(f"unknown stencil_dot {self.stencil_dot!r}", "use 'ieee' or 'tf32x3'")
        if self.atomics not in ("auto", "scalar", "vec2"):
            raise ConfigError(f"unknown atomics mode {self.atomics!r}", "use 'auto', 'scalar' or 'vec2'")
        for name in ("fwd_block", "bwd_block", "pair_fwd_block", "pair_bwd_block"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ConfigError(f"{name} must be a power of two >= 16, got {v}")
        for name in ("fwd_warps", "bwd_warps", "pair_fwd_warps", "pair_bwd_warps"):
            if getattr(self, name) not in _WARPS:
                raise ConfigError(f"{name} must be one of {_WARPS}, got {getattr(self, name)}")
        if not 1 <= self.max_launch_blocks <= MAX_LAUNCH_BLOCKS:
            raise ConfigError(
                f"max_launch_blocks must be in [1, {MAX_LAUNCH_BLOCKS}], got {self.max_launch_blocks}"
            )
        if self.tv_grids_per_call < 1:
            raise ConfigError(f"tv_grids_per_call must be >= 1, got {self.tv_grids_per_call}")
        if not 1 <= self.fused_normals_chunk <= 2**20:
            raise ConfigError(f"fused_normals_chunk must be in [1, 2^20], got {self.fused_normals_chunk}")
        if self.bwd_pairs_max_rows < 0 or self.slot_max_times < 1 or self.slot_min_points_per_time < 1:
            raise ConfigError(
                "bwd_pairs_max_rows >= 0, slot_max_times >= 1 and slot_min_points_per_time >= 1"
            )
