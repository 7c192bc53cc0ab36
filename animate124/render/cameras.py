"""Cameras and pixel rays, in upstream's (stable-dreamfusion / Animate124) convention. SPEC §0, §3.3, §3.4, §7.

World frame: y is up. A camera on the viewing sphere is given by polar θ (degrees from +y), azimuth
φ (degrees, 0 on +z, 90 on +x) and radius r. It sits at

    center = r · (sinθ·sinφ, cosθ, sinθ·cosφ)            (SPEC §0, ``nerf/provider.py:68-175``)

and looks at the origin::

                +y (up, θ = 0)
                 |
                 |        camera (θ=90°, φ=90°) on +x
                 |       /
                 o------------- +x
                /
               /
             +z   <- reference camera: θ=90°, φ=0°, r=1.8 (SPEC §3.4)

The camera-to-world matrix ``c2w`` has columns ``(right, up, forward, center)`` with

    forward = normalize(center)                 (points AWAY from the scene)
    right   = normalize(forward × (0, 1, 0))
    up      = normalize(right × forward)

exactly as upstream builds it. For the reference camera this gives right = (−1,0,0), up = (0,1,0),
forward = (0,0,1): the frame has determinant −1, i.e. it is *mirror-handed* relative to a standard
right-handed look-at (which would have right = +x). Rendered images are therefore mirrored
left-right compared to a standard camera, and upstream compensates in the Zero123 pose embedding by
using ``sin(−Δazimuth)`` (SPEC §3.8). We keep upstream's construction so that sign convention holds.

Pixel rays use OpenGL camera space (camera looks down its −z, +y up)::

    x = (i + 0.5 − cx) / f,   y = −(j + 0.5 − cy) / f,   z = −1,   f = H / (2·tan(fovy/2))

with i the column, j the row, cx = W/2, cy = H/2 (upstream uses cx from H and cy from W, identical for
the square images it renders). World direction ``d = R · (x, y, −1)``, i.e. ``x·right + y·up −
forward``. Directions are **not normalized**: the ray parameter t equals camera-space (planar) depth,
and ‖d‖ ≥ 1. The same ray code serves ordinary OpenGL ``c2w`` matrices (NeRF-synthetic, D-NeRF).

Degeneracy (SPEC §11.12): at θ → 0° or 180° the cross product ``forward × y`` vanishes. We replace
``right`` there by its continuous limit along the meridian, ``(−cosφ, 0, sinφ)`` (for spherical
cameras ``forward × y = sinθ·(−cosφ, 0, sinφ)``), so poses stay finite and orthonormal at the poles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from animate124.errors import Animate124Error
from animate124.transfer import to_device

__all__ = [
    "Cameras",
    "CameraError",
    "spherical_to_position",
    "look_at_upstream",
    "camera_from_spherical",
    "reference_camera",
    "orbit_cameras",
    "fixed_view_cameras",
    "focal_from_fovy",
    "generate_rays",
]

_DEGENERATE_EPS = 1e-6


class CameraError(Animate124Error):
    """Inconsistent camera arguments (shapes, sizes, field of view)."""


@dataclass
class Cameras:
    """A batch of N pinhole cameras sharing one image size.

    Attributes:
        c2w: [N, 4, 4] camera-to-world, columns (right, up, forward, center), OpenGL camera space.
        fovy_deg: [N] vertical field of view in degrees.
        height, width: image size in pixels.
        polar, azimuth, radius: [N] spherical coordinates (degrees, degrees, world units) when known.
    """

    c2w: Tensor
    fovy_deg: Tensor
    height: int
    width: int
    polar: Tensor | None = None
    azimuth: Tensor | None = None
    radius: Tensor | None = None

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise CameraError(f"c2w must be [N,4,4], got {tuple(self.c2w.shape)}")
        n = self.c2w.shape[0]
        if self.fovy_deg.shape != (n,):
            raise CameraError(f"fovy_deg must be [{n}], got {tuple(self.fovy_deg.shape)}")
        if self.height <= 0 or self.width <= 0:
            raise CameraError(f"image size must be positive, got {self.height}x{self.width}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def centers(self) -> Tensor:
        """[N, 3] camera positions in world space."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        def mv(x: Tensor | None) -> Tensor | None:
            return None if x is None else to_device(x, device)

        return replace(
            self,
            c2w=to_device(self.c2w, device),
            fovy_deg=to_device(self.fovy_deg, device),
            polar=mv(self.polar),
            azimuth=mv(self.azimuth),
            radius=mv(self.radius),
        )

    def __getitem__(self, idx: int | slice | Tensor | Sequence[int]) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)

        def sel(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[idx]

        return replace(
            self,
            c2w=self.c2w[idx],
            fovy_deg=self.fovy_deg[idx],
            polar=sel(self.polar),
            azimuth=sel(self.azimuth),
            radius=sel(self.radius),
        )

    def with_size(self, height: int, width: int) -> Cameras:
        """Same poses and field of view at another resolution."""
        return replace(self, height=height, width=width)

    @staticmethod
    def cat(cams: Sequence[Cameras]) -> Cameras:
        """Concatenate camera batches of equal image size."""
        if not cams:
            raise CameraError("cannot concatenate an empty list of cameras")
        h, w = cams[0].height, cams[0].width
        if any(c.height != h or c.width != w for c in cams):
            raise CameraError("cameras to concatenate must share one image size")

        def cat_opt(name: str) -> Tensor | None:
            vals = [getattr(c, name) for c in cams]
            return None if any(v is None for v in vals) else torch.cat(vals)

        return Cameras(
            c2w=torch.cat([c.c2w for c in cams]),
            fovy_deg=torch.cat([c.fovy_deg for c in cams]),
            height=h,
            width=w,
            polar=cat_opt("polar"),
            azimuth=cat_opt("azimuth"),
            radius=cat_opt("radius"),
        )


def _as_tensor(x: float | Tensor, device: torch.device | str | None = None) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return (t if device is None else to_device(t, device)).reshape(-1)


def spherical_to_position(polar: Tensor, azimuth: Tensor, radius: Tensor) -> Tensor:
    """[N] degrees, degrees, units -> [N, 3] position ``r·(sinθ sinφ, cosθ, sinθ cosφ)`` (SPEC §0)."""
    th = torch.deg2rad(polar)
    ph = torch.deg2rad(azimuth)
    return torch.stack(
        [
            radius * torch.sin(th) * torch.sin(ph),
            radius * torch.cos(th),
            radius * torch.sin(th) * torch.cos(ph),
        ],
        dim=-1,
    )


def look_at_upstream(centers: Tensor, azimuth_deg: Tensor | None = None) -> Tensor:
    """Upstream look-at towards the origin: [N, 3] centers -> [N, 4, 4] c2w (see module docstring).

    ``azimuth_deg`` [N] (optional) picks the fallback ``right = (−cosφ, 0, sinφ)`` where ``forward``
    is parallel to +y; without it φ = atan2(x, z) of the center is used (0 exactly at a pole).
    """
    forward = torch.nn.functional.normalize(centers, dim=-1)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=centers.dtype, device=centers.device).expand_as(forward)
    right_raw = torch.linalg.cross(forward, world_up, dim=-1)
    norm = right_raw.norm(dim=-1, keepdim=True)
    if azimuth_deg is None:
        phi = torch.atan2(centers[:, 0], centers[:, 2])
    else:
        phi = torch.deg2rad(azimuth_deg.to(centers.dtype))
    fallback = torch.stack([-torch.cos(phi), torch.zeros_like(phi), torch.sin(phi)], dim=-1)
    right = torch.where(norm > _DEGENERATE_EPS, right_raw / norm.clamp_min(_DEGENERATE_EPS), fallback)
    up = torch.nn.functional.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=centers.dtype, device=centers.device).repeat(centers.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, up, forward], dim=-1)
    c2w[:, :3, 3] = centers
    return c2w


