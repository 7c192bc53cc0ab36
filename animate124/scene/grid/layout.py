"""Level geometry and table index layout of the multiresolution grid (SPEC 3.1).

This reproduces the torch-ngp ``GridEncoder`` that upstream uses (``gridencoder/``):

* per-level growth ``b = 2^(log2(desired/base)/(L-1))`` (``desired = desired_resolution·bound``);
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
  dense grid exceeds the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from animate124.errors import ConfigError

GridType = Literal["tiled", "hash"]
Interpolation = Literal["linear", "smoothstep"]

HASH_PRIMES = (1, 2654435761, 805459861)
UINT32 = 0xFFFFFFFF
LOG2_TABLE_RANGE = (4, 24)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class GridEncodingConfig:
    """Hyperparameters of one spatial grid.

    The six model hyperparameters have no defaults here: their defaults live in the config schema
    (``FieldConfig``; SPEC 3.1: tiled, 16 levels × 2 features, base 16, desired 2048, 2^16 tables).
    ``desired_resolution`` is the finest resolution at ``bound = 1`` (an int; the encoder multiplies it
    by ``bound``). The technical fields below keep upstream's behaviour by default.
    """

    grid_type: GridType
    num_levels: int
    level_dim: int
    base_resolution: int
    desired_resolution: int
    log2_table_size: int
    input_dim: int = 3
    interpolation: Interpolation = "linear"
    init_range: float = 1e-4  # U(-r, r)
    stride_guard: bool = True  # upstream index quirk, see module docstring

    def __post_init__(self) -> None:
        if self.input_dim != 3:
            raise ConfigError(f"grid input_dim must be 3, got {self.input_dim}", "only 3-D grids are built")
        for name in ("num_levels", "level_dim", "base_resolution", "desired_resolution", "log2_table_size"):
            if not _is_int(getattr(self, name)):
                raise ConfigError(f"grid {name} must be an int, got {getattr(self, name)!r}")
        if self.num_levels < 2 or self.level_dim < 1:
            raise ConfigError("grid needs num_levels >= 2 and level_dim >= 1")
        if self.level_dim & (self.level_dim - 1):
            raise ConfigError(f"level_dim must be a power of two, got {self.level_dim}")
        if self.base_resolution < 1 or self.desired_resolution < 1:
            raise ConfigError("grid base_resolution and desired_resolution must be >= 1")
        if self.grid_type not in ("tiled", "hash"):
            raise ConfigError(f"unknown grid_type {self.grid_type!r}", "use 'tiled' or 'hash'")
        if self.interpolation not in ("linear", "smoothstep"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}", "use 'linear' or 'smoothstep'")
        lo, hi = LOG2_TABLE_RANGE
        if not lo <= self.log2_table_size <= hi:
            raise ConfigError(f"log2_table_size {self.log2_table_size} out of range [{lo}, {hi}]")

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.level_dim


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

    Written for hand checks in tests; the encoders use the vectorised ``reference.corner_index``.
    """
    lv = layout.levels[level]
    c = corner.long()
    if lv.hashed:
        idx = (c[..., 0] * HASH_PRIMES[0]) & UINT32
        idx = idx ^ ((c[..., 1] * HASH_PRIMES[1]) & UINT32)
        idx = idx ^ ((c[..., 2] * HASH_PRIMES[2]) & UINT32)
    else:
        idx = c[..., 0] * lv.strides[0] + c[..., 1] * lv.strides[1] + c[..., 2] * lv.strides[2]
        idx = idx & UINT32
    return idx % lv.table_size


class LevelBuffers(nn.Module):
    """Per-level constants as (non-persistent) device buffers, shared by the torch and Triton paths.

    Host-side attributes: ``any_hashed`` (the Triton pair layout is for tiled levels only) and
    ``max_size`` (the largest level, so launch grids need no GPU sync).
    """

    def __init__(self, layout: GridLayout) -> None:
        super().__init__()
        lv = layout.levels

        def buf(name: str, values: list, dtype: torch.dtype) -> None:
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

        buf("scales", [x.scale for x in lv], torch.float32)
        buf("strides", [x.strides for x in lv], torch.int64)
        buf("sizes", [x.table_size for x in lv], torch.int64)
        buf("starts", [x.offset for x in lv], torch.int64)
        buf("hashed", [x.hashed for x in lv], torch.bool)
        # Triton kernels use ``index & mask`` instead of ``index % size`` (exact: wrapped sizes are 2^k)
        buf("wrap_masks", [(x.table_size - 1) if x.wraps else 0x7FFFFFFF for x in lv], torch.int32)
        buf("strides32", [x.strides for x in lv], torch.int32)
        buf("starts32", [x.offset for x in lv], torch.int32)
        buf("hashed32", [int(x.hashed) for x in lv], torch.int32)
        buf("sizes32", [x.table_size for x in lv], torch.int32)
        self.any_hashed = any(x.hashed for x in lv)
        self.max_size = max(x.table_size for x in lv)
