"""Multiresolution grid encoding (SPEC 3.1), static and time-stacked.

This reproduces the torch-ngp ``GridEncoder`` that upstream uses (``gridencoder/``):

* per-level growth ``b = 2^(log2(desired/base)/(L-1))`` (``desired = 2048·bound``);
* the kernel's level scale ``s_l = base·b^l − 1`` and resolution ``R_l = ceil(s_l) + 1``;
  the grid coordinate of a unit-cube point ``u`` is ``u·s_l + 0.5`` (``align_corners=False``);
* entries per level ``min(2^log2_table_size, (R_l+1)^3)`` rounded up to a multiple of 8
  (paper config: 4,920 / 13,824 / 32,768 dense, then 13 × 65,536; 903,480 in all);
* the corner index: ``Σ_d c_d·stride_d`` with ``stride_d = Π_{d'<d}(R_l+1)``, where the sum **stops
  at the first dimension whose stride exceeds the table** (torch-ngp and tiny-cuda-nn both guard the
  loop with ``stride <= hashmap_size`` against overflow). For the "tiled" type this means the finest
  levels (9–15 in the paper config, where ``(R+1)^2 > 65,536``) ignore z entirely and only wrap
  ``x + (R+1)·y`` modulo the table. ``GridEncodingConfig.stride_guard=False`` gives the full
  ``x + (R+1)y + (R+1)^2 z`` index instead (not upstream);
* "hash": ``(x·1) xor (y·2654435761) xor (z·805459861)`` in uint32, modulo the table, used where the
  dense grid exceeds the table;
* trilinear weights (or smoothstep), points outside the unit cube give zero features.

Backends: ``torch`` (reference, CPU/GPU, autograd), ``triton`` (``encoding_triton``: fused forward and
table-gradient kernels; no gradient w.r.t. positions or times, which nothing in SPEC needs since normals
are finite differences) and, through :func:`make_grid_encoding`, optional ``tcnn``
(``encoding_tcnn``, different table layout).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from animate124.errors import ConfigError

logger = logging.getLogger(__name__)

GridType = Literal["tiled", "hash"]
Interpolation = Literal["linear", "smoothstep"]
Backend = Literal["auto", "torch", "triton", "tcnn"]

HASH_PRIMES = (1, 2654435761, 805459861)
_UINT32 = 0xFFFFFFFF
# corner bit patterns: corner k uses x+bit0, y+bit1, z+bit2 (torch-ngp order)
_CORNER_BITS = [(k & 1, (k >> 1) & 1, (k >> 2) & 1) for k in range(8)]


@dataclass(frozen=True)
class GridEncodingConfig:
    """Hyperparameters of one spatial grid (defaults: SPEC 3.1 "tiledgrid")."""

    input_dim: int = 3
    num_levels: int = 16
    level_dim: int = 2
    base_resolution: int = 16
    desired_resolution: float = 2048.0  # at bound 1; the encoder multiplies by ``bound``
    log2_table_size: int = 16
    grid_type: GridType = "tiled"
    interpolation: Interpolation = "linear"
    init_range: float = 1e-4  # U(-r, r)
    stride_guard: bool = True  # upstream index quirk, see module docstring

    def __post_init__(self) -> None:
        if self.input_dim != 3:
            raise ConfigError(f"grid input_dim must be 3, got {self.input_dim}", "only 3-D grids are built")
        if self.num_levels < 2 or self.level_dim < 1:
            raise ConfigError("grid needs num_levels >= 2 and level_dim >= 1")
        if self.level_dim & (self.level_dim - 1):
            raise ConfigError(f"level_dim must be a power of two, got {self.level_dim}")
        if self.grid_type not in ("tiled", "hash"):
            raise ConfigError(f"unknown grid_type {self.grid_type!r}", "use 'tiled' or 'hash'")
        if self.interpolation not in ("linear", "smoothstep"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}", "use 'linear' or 'smoothstep'")
        if not 4 <= self.log2_table_size <= 24:
            raise ConfigError(f"log2_table_size {self.log2_table_size} out of range [4, 24]")

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.level_dim

    @classmethod
    def hashgrid(cls, **kw: object) -> GridEncodingConfig:
        """The unused upstream ``hashgrid`` option: hashed, table 2^19 (smoothstep upstream)."""
        kw.setdefault("grid_type", "hash")
        kw.setdefault("log2_table_size", 19)
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LevelSpec:
    """Geometry of one level: kernel scale, resolution, table slice and index strides."""

    level: int
    scale: float  # s_l = base·b^l − 1 (float32 value, as the CUDA kernel computes it)
    resolution: int  # R_l = ceil(s_l) + 1; the grid has R_l + 1 vertices per axis
    table_size: int
    offset: int
    hashed: bool
    strides: tuple[int, int, int]  # 0 for dimensions dropped by the stride guard
    wraps: bool  # the index can exceed the table (then table_size is a power of two)


@dataclass(frozen=True)
class GridLayout:
    """All levels of one grid plus the total number of entries."""

    per_level_scale: float
    levels: tuple[LevelSpec, ...] = field(default_factory=tuple)

    @property
    def total_entries(self) -> int:
        last = self.levels[-1]
        return last.offset + last.table_size

    @property
    def offsets(self) -> list[int]:
        return [lv.offset for lv in self.levels] + [self.total_entries]


def grid_layout(cfg: GridEncodingConfig, bound: float = 1.0) -> GridLayout:
    """Compute the per-level geometry exactly as torch-ngp (python offsets + CUDA kernel scale)."""
    desired = cfg.desired_resolution * bound
    per_level_scale = float(np.exp2(np.log2(desired / cfg.base_resolution) / (cfg.num_levels - 1)))
    log2_s = np.float32(np.log2(per_level_scale))  # ``S`` is passed to the kernel as a float
    cap = 2**cfg.log2_table_size
    levels = []
    offset = 0
    for lv in range(cfg.num_levels):
        res_py = int(np.ceil(cfg.base_resolution * per_level_scale**lv))  # python side (offsets)
        n = min(cap, (res_py + 1) ** cfg.input_dim)
        size = int(math.ceil(n / 8) * 8)
        scale = np.float32(np.exp2(np.float32(lv) * log2_s) * np.float32(cfg.base_resolution)) - np.float32(1)
        resolution = int(np.ceil(scale)) + 1  # kernel side (indices)
        side = resolution + 1
        strides = [0, 0, 0]
        stride = 1
        for d in range(cfg.input_dim):
            if cfg.stride_guard and stride > size:
                break
            strides[d] = stride
            stride *= side
        dense = side**cfg.input_dim
        hashed = cfg.grid_type == "hash" and stride > size
        wraps = dense > size
        if wraps and size & (size - 1):
            raise ConfigError(f"level {lv}: wrapped table size {size} is not a power of two")
        levels.append(
            LevelSpec(
                lv,
                float(scale),
                resolution,
                size,
                offset,
                hashed,
                (strides[0], strides[1], strides[2]),
                wraps,
            )
        )
        offset += size
    return GridLayout(per_level_scale, tuple(levels))


def level_index(layout: GridLayout, level: int, corner: Tensor) -> Tensor:
    """Table row (without the level offset) of integer grid corners ``[..., 3]`` at one level.

    Written for hand checks in tests; the encoders use the vectorised :func:`_corner_index`.
    """
    lv = layout.levels[level]
    c = corner.long()
    if lv.hashed:
        idx = (c[..., 0] * HASH_PRIMES[0]) & _UINT32
        idx = idx ^ ((c[..., 1] * HASH_PRIMES[1]) & _UINT32)
        idx = idx ^ ((c[..., 2] * HASH_PRIMES[2]) & _UINT32)
    else:
        idx = c[..., 0] * lv.strides[0] + c[..., 1] * lv.strides[1] + c[..., 2] * lv.strides[2]
        idx = idx & _UINT32
    return idx % lv.table_size


class _LevelBuffers(nn.Module):
    """Per-level constants as (non-persistent) device buffers, shared by torch and Triton paths."""

    def __init__(self, layout: GridLayout) -> None:
        super().__init__()
        lv = layout.levels
        self.register_buffer(
            "scales", torch.tensor([x.scale for x in lv], dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "strides", torch.tensor([x.strides for x in lv], dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "sizes", torch.tensor([x.table_size for x in lv], dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "starts", torch.tensor([x.offset for x in lv], dtype=torch.int64), persistent=False
        )
        self.register_buffer(
            "hashed", torch.tensor([x.hashed for x in lv], dtype=torch.bool), persistent=False
        )
        # Triton kernels use ``index & mask`` instead of ``index % size`` (exact: wrapped sizes are 2^k)
        masks = [(x.table_size - 1) if x.wraps else 0x7FFFFFFF for x in lv]
        self.register_buffer("wrap_masks", torch.tensor(masks, dtype=torch.int32), persistent=False)
        self.register_buffer("strides32", self.strides.to(torch.int32), persistent=False)
        self.register_buffer("starts32", self.starts.to(torch.int32), persistent=False)
        self.register_buffer("hashed32", self.hashed.to(torch.int32), persistent=False)
        self.register_buffer("sizes32", self.sizes.to(torch.int32), persistent=False)
        self.any_hashed = any(x.hashed for x in lv)  # the Triton pair layout is for tiled levels
        self.max_size = max(x.table_size for x in lv)  # host-side: launch grids need no GPU sync


def _corner_index(pg: Tensor, bits: tuple[int, int, int], bufs: _LevelBuffers, n_levels: int) -> Tensor:
    """Global table rows ``[N, La]`` of one corner for all active levels.

    ``pg``: ``[N, La, 3]`` int64 floor grid coordinates.
    """
    cx = pg[..., 0] + bits[0]
    cy = pg[..., 1] + bits[1]
    cz = pg[..., 2] + bits[2]
    strides = bufs.strides[:n_levels]
    tiled = cx * strides[:, 0] + cy * strides[:, 1] + cz * strides[:, 2]
    hashed = (cx * HASH_PRIMES[0]) ^ ((cy * HASH_PRIMES[1]) & _UINT32) ^ ((cz * HASH_PRIMES[2]) & _UINT32)
    idx = torch.where(bufs.hashed[:n_levels], hashed, tiled) & _UINT32
    return idx % bufs.sizes[:n_levels] + bufs.starts[:n_levels]


def _interp_weights(frac: Tensor, interpolation: str) -> Tensor:
    if interpolation == "smoothstep":
        return frac * frac * (3.0 - 2.0 * frac)
    return frac


def encode_torch(
    u: Tensor,
    table: Tensor,
    bufs: _LevelBuffers,
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
    frac = _interp_weights(pos - pgf, interpolation)
    pg = pgf.long()
    table = table.float()
    out = torch.zeros(n, n_levels, level_dim, dtype=torch.float32, device=u.device)
    for bits in _CORNER_BITS:
        w = torch.ones_like(frac[..., 0])
        for d in range(3):
            w = w * (frac[..., d] if bits[d] else 1.0 - frac[..., d])
        idx = _corner_index(pg, bits, bufs, n_levels)  # [N, La]
        if time_rows is None:
            val = table[idx]
        else:
            row_lo, row_hi, w_hi = time_rows
            v_lo = table[idx + row_lo]
            v_hi = table[idx + row_hi]
            val = v_hi * w_hi[..., None] + v_lo * (1.0 - w_hi[..., None])
        out = out + w[..., None] * val
    inside = ((u >= 0) & (u <= 1)).all(dim=-1)
    return out * inside[:, None, None].to(out.dtype)


class GatherTables:
    """Builds the Triton gather table (pairs or quads, ``encoding_triton``) of an encoder's parameter,
    once per call.

    Deliberately not cached across calls: a cache keyed on the parameter's autograd version counter goes
    stale under ``torch.optim.Adam(fused=True)``, whose step does not bump the counter (a test checks
    this), and under writes through ``.data``. A build costs about 55 µs for the paper's 8 MB table
    (BENCHMARKS.md §2). ``builds`` counts the calls that used the pair layout.
    """

    def __init__(self) -> None:
        self.builds = 0

    def get(self, table: Tensor, bufs: _LevelBuffers, time_grid_size: int, entries_per_grid: int) -> Tensor:
        from animate124.scene.encoding_triton import build_pair_table

        self.builds += 1
        return build_pair_table(table, bufs, time_grid_size, entries_per_grid)


def _triton_usable(device: torch.device) -> bool:
    from animate124.scene import encoding_triton

    return encoding_triton.is_available(device)


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """``auto`` -> triton on CUDA when importable, else torch (SPEC 3.1 speed note)."""
    if backend == "auto":
        return "triton" if _triton_usable(device) else "torch"
    if backend == "triton" and not _triton_usable(device):
        raise ConfigError(
            f"triton grid backend requested but not usable on {device}",
            "install triton and run on CUDA (or set TRITON_INTERPRET=1 for CPU tests), or use backend 'torch'",
        )
    return backend


def encode_points(
    u: Tensor,
    table: Tensor,
    bufs: _LevelBuffers,
    n_active: int,
    cfg: GridEncodingConfig,
    backend: Backend,
    num_levels: int | None = None,
    time: tuple[Tensor, int, int] | None = None,
    gather_tables: GatherTables | None = None,
) -> Tensor:
    """Dispatch to the torch or Triton encoder; returns ``[N, L·C]`` with inactive levels zero.

    ``time``: optional ``(t [N] in [0,1], T, entries_per_grid)`` for a stacked ``[T·E, C]`` table.
    ``gather_tables``: the owning module's :class:`GatherTables` (Triton pair layout), or None.
    """
    n = u.shape[0]
    num_levels = num_levels or cfg.num_levels
    c = cfg.level_dim
    if n_active == 0 or n == 0:
        return u.new_zeros(n, num_levels * c, dtype=torch.float32)
    which = resolve_backend(backend, u.device)
    if which == "triton":
        from animate124.scene import encoding_triton

        if time is None:
            return encoding_triton.grid_encode(
                u, table, bufs, n_active, num_levels, c, cfg.interpolation, gather_tables=gather_tables
            )
        t, t_size, e = time
        return encoding_triton.grid_encode(
            u,
            table,
            bufs,
            n_active,
            num_levels,
            c,
            cfg.interpolation,
            t=t,
            time_grid_size=t_size,
            entries_per_grid=e,
            gather_tables=gather_tables,
        )
    rows = None
    if time is not None:
        t, t_size, e = time
        g = t.reshape(-1, 1).float() * (t_size - 1)
        lo = torch.floor(g)
        rows = (lo.long() * e, torch.ceil(g).long() * e, g - lo)
    feats = encode_torch(u, table, bufs, n_active, c, cfg.interpolation, rows)
    out = feats.reshape(n, n_active * c)
    if n_active < num_levels:
        out = torch.cat([out, out.new_zeros(n, (num_levels - n_active) * c)], dim=1)
    return out


def _unit_coords(x: Tensor, bound: float) -> Tensor:
    """World ``[-bound, bound]^3`` -> unit cube, ``[N, 3]`` float32 (as upstream ``(x+b)/(2b)``)."""
    return (x.float() + bound) / (2 * bound)


def _check_points(x: Tensor) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"grid encoder expects points [N, 3], got {tuple(x.shape)}")


class GridEncoding(nn.Module):
    """One spatial grid: ``forward(x [N,3] in [-bound,bound]) -> [N, L·C]`` (SPEC 3.1).

    Parameters: ``embeddings [total_entries, C]`` (U(-1e-4, 1e-4)); buffer ``offsets [L+1]`` (int32,
    like torch-ngp). ``backend`` is resolved on every call from the input device ("auto": Triton on
    CUDA if importable, else torch). The tcnn backend has its own table layout; build it with
    :func:`make_grid_encoding`.
    """

    def __init__(
        self, cfg: GridEncodingConfig | None = None, bound: float = 1.0, backend: Backend = "auto"
    ) -> None:
        super().__init__()
        self.cfg = cfg or GridEncodingConfig()
        if backend == "tcnn":
            raise ConfigError(
                "GridEncoding has the torch-ngp table layout; tcnn uses its own",
                "build the tcnn encoder with animate124.scene.encoding.make_grid_encoding(cfg, backend='tcnn')",
            )
        if backend not in ("auto", "torch", "triton"):
            raise ConfigError(f"unknown grid backend {backend!r}", "use auto, torch, triton or tcnn")
        self.bound = float(bound)
        self.backend = backend
        self.layout = grid_layout(self.cfg, self.bound)
        self.num_levels = self.cfg.num_levels
        self.level_dim = self.cfg.level_dim
        self.output_dim = self.cfg.output_dim
        self.bufs = _LevelBuffers(self.layout)
        self.register_buffer("offsets", torch.tensor(self.layout.offsets, dtype=torch.int32))
        self.embeddings = nn.Parameter(torch.empty(self.layout.total_entries, self.level_dim))
        self.gather_tables = GatherTables()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        nn.init.uniform_(self.embeddings, -r, r)

    def _active_levels(self, max_level: int | None) -> int:
        if max_level is None:
            return self.num_levels
        return max(0, min(int(max_level), self.num_levels))

    def forward(self, x: Tensor, max_level: int | None = None) -> Tensor:
        """``x [N,3]`` world points -> features ``[N, L·C]``; levels ``>= max_level`` are zero."""
        _check_points(x)
        u = _unit_coords(x, self.bound)
        n_active = self._active_levels(max_level)
        return encode_points(
            u, self.embeddings, self.bufs, n_active, self.cfg, self.backend, self.num_levels,
            gather_tables=self.gather_tables,
        )  # fmt: skip

    def encode_with_table(self, u: Tensor, table: Tensor, max_level: int | None = None) -> Tensor:
        """Encode unit-cube points ``u [N,3]`` with an arbitrary table ``[E, C]`` of this layout."""
        return encode_points(
            u, table, self.bufs, self._active_levels(max_level), self.cfg, self.backend, self.num_levels
        )

    def extra_repr(self) -> str:
        return (
            f"{self.cfg.grid_type}, L={self.num_levels}, C={self.level_dim}, "
            f"entries={self.layout.total_entries}, bound={self.bound}, backend={self.backend}"
        )


SLOT_MAX_TIMES = 32
SLOT_MIN_POINTS_PER_TIME = 2**14


class _TableTimeTV(torch.autograd.Function):
    """Upstream time TV on the stacked table, chunked so no ``[T-1, E, C]`` temporary is kept.

    ``loss = Σ_{i=0}^{T-2} mean_e Σ_c (W_i[e,c] − W_{i+1}[e,c])² / ((T−1)·L)``;
    ``dW_i = 2k·((W_i − W_{i−1})·[i>0] + (W_i − W_{i+1})·[i<T−1])`` with ``k = 1/(E·(T−1)·L)``.
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


