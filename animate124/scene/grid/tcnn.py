"""Optional tiny-cuda-nn grid encoder (``backend="tcnn"``), for users who have it built.

tinycudann has no wheel (install from source with CUDA). It is never chosen automatically.

What maps onto :class:`~animate124.scene.grid.layout.GridEncodingConfig`:

* ``num_levels``, ``level_dim`` (``n_features_per_level``), ``log2_table_size``
  (``log2_hashmap_size``), ``base_resolution``, the per-level scale, ``interpolation``
  "linear"/"smoothstep" -> "Linear"/"Smoothstep";
* the level scale ``base·b^l − 1``, the ``+0.5`` offset and the stride-guarded index loop.

What does not:

* grid type: tcnn's ``"Tiled"`` caps every level at ``base_resolution^3`` entries (4,096 for the paper
  config, ``grid.h``), not at ``2^log2_table_size``, so it would cut the capacity 16×. Both
  ``"tiled"`` and ``"hash"`` therefore map to tcnn ``"Hash"``: same capacity and the same dense
  coarse levels, but fine levels are hashed instead of wrapped;
* table size per level: tcnn uses ``R^3`` entries and strides by ``R``, torch-ngp ``(R+1)^3`` and
  ``R+1`` (level 0: 4,096 vs 4,920); tables and checkpoints are **not** interchangeable with the
  torch/Triton backends and the 903,480-entry total does not hold;
* points outside the unit cube: tcnn does not zero them; this wrapper multiplies by an inside mask;
* parameters are one flat vector ``params`` in tcnn's precision (fp16 on most GPUs), initialised by
  tcnn (U(−1e−4, 1e−4) as well);
* ``stride_guard=False`` and the time-stacked grid have no tcnn equivalent (DynamicField refuses tcnn,
  and ``DynamicField.from_static`` cannot convert a tcnn static field);
* tcnn computes input gradients; they are not used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from animate124.errors import ConfigError
from animate124.scene.grid.layout import GridEncodingConfig, grid_layout


def _import_tcnn():  # pragma: no cover - needs tinycudann
    try:
        import tinycudann as tcnn
    except Exception as exc:  # ImportError or CUDA load failures
        raise ConfigError(
            "grid backend 'tcnn' requested but tinycudann is not importable",
            "install tiny-cuda-nn's PyTorch bindings from source, or use backend 'auto'",
        ) from exc
    return tcnn


class TcnnGridEncoding(nn.Module):
    """``forward(x [N,3] in [−bound, bound], max_level=None) -> [N, L·C]`` float32 via tinycudann."""

    def __init__(self, cfg: GridEncodingConfig, bound: float = 1.0) -> None:
        super().__init__()
        if not cfg.stride_guard:
            raise ConfigError("tcnn always uses the stride-guarded index", "set stride_guard=True")
        tcnn = _import_tcnn()
        self.cfg = cfg
        self.bound = float(bound)
        self.num_levels = cfg.num_levels
        self.level_dim = cfg.level_dim
        self.output_dim = cfg.output_dim
        layout = grid_layout(cfg, bound)
        self.encoding = tcnn.Encoding(  # pragma: no cover - needs tinycudann
            n_input_dims=3,
            encoding_config={
                "otype": "Grid",
                "type": "Hash",  # see module docstring: tcnn "Tiled" has base_resolution^3 entries
                "n_levels": cfg.num_levels,
                "n_features_per_level": cfg.level_dim,
                "log2_hashmap_size": cfg.log2_table_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": layout.per_level_scale,
                "interpolation": "Smoothstep" if cfg.interpolation == "smoothstep" else "Linear",
            },
        )

    def forward(self, x: Tensor, max_level: int | None = None) -> Tensor:  # pragma: no cover - needs tcnn
        u = (x.float() + self.bound) / (2 * self.bound)
        inside = ((u >= 0) & (u <= 1)).all(-1, keepdim=True)
        out = self.encoding(u.clamp(0, 1)).float() * inside
        if max_level is not None and max_level < self.num_levels:
            keep = torch.arange(self.output_dim, device=out.device) < max(max_level, 0) * self.level_dim
            out = out * keep
        return out
