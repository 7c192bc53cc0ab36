"""Shading of per-point albedo and normals (SPEC 3.1 "Shading", upstream ``network_4dgrid.forward``).

With ambient ratio ``k`` and light direction ``l``:

* ``albedo``:      ``c = albedo``
* ``lambertian``:  ``c = albedo·(k + (1−k)·max(0, n·l))``
* ``textureless``: ``c = (k + (1−k)·max(0, n·l))·[1,1,1]``
* ``normal``:      ``c = (n + 1)/2``

``l = normalize(camera_origin + N(0, I₃))``, one draw per render call shared by all rays.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from animate124.errors import ConfigError

ShadingMode = Literal["albedo", "lambertian", "textureless", "normal"]
SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")


def _normalize(v: Tensor, eps: float = 1e-20) -> Tensor:
    return v / torch.sqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=eps))


def shade(
    albedo: Tensor,
    normal: Tensor | None,
    light_dir: Tensor,
    ambient: float | Tensor = 1.0,
    mode: ShadingMode = "albedo",
) -> Tensor:
    """Colour ``[N,3]`` from ``albedo [N,3]``, ``normal [N,3]`` (unit; unused for "albedo").

    ``light_dir``: ``[3]`` or ``[N,3]`` (unit); ``ambient``: float, ``[]``, ``[N]`` or ``[N,1]``.
    """
    if mode not in SHADING_MODES:
        raise ConfigError(f"unknown shading mode {mode!r}", f"use one of {', '.join(SHADING_MODES)}")
    if mode == "albedo":
        return albedo
    if normal is None:
        raise ValueError(f"shading mode {mode!r} needs normals")
    if mode == "normal":
        return (normal + 1) / 2
    k = torch.as_tensor(ambient, dtype=normal.dtype, device=normal.device)
    if k.dim() == 1:
        k = k[:, None]
    ndotl = (normal * light_dir.to(normal.dtype).expand_as(normal)).sum(-1, keepdim=True)  # [N,1]
    lambert = k + (1 - k) * ndotl.clamp(min=0)
    if mode == "textureless":
        return lambert.expand(-1, 3)
    return albedo * lambert


def sample_light_dir(camera_origin: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``normalize(camera_origin + N(0, I₃))``, ``[3]`` (SPEC 3.1, ``dnerf/utils.py:208``)."""
    o = camera_origin.reshape(3)
    noise = torch.randn(3, generator=generator, device=o.device if generator is None else generator.device)
    return _normalize(o + noise.to(device=o.device, dtype=o.dtype))
