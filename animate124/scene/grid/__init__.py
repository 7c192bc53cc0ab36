"""Multiresolution grid encodings (SPEC 3.1): static and time-stacked, torch / Triton / tinycudann.

Public API (what fields and stages import):

* :class:`GridEncodingConfig`, :func:`grid_layout`, :func:`level_index`, :class:`GridLayout`,
  :class:`LevelSpec` (``layout``: level geometry and index layout);
* :class:`GridEncoding`, :class:`TimeGridEncoding`, :func:`make_grid_encoding`,
  :func:`resolve_backend`, :func:`broadcast_time` (``modules``);
* :class:`KernelOptions` (``options``: which Triton kernels run and how they are launched).

Submodules: ``reference`` (torch reference encoder, table time TV), ``kernels`` (Triton kernels),
``launch`` (kernel launches and autograd Functions), ``stencil`` and ``stencil_kernels`` (the fused
finite-difference normals, ``KernelOptions.fused_normals``), ``tcnn`` (optional tiny-cuda-nn encoder).
"""

from animate124.scene.grid.layout import (
    GridEncodingConfig,
    GridLayout,
    GridType,
    Interpolation,
    LevelSpec,
    grid_layout,
    level_index,
)
from animate124.scene.grid.modules import (
    Backend,
    GridEncoding,
    TimeGridEncoding,
    TimeTVMode,
    broadcast_time,
    make_grid_encoding,
    resolve_backend,
)
from animate124.scene.grid.options import KernelOptions
from animate124.scene.grid.stencil import stencil_normals
from animate124.scene.grid.stencil import supported as stencil_supported

__all__ = [
    "Backend",
    "GridEncoding",
    "GridEncodingConfig",
    "GridLayout",
    "GridType",
    "Interpolation",
    "KernelOptions",
    "LevelSpec",
    "TimeGridEncoding",
    "TimeTVMode",
    "broadcast_time",
    "grid_layout",
    "level_index",
    "make_grid_encoding",
    "resolve_backend",
    "stencil_normals",
    "stencil_supported",
]
