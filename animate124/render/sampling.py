"""Random training cameras, dynamic camera trajectories and frame times (SPEC §3.3, §5.1, §11.12).

All randomness comes from an explicit ``torch.Generator`` (CPU generators are fine; results are moved
to ``device``). Angles are in degrees; conventions are those of :mod:`animate124.render.cameras`.

Decisions on the upstream defects (SPEC §11.12), each with an option that reproduces upstream:

* Branch A of the camera sampler ("uniform sphere", probability ``uniform_sphere_rate``) upstream draws
  ``normalize(U(−1,1), U(0,1), U(−1,1))``: only the upper hemisphere and biased towards the cube's
  corners. With ``fix_upstream=True`` we keep the upper-hemisphere restriction (upstream clearly wants
  no views from below, where the image prior is weak) but make it area-uniform on that hemisphere:
  ``cosθ ~ U(0,1)``, ``φ ~ U(−180,180)``. ``fix_upstream=False`` reproduces the exact upstream formula.
* The dynamic trajectory ``θ_k = θ + (k/F)·Δθ`` can cross the pole. With ``clamp_polar=True`` every
  θ_k is clamped into ``polar_limits`` = [1°, 179°]; ``clamp_polar=False`` reproduces upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from animate124.render.cameras import Cameras, camera_from_spherical
from animate124.transfer import to_device

__all__ = [
    "CameraSample",
    "Trajectory",
    "sample_training_camera",
    "sample_trajectory",
    "sample_frame_times",
]


@dataclass
class CameraSample:
    """Sampled cameras: polar, azimuth [N] degrees, radius [N], and the built :class:`Cameras`."""

    polar: Tensor
    azimuth: Tensor
    radius: Tensor
    cameras: Cameras


@dataclass
class Trajectory:
    """Per-frame cameras of one clip: polar/azimuth/radius [F] and cameras [F]; ``dynamic`` False
    when all frames share one static camera (probability ``1 − dynamic_cam_rate``)."""

    polar: Tensor
    azimuth: Tensor
    radius: Tensor
    cameras: Cameras
    dynamic: bool


def _rand(generator: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=generator, device=_gdev(generator))


def _gdev(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(generator: torch.Generator | None, lo: float, hi: float, n: int) -> Tensor:
    return lo + (hi - lo) * _rand(generator, n)


def sample_directions(
    generator: torch.Generator | None,
    *,
    n: int,
    uniform_sphere_rate: float,
    theta_range: tuple[float, float],
    phi_range: tuple[float, float],
    fix_upstream: bool,
) -> tuple[Tensor, Tensor]:
    """SPEC §3.3 branches A/B for n cameras sharing one branch draw -> polar [n], azimuth [n] (deg).

    Upstream draws the branch once per batch (``random.random() < uniform_sphere_rate``); so do we.
    """
    if float(_rand(generator, 1)) < uniform_sphere_rate:
        if fix_upstream:
            cos_t = _rand(generator, n)  # area-uniform on the upper hemisphere
            polar = torch.rad2deg(torch.acos(cos_t.clamp(-1.0, 1.0)))
            azimuth = _uniform(generator, -180.0, 180.0, n)
        else:
            x = _uniform(generator, -1.0, 1.0, n)
            y = _rand(generator, n)
            z = _uniform(generator, -1.0, 1.0, n)
            v = torch.nn.functional.normalize(torch.stack([x, y, z], -1), dim=-1)
            polar = torch.rad2deg(torch.acos(v[:, 1].clamp(-1.0, 1.0)))
            azimuth = torch.rad2deg(torch.atan2(v[:, 0], v[:, 2]))
    else:
        polar = _uniform(generator, theta_range[0], theta_range[1], n)
        azimuth = _uniform(generator, phi_range[0], phi_range[1], n)
    return polar, azimuth


def sample_training_camera(
    generator: torch.Generator | None,
    *,
    n: int,
    radius: float,
    fovy: float,
    height: int,
    width: int,
    uniform_sphere_rate: float,
    theta_range: tuple[float, float],
    phi_range: tuple[float, float],
    fix_upstream: bool,
    device: torch.device | str | None = None,
) -> CameraSample:
    """Random SDS training camera(s) (SPEC §3.3): radius 1.8, fovy 40 fixed, no jitter."""
    polar, azimuth = sample_directions(
        generator,
        n=n,
        uniform_sphere_rate=uniform_sphere_rate,
        theta_range=theta_range,
        phi_range=phi_range,
        fix_upstream=fix_upstream,
    )
    r = torch.full((n,), float(radius))
    polar, azimuth = polar.cpu(), azimuth.cpu()
    cams = camera_from_spherical(polar, azimuth, r, fovy, height, width, device)
    return CameraSample(cams.polar, cams.azimuth, cams.radius, cams)


def sample_trajectory(
    generator: torch.Generator | None,
    *,
    frames: int,
    dynamic_cam_rate: float,
    max_dpolar: float,
    max_dazimuth: float,
    clamp_polar: bool,
    polar_limits: tuple[float, float] = (1.0, 179.0),
    radius: float,
    fovy: float,
    height: int,
    width: int,
    uniform_sphere_rate: float,
    theta_range: tuple[float, float],
    phi_range: tuple[float, float],
    fix_upstream: bool,
    device: torch.device | str | None = None,
) -> Trajectory:
    """Camera trajectory of one video clip (SPEC §3.3 ``rand_poses_trajectory``).

    With probability ``dynamic_cam_rate``: a start pose as in :func:`sample_training_camera`, plus
    Δθ ~ U(±max_dpolar), Δφ ~ U(±max_dazimuth); frame k uses ``θ_k = θ + (k/F)·Δθ``,
    ``φ_k = φ + (k/F)·Δφ`` (so the last frame reaches (F−1)/F of the delta, as upstream). Otherwise all
    frames share one random static camera. ``clamp_polar`` (fix of SPEC §11.12) clamps θ_k into
    ``polar_limits`` so the path never crosses a pole.
    """
    dyn = float(_rand(generator, 1)) < dynamic_cam_rate
    polar0, az0 = sample_directions(
        generator,
        n=1,
        uniform_sphere_rate=uniform_sphere_rate,
        theta_range=theta_range,
        phi_range=phi_range,
        fix_upstream=fix_upstream,
    )
    polar0, az0 = polar0.cpu(), az0.cpu()
    k = torch.arange(frames, dtype=torch.float32) / frames
    if dyn:
        dpolar = _uniform(generator, -max_dpolar, max_dpolar, 1).cpu()
        daz = _uniform(generator, -max_dazimuth, max_dazimuth, 1).cpu()
        polar = polar0 + k * dpolar
        azimuth = az0 + k * daz
    else:
        polar = polar0.expand(frames).clone()
        azimuth = az0.expand(frames).clone()
    if clamp_polar:
        polar = polar.clamp(polar_limits[0], polar_limits[1])
    r = torch.full((frames,), float(radius))
    cams = camera_from_spherical(polar, azimuth, r, fovy, height, width, device)
    return Trajectory(cams.polar, cams.azimuth, cams.radius, cams, dyn)


def _randint_inclusive(generator: torch.Generator | None, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=generator, device=_gdev(generator)))


def sample_frame_times(
    generator: torch.Generator | None,
    *,
    frames: int,
    precision: int,
    zero_rate: float,
    device: torch.device | str | None = None,
) -> tuple[Tensor, bool]:
    """Frame times of one clip, exactly SPEC §5.1 (``dnerf/provider.py:197-231``) -> (t [F], start_from_zero).

    1. start from zero with probability ``zero_rate``;
    2. span ``S = F·⌊randint(F, P)/F⌋`` (randint inclusive), stride ``i = S/F``;
    3. otherwise ``start ~ randint(0, P−S)`` (inclusive);
    4. ``τ_k = start + k·i``;
    5. with probability 0.5 reverse: ``τ ← reverse(P − τ)`` (the clip mirrored in time, still in
       increasing order; a zero-start clip then ends at t = 1), clearing the start-from-zero flag;
    6. ``t_k = τ_k / P``.
    """
    start_from_zero = float(_rand(generator, 1)) < zero_rate
    span = frames * (_randint_inclusive(generator, frames, precision) // frames)
    stride = span // frames
    start = 0 if start_from_zero else _randint_inclusive(generator, 0, precision - span)
    tau = start + stride * torch.arange(frames, dtype=torch.float64)
    if float(_rand(generator, 1)) < 0.5:
        tau = torch.flip(precision - tau, dims=[0])
        start_from_zero = False
    times = (tau / precision).to(torch.float32)
    if device is not None:
        times = to_device(times, device)
    return times, start_from_zero