def camera_from_spherical(
    polar: float | Tensor,
    azimuth: float | Tensor,
    radius: float | Tensor = 1.8,
    fovy: float | Tensor = 40.0,
    height: int = 128,
    width: int = 128,
    device: torch.device | str | None = None,
) -> Cameras:
    """Cameras on the viewing sphere looking at the origin. Scalars broadcast against [N] tensors."""
    p, a, r, f = (_as_tensor(v, device) for v in (polar, azimuth, radius, fovy))
    p, a, r, f = torch.broadcast_tensors(p, a, r, f)
    if torch.any(f <= 0) or torch.any(f >= 180):
        raise CameraError("fovy must be in (0, 180) degrees")
    centers = spherical_to_position(p, a, r)
    c2w = look_at_upstream(centers, a)
    return Cameras(
        c2w=c2w,
        fovy_deg=f.clone(),
        height=height,
        width=width,
        polar=p.clone(),
        azimuth=a.clone(),
        radius=r.clone(),
    )


def reference_camera(
    height: int = 192, width: int = 192, radius: float = 1.8, fovy: float = 40.0, device=None
) -> Cameras:
    """The known (reference) view: θ=90°, φ=0°, on +z (SPEC §3.4)."""
    return camera_from_spherical(90.0, 0.0, radius, fovy, height, width, device)


