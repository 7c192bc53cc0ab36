"""Camera conventions (SPEC §0, §3.3, §3.4, §7, §11.12) and pixel rays."""

from __future__ import annotations

import math

import pytest
import torch

from animate124.render.cameras import (
    CameraError,
    Cameras,
    camera_from_spherical,
    fixed_view_cameras,
    focal_from_fovy,
    generate_rays,
    orbit_cameras,
    reference_camera,
)
from animate124.render.rays import near_far_from_aabb


def _spec_pose(theta: float, phi: float, r: float) -> torch.Tensor:
    """SPEC §0 recomputed in float64 with plain numpy-style maths."""
    th, ph = math.radians(theta), math.radians(phi)
    c = torch.tensor(
        [r * math.sin(th) * math.sin(ph), r * math.cos(th), r * math.sin(th) * math.cos(ph)],
        dtype=torch.float64,
    )
    fwd = c / c.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, fwd)
    up = up / up.norm()
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, fwd, c
    return m


def test_reference_camera_on_plus_z_mirror_handed():
    cam = reference_camera()
    assert cam.height == 192 and cam.width == 192 and len(cam) == 1
    m = cam.c2w[0]
    torch.testing.assert_close(m[:3, 3], torch.tensor([0.0, 0.0, 1.8]), atol=1e-6, rtol=0)
    torch.testing.assert_close(m[:3, 0], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # right = -x
    torch.testing.assert_close(m[:3, 1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(m[:3, 2], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)  # away from scene
    assert torch.det(m[:3, :3]).item() == pytest.approx(-1.0, abs=1e-6)  # mirror-handed frame


@pytest.mark.parametrize(
    "theta,phi,r", [(90, 0, 1.8), (60, 30, 2.0), (120, -135, 1.5), (10, 200, 1.0), (170, 45, 3)]
)
def test_pose_matches_spec_formula(theta, phi, r):
    cam = camera_from_spherical(theta, phi, r)
    torch.testing.assert_close(cam.c2w[0].double(), _spec_pose(theta, phi, r), atol=2e-6, rtol=0)
    assert cam.polar.item() == theta and cam.azimuth.item() == phi and cam.radius.item() == pytest.approx(r)


def test_orbit_azimuths_and_positions():
    cams = orbit_cameras(8, height=16, width=16)
    torch.testing.assert_close(cams.azimuth, torch.arange(8.0) * 45.0)
    assert torch.all(cams.polar == 90)
    # azimuth 90 puts the camera on +x (SPEC §0 position formula)
    torch.testing.assert_close(cams.centers[2], torch.tensor([1.8, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.centers.norm(dim=-1), torch.full((8,), 1.8))
    shifted = orbit_cameras(4, azimuth0=10.0)
    torch.testing.assert_close(shifted.azimuth, torch.tensor([10.0, 100.0, 190.0, 280.0]))


@pytest.mark.parametrize("theta", [0.0, 180.0, 1e-4, 179.9999])
@pytest.mark.parametrize("phi", [0.0, 37.0, -120.0])
def test_pole_degeneracy_is_finite_and_orthonormal(theta, phi):
    cam = camera_from_spherical(theta, phi, 1.8)
    rot = cam.c2w[0, :3, :3].double()
    assert torch.isfinite(rot).all()
    torch.testing.assert_close(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # forward still points away from the origin, right is the meridian limit (-cos φ, 0, sin φ)
    fwd = rot[:, 2]
    assert abs(fwd[1].item()) == pytest.approx(1.0, abs=1e-6)
    p = math.radians(phi)
    torch.testing.assert_close(
        rot[:, 0], torch.tensor([-math.cos(p), 0.0, math.sin(p)], dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_pose_continuous_towards_pole():
    near = camera_from_spherical(1e-3, 37.0, 1.8).c2w
    at = camera_from_spherical(0.0, 37.0, 1.8).c2w
    torch.testing.assert_close(near, at, atol=1e-4, rtol=0)


def test_focal_from_fovy():
    f = focal_from_fovy(torch.tensor([40.0, 90.0]), 128)
    torch.testing.assert_close(f, torch.tensor([128 / (2 * math.tan(math.radians(20))), 64.0]))


def test_rays_centre_pixel_and_corners():
    h = w = 5  # odd: pixel (2,2) is exactly on the optical axis
    cam = reference_camera(h, w)
    o, d = generate_rays(cam)
    assert o.shape == (1, 25, 3) and d.shape == (1, 25, 3)
    torch.testing.assert_close(d[0, 12], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(o[0, 7], torch.tensor([0.0, 0.0, 1.8]), atol=1e-6, rtol=0)
    f = h / (2 * math.tan(math.radians(20)))
    # top-left pixel (i=0, j=0): camera space ((0.5-2.5)/f, -(0.5-2.5)/f, -1) -> world via right=-x, up=+y, fwd=+z
    x, y = (0.5 - 2.5) / f, -(0.5 - 2.5) / f
    torch.testing.assert_close(d[0, 0], torch.tensor([-x, y, -1.0]), atol=1e-6, rtol=0)
    # unnormalized: camera-space z is -1, so the component along -forward is 1 for every pixel
    torch.testing.assert_close((d[0] @ torch.tensor([0.0, 0.0, -1.0])), torch.ones(25), atol=1e-6, rtol=0)
    assert torch.all(d[0].norm(dim=-1) >= 1 - 1e-6)


def test_rays_hit_origin_from_any_orbit_view():
    cams = orbit_cameras(6, height=3, width=3)
    o, d = generate_rays(cams)
    # centre pixel passes through the origin at t = radius (planar depth)
    p = o[:, 4] + 1.8 * d[:, 4]
    torch.testing.assert_close(p, torch.zeros(6, 3), atol=1e-5, rtol=0)


def test_known_view_noise_is_one_vector_per_call():
    cam = reference_camera(4, 4)
    o0, d0 = generate_rays(cam)
    g = torch.Generator().manual_seed(0)
    o1, d1 = generate_rays(cam, noise_scale=1e-3, generator=g)
    do, dd = o1 - o0, d1 - d0
    torch.testing.assert_close(do, do[:, :1].expand_as(do))  # same offset for every ray
    torch.testing.assert_close(dd, dd[:, :1].expand_as(dd))
    assert 0 < do[0, 0].norm() < 1e-2 and not torch.allclose(do[0, 0], dd[0, 0])


def test_cameras_indexing_cat_and_errors():
    cams = fixed_view_cameras([(90, 0), (90, 90), (0, 0)], height=8, width=8)
    assert len(cams) == 3 and len(cams[1]) == 1 and len(cams[-1]) == 1
    both = Cameras.cat([cams[0], cams[2]])
    torch.testing.assert_close(both.c2w, cams.c2w[[0, 2]])
    with pytest.raises(CameraError):
        Cameras(torch.eye(4).expand(2, 4, 4), torch.ones(3), 4, 4)
    with pytest.raises(CameraError):
        camera_from_spherical(90, 0, 1.8, fovy=0.0)


def test_near_far_aabb():
    o = torch.tensor([[0.0, 0.0, 1.8], [0.0, 0.0, 0.5], [5.0, 5.0, 5.0], [0.0, 0.0, 1.8]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -2.0], [0.0, 0.0, -1.0], [0.5, 0.0, -1.0]])
    near, far, hit = near_far_from_aabb(o, d, 1.0, min_near=0.2)
    torch.testing.assert_close(near[:2], torch.tensor([0.8, 0.2]))  # inside the box: clamped to min_near
    torch.testing.assert_close(far[:2], torch.tensor([2.8, 0.75]))
    assert hit.tolist() == [True, True, False, True]
    torch.testing.assert_close(far[3], torch.tensor(2.0))  # leaves through the x = 1 face
