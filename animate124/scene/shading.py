"""Shading of per-point albedo and normals (SPEC 3.1 "Shading", upstream ``network_4dgrid.forward``).

With ambient ratio ``k`` and light direction ``l``:

* ``albedo``:      ``c = albedo``
* ``lambertian``:  ``c = albedo·(k + (1−k)·max(0, n·l))``
* ``textureless``: ``c = (k + (1−k)·max(0, n·l))·[1,1,1]``
* ``normal``:      ``c = (n + 1)/2``

The light direction ``l = normalize(camera_origin_f + n)``, one ``n ~ N(0, I₃)`` per render call shared by all
rays and frames (each frame of a moving-camera clip lit from its own camera), is drawn by the training
systems (``stages/system.py``, ``NerfSystem.light_for``).
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