class TimeGridEncoding(nn.Module):
    """``T`` spatial grids stacked in one parameter ``embeddings [T, E, C]`` (SPEC 3.1 "Time", 11.16).

    ``forward(x [N,3], t [N,1] in [0,1]) -> [N, L·C]`` with ``g = t·(T−1)``, ``lo = ⌊g⌋``, ``hi = ⌈g⌉``
    and ``f = f_hi(x)·(g−lo) + f_lo(x)·(1−(g−lo))``; both time grids are read in one gather pass.
    """

    def __init__(
        self,
        cfg: GridEncodingConfig | None = None,
        time_grid_size: int = 64,
        bound: float = 1.0,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if time_grid_size < 1:
            raise ConfigError(f"time_grid_size must be >= 1, got {time_grid_size}")
        if backend not in ("auto", "torch", "triton"):
            raise ConfigError(f"time grid backend {backend!r} not supported", "use auto, torch or triton")
        self.cfg = cfg or GridEncodingConfig()
        self.time_grid_size = int(time_grid_size)
        self.bound = float(bound)
        self.backend = backend
        self.layout = grid_layout(self.cfg, self.bound)
        self.num_levels = self.cfg.num_levels
        self.level_dim = self.cfg.level_dim
        self.output_dim = self.cfg.output_dim
        self.entries_per_grid = self.layout.total_entries
        self.bufs = _LevelBuffers(self.layout)
        self.register_buffer("offsets", torch.tensor(self.layout.offsets, dtype=torch.int32))
        self.embeddings = nn.Parameter(
            torch.empty(self.time_grid_size, self.entries_per_grid, self.level_dim)
        )
        self.gather_tables = GatherTables()
        self.slot_blend = True  # see _encode_slots
        self.slot_builds = 0  # calls that took the slot path
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.cfg.init_range
        nn.init.uniform_(self.embeddings, -r, r)

    @classmethod
    def from_static(cls, static: GridEncoding, time_grid_size: int = 64) -> TimeGridEncoding:
        """Copy a static grid's table into all ``T`` slots (SPEC 3.1 ``from_pretrained_3d``)."""
        enc = cls(static.cfg, time_grid_size, static.bound, static.backend)
        enc.to(device=static.embeddings.device)
        with torch.no_grad():
            enc.embeddings.copy_(
                static.embeddings.detach().to(enc.embeddings.dtype).expand_as(enc.embeddings)
            )
        return enc

    def forward(self, x: Tensor, t: Tensor, max_level: int | None = None) -> Tensor:
        """``x [N,3]``, ``t [N,1]`` (or ``[1,1]``/``[N]``/scalar) -> features ``[N, L·C]``."""
        _check_points(x)
        n = x.shape[0]
        n_active = self.num_levels if max_level is None else max(0, min(int(max_level), self.num_levels))
        u = _unit_coords(x, self.bound)
        tt = _broadcast_time(t, n).float().clamp(0.0, 1.0).reshape(-1).contiguous()
        flat = self.embeddings.view(-1, self.level_dim)
        if self.slot_blend and n_active > 0:
            out = self._encode_slots(u, tt, n_active)
            if out is not None:
                return out
        time = (tt, self.time_grid_size, self.entries_per_grid)
        return encode_points(
            u, flat, self.bufs, n_active, self.cfg, self.backend, time=time, gather_tables=self.gather_tables
        )

    def _encode_slots(self, u: Tensor, tt: Tensor, n_active: int) -> Tensor | None:
        """Few distinct times (a clip's frames): blend one table per time, then read one grid per point.

        ``f(x, t) = Σ_c w_c·((1−a)·W_lo[c] + a·W_hi[c])``: blending the two time grids per distinct
        time first (one dense kernel, ``encoding_triton.encode_slots``) gives the same features with
        half the random reads and reductions per point. Used with the Triton pair layout when the
        points come in at most ``SLOT_MAX_TIMES`` runs of equal time (the renderer emits frame-major
        points) and there are at least ``SLOT_MIN_POINTS_PER_TIME`` points per run; otherwise returns
        None. Finding the runs synchronises with the GPU once per call. The blended tables are built
        on every call (no cache, see :class:`GatherTables`).
        """
        n = u.shape[0]
        if resolve_backend(self.backend, u.device) != "triton" or self.time_grid_size < 2:
            return None
        from animate124.scene import encoding_triton

        if not encoding_triton.pairs_supported(self.embeddings, self.level_dim, self.bufs):
            return None
        if n < SLOT_MIN_POINTS_PER_TIME:
            return None
        times, slot = torch.unique_consecutive(tt, return_inverse=True)
        k = int(times.numel())
        if k > SLOT_MAX_TIMES or n < k * SLOT_MIN_POINTS_PER_TIME:
            return None
        g32 = (times * float(self.time_grid_size - 1)).float()  # the kernels' fp32 product
        lo = torch.floor(g32).long()
        hi = torch.ceil(g32).long()
        a = (g32 - torch.floor(g32)).float()
        pairs = encoding_triton.build_slot_pairs(self.embeddings, lo, hi, a, self.bufs, self.entries_per_grid)
        self.slot_builds += 1
        return encoding_triton.encode_slots(
            u, self.embeddings.view(-1, self.level_dim), pairs, slot, lo, hi, a, self.bufs,
            n_active, self.num_levels, self.cfg.interpolation, self.time_grid_size, self.entries_per_grid,
        )  # fmt: skip

    def grid_features(self, x: Tensor, index: int, max_level: int | None = None) -> Tensor:
        """Features ``[N, L·C]`` of time grid ``index`` alone (``f_index(x)``)."""
        n_active = self.num_levels if max_level is None else max(0, min(int(max_level), self.num_levels))
        return encode_points(
            _unit_coords(x, self.bound), self.embeddings[index], self.bufs, n_active, self.cfg, self.backend
        )

    def time_tv_loss(
        self,
        n_points: int = 100_000,
        generator: torch.Generator | None = None,
        mode: Literal["table", "points"] = "table",
        chunk: int = 8,
    ) -> Tensor:
        """Time total variation between neighbouring grids, a scalar (SPEC 3.6, 11.16).

        ``mode="table"`` (default) is what upstream runs (``network_4dgrid.py:TV_loss``, called without
        points by ``dnerf/utils.py``): ``Σ_{i=0}^{T-2} mean_e ‖W_i[e] − W_{i+1}[e]‖² / ((T−1)·L)``
        over the table entries; chunked, no encoder call. ``mode="points"`` is the SPEC 3.6 text:
        ``Σ_i mean_x ‖f_i(x) − f_{i+1}(x)‖² / ((T−1)·L)`` at ``n_points`` uniform points in
        ``[-bound, bound]^3``; it evaluates each grid once (``T`` encoder calls, not ``2(T−1)``).
        """
        t_size = self.time_grid_size
        if t_size < 2:
            return self.embeddings.new_zeros(())
        if mode == "table":
            return _TableTimeTV.apply(self.embeddings, self.num_levels, chunk)
        if mode != "points":
            raise ConfigError(f"unknown time TV mode {mode!r}", "use 'table' or 'points'")
        dev = self.embeddings.device
        x = (torch.rand(n_points, 3, generator=generator, device=dev) * 2 - 1) * self.bound
        total = self.embeddings.new_zeros((), dtype=torch.float32)
        prev = self.grid_features(x, 0)
        for i in range(1, t_size):
            cur = self.grid_features(x, i)
            total = total + (prev - cur).square().sum(-1).mean()
            prev = cur
        return total / ((t_size - 1) * self.num_levels)

    def extra_repr(self) -> str:
        return (
            f"T={self.time_grid_size}, {self.cfg.grid_type}, L={self.num_levels}, C={self.level_dim}, "
            f"entries/grid={self.entries_per_grid}, backend={self.backend}"
        )


def _broadcast_time(t: Tensor | float, n: int) -> Tensor:
    """Times as ``[N, 1]``: accepts ``[N,1]``, ``[N]``, ``[1,1]``, ``[1]`` or a scalar."""
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t))
    if t.dim() == 0:
        return t.reshape(1, 1).expand(n, 1)
    t = t.reshape(-1, 1)
    if t.shape[0] == 1:
        return t.expand(n, 1)
    if t.shape[0] != n:
        raise ValueError(f"times have {t.shape[0]} rows for {n} points")
    return t


def make_grid_encoding(
    cfg: GridEncodingConfig | None = None, bound: float = 1.0, backend: Backend = "auto"
) -> nn.Module:
    """A static grid encoder for ``backend``; ``tcnn`` gives :class:`TcnnGridEncoding` (own layout)."""
    if backend == "tcnn":
        from animate124.scene.encoding_tcnn import TcnnGridEncoding

        return TcnnGridEncoding(cfg or GridEncodingConfig(), bound)
    return GridEncoding(cfg, bound, backend)
