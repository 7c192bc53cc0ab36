"""Ray utilities: pixel rays (re-exported from :mod:`cameras`) and ray/AABB intersection (SPEC §3.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from animate124.render.cameras import generate_rays

__all__ = ["generate_rays", "near_far_from_aabb"]


def near_far_from_aabb(
    origins: Tensor, dirs: Tensor, bound: float, min_near: float = 0.2
) -> tuple[Tensor, Tensor, Tensor]:
    """Slab-method intersection of rays with the box [−bound, bound]³.

    origins, dirs: [R, 3] (dirs need not be unit; t is in units of the given direction, so for
    upstream's unnormalized camera rays t is planar depth). Returns near [R], far [R] and hit [R] bool.
    ``near`` is clamped to at least ``min_near`` (0.2 on upstream's CUDA path, where ``--min_near`` is
    not passed); a ray hits iff ``far > near`` after the clamp.
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-15, torch.full_like(dirs, 1e-15), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    return near, far, hit