def orbit_cameras(
    n: int,
    polar: float = 90.0,
    radius: float = 1.8,
    fovy: float = 40.0,
    height: int = 400,
    width: int = 400,
    azimuth0: float = 0.0,
    device=None,
) -> Cameras:
    """Turntable of n views at azimuths ``360·i/n + azimuth0`` (SPEC §7 eval/test poses)."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n) + azimuth0
    return camera_from_spherical(polar, az, radius, fovy, height, width, device)


def fixed_view_cameras(
    views: Sequence[tuple[float, float]],
    radius: float = 1.8,
    fovy: float = 40.0,
    height: int = 256,
    width: int = 256,
    device=None,
) -> Cameras:
    """Cameras at explicit ``(polar, azimuth)`` pairs in degrees, e.g. front/side/back/top views."""
    if not views:
        raise CameraError("fixed_view_cameras needs at least one (polar, azimuth) pair")
    pol = torch.tensor([v[0] for v in views], dtype=torch.float32)
    az = torch.tensor([v[1] for v in views], dtype=torch.float32)
    return camera_from_spherical(pol, az, radius, fovy, height, width, device)


def focal_from_fovy(fovy_deg: Tensor, height: int) -> Tensor:
    """[N] -> [N] focal length in pixels, ``f = H / (2·tan(fovy/2))``."""
    return height / (2.0 * torch.tan(torch.deg2rad(fovy_deg) / 2.0))


def generate_rays(
    cameras: Cameras,
    noise_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pixel-centre rays for every camera: -> origins [N, H*W, 3], dirs [N, H*W, 3] (row-major pixels).

    ``noise_scale > 0`` adds ``known_view_noise_scale`` jitter (SPEC §3.4): ONE 3-vector
    ``N(0, I)·noise_scale`` added to every origin and a separately drawn one to every direction,
    drawn once per call (shared by all cameras). Directions are not normalized (module docstring).
    """
    dev = cameras.device
    h, w = cameras.height, cameras.width
    n = len(cameras)
    f = focal_from_fovy(cameras.fovy_deg.to(torch.float32), h)  # [N]
    jj, ii = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=dev),
        torch.arange(w, dtype=torch.float32, device=dev),
        indexing="ij",
    )
    cx, cy = w / 2.0, h / 2.0
    x = (ii.reshape(1, -1) + 0.5 - cx) / f[:, None]  # [N, HW]
    y = -(jj.reshape(1, -1) + 0.5 - cy) / f[:, None]
    z = -torch.ones_like(x)
    d_cam = torch.stack([x, y, z], dim=-1)  # [N, HW, 3]
    rot = cameras.c2w[:, :3, :3].to(torch.float32)
    dirs = d_cam @ rot.transpose(1, 2)
    origins = cameras.c2w[:, None, :3, 3].to(torch.float32).expand(n, h * w, 3)
    if noise_scale > 0:
        gen_dev = generator.device if generator is not None else dev
        o_noise = to_device(torch.randn(3, generator=generator, device=gen_dev), dev) * noise_scale
        d_noise = to_device(torch.randn(3, generator=generator, device=gen_dev), dev) * noise_scale
        origins = origins + o_noise
        dirs = dirs + d_noise
    return origins.contiguous(), dirs.contiguous()


def fovx_to_fovy(fovx_deg: float, height: int, width: int) -> float:
    """Convert a horizontal field of view (e.g. NeRF-synthetic ``camera_angle_x``) to vertical."""
    return math.degrees(2.0 * math.atan(math.tan(math.radians(fovx_deg) / 2.0) * height / width))
