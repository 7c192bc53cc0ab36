"""The guidance interface's ``Views``: angles from camera positions, wrapping, static clips, slicing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from animate124.errors import InputError
from animate124.guidance.interface import REFERENCE_CAMERA, Views, wrap_degrees
from animate124.render.cameras import Cameras, camera_from_spherical

F64 = torch.float64


def test_wrap_degrees_half_open_interval() -> None:
    a = torch.tensor([-180.0, 180.0, 190.0, -190.0, 540.0, 0.0, 359.0, -360.0], dtype=F64)
    assert wrap_degrees(a).tolist() == [180.0, 180.0, -170.0, 170.0, 180.0, 0.0, -1.0, 0.0]


def test_from_cameras_reads_the_positions_row_major() -> None:
    """N = B·T cameras, row-major [B, T]; polar = acos(y/r) from +y, azimuth = atan2(x, z), minus the
    reference (90°, 0°, 1.8); azimuth wrapped to (−180, 180]."""
    polar = torch.tensor([60.0, 90.0, 120.0, 45.0, 90.0, 135.0])
    azimuth = torch.tensor([30.0, -30.0, 190.0, 0.0, 90.0, -100.0])
    radius = torch.tensor([1.8, 2.0, 1.5, 1.8, 1.8, 2.5])
    cams = camera_from_spherical(polar, azimuth, radius)
    views = Views.from_cameras(cams, 2, 3)
    assert (views.batch, views.frames) == (2, 3)
    assert torch.allclose(views.dpolar, (polar.double() - 90).view(2, 3), atol=1e-4)
    expect_az = torch.tensor([[30.0, -30.0, -170.0], [0.0, 90.0, -100.0]], dtype=F64)
    assert torch.allclose(views.dazimuth, expect_az, atol=1e-4)
    assert torch.allclose(views.dradius, (radius.double() - 1.8).view(2, 3), atol=1e-6)
    assert views.c2w is not None and torch.equal(views.c2w, cams.c2w.view(2, 3, 4, 4))
    assert views.static_camera.tolist() == [False, False]
    # absolute angles = reference + delta
    assert torch.allclose(views.polar, polar.double().view(2, 3), atol=1e-4)
    assert torch.allclose(views.azimuth, expect_az, atol=1e-4)


def test_from_cameras_across_the_back_seam() -> None:
    """Cameras on both sides of azimuth ±180°, rendered cameras as the stages build them: Δazimuth is
    wrap(φ − φ_ref) in (−180, 180] (181 becomes −179, 190 −170; the same camera written as φ or φ ± 360 gives
    the same angle), and the Zero123 embedding's sin/cos follow it; also with a reference whose subtraction
    crosses the seam. A camera exactly on the seam may land on either side by float32 rounding of its
    position (sin π ≠ 0), so there the angle is compared on the circle."""
    from animate124.guidance.zero123 import Zero123Guidance

    azimuth = torch.tensor([179.0, 179.99, 180.0, 180.01, 181.0, -179.0, -180.0, 540.0, 190.0, -45.0, 359.0])
    want = torch.tensor(
        [179.0, 179.99, 180.0, -179.99, -179.0, -179.0, 180.0, 180.0, -170.0, -45.0, -1.0], dtype=F64
    )
    polar = torch.full_like(azimuth, 75.0)
    views = Views.from_cameras(camera_from_spherical(polar, azimuth, 1.8), 1, len(azimuth))
    got = views.dazimuth[0]
    assert bool((got > -180).all() and (got <= 180).all())
    off_seam = (want.abs() - 180).abs() > 1e-3
    assert torch.allclose(got[off_seam], want[off_seam], atol=1e-3)
    assert torch.allclose(wrap_degrees(got - want), torch.zeros_like(want), atol=1e-3)  # on the circle
    assert torch.allclose(views.dpolar, torch.full((1, len(azimuth)), -15.0, dtype=F64), atol=1e-4)
    # the embedding T = [rad(Δθ), sin(−rad Δφ), cos(rad Δφ), Δr] of φ and of φ ∓ 360 is the same
    emb = Zero123Guidance.pose_embedding(views)
    rad = torch.deg2rad(want)
    assert torch.allclose(emb[:, 1].double(), torch.sin(-rad), atol=1e-4)
    assert torch.allclose(emb[:, 2].double(), torch.cos(rad), atol=1e-4)
    # reference at φ_ref = 170: a camera at −170 is 20° further on, one at 160 is 10° back
    other = Views.from_cameras(camera_from_spherical(90.0, torch.tensor([-170.0, 160.0, 170.0]), 1.8), 1, 3,
                               reference=(90.0, 170.0, 1.8))  # fmt: skip
    assert torch.allclose(other.dazimuth, torch.tensor([[20.0, -10.0, 0.0]], dtype=F64), atol=1e-4)
    assert torch.allclose(other.azimuth, torch.tensor([[-170.0, 160.0, 170.0]], dtype=F64), atol=1e-4)


def test_from_cameras_ignores_the_spherical_attributes() -> None:
    cams = camera_from_spherical(torch.tensor([70.0]), torch.tensor([40.0]), 1.8)
    lying = dataclasses.replace(cams, polar=torch.tensor([0.0]), azimuth=torch.tensor([-99.0]))
    v1, v2 = Views.from_cameras(cams, 1, 1), Views.from_cameras(lying, 1, 1)
    assert torch.equal(v1.dazimuth, v2.dazimuth) and torch.equal(v1.dpolar, v2.dpolar)
    assert v1.dazimuth.item() == pytest.approx(40.0, abs=1e-4)


def test_from_cameras_other_reference() -> None:
    cams = camera_from_spherical(torch.tensor([80.0]), torch.tensor([-170.0]), 2.0)
    views = Views.from_cameras(cams, 1, 1, reference=(70.0, 170.0, 1.0))
    assert views.dpolar.item() == pytest.approx(10.0, abs=1e-4)
    assert views.dazimuth.item() == pytest.approx(20.0, abs=1e-4)  # −170 − 170 = −340 -> 20
    assert views.dradius.item() == pytest.approx(1.0, abs=1e-6)
    assert views.azimuth.item() == pytest.approx(-170.0, abs=1e-4)


def test_static_camera_inferred_or_given() -> None:
    moving = camera_from_spherical(90.0, torch.tensor([0.0, 10.0, 20.0, 30.0]), 1.8)
    still = camera_from_spherical(80.0, torch.tensor([25.0] * 4), 1.8)
    both = Cameras.cat([moving, still])
    assert Views.from_cameras(both, 2, 4).static_camera.tolist() == [False, True]
    assert Views.from_cameras(both, 2, 4, static_camera=[True, False]).static_camera.tolist() == [True, False]
    assert Views.from_cameras(moving, 4, 1).static_camera.tolist() == [True] * 4  # one frame: static
    rel = Views.from_relative(0.0, [[0.0, 0.0], [0.0, 5.0]], 0.0)
    assert rel.static_camera.tolist() == [True, False]
    assert Views.from_relative(0.0, [[180.0, -180.0]], 0.0).static_camera.tolist() == [True]  # same angle


def test_select_frames_slices_every_per_frame_field() -> None:
    cams = camera_from_spherical(90.0, torch.arange(8.0).repeat(2) * 10, 1.8)
    cond = torch.rand(2, 8, 3, 4, 4)
    views = Views.from_cameras(cams, 2, 8, condition=cond)
    sub = views.select_frames([0, 4])
    assert (sub.batch, sub.frames) == (2, 2)
    assert torch.allclose(sub.dazimuth, torch.tensor([[0.0, 40.0]] * 2, dtype=F64), atol=1e-4)
    assert sub.condition is not None and torch.equal(sub.condition, cond[:, [0, 4]])
    assert sub.c2w is not None and torch.equal(sub.c2w, views.c2w[:, [0, 4]])
    assert torch.equal(sub.static_camera, views.static_camera) and sub.reference == views.reference
    first = views.select_frames([0])
    assert first.frames == 1 and torch.equal(first.dpolar, views.dpolar[:, :1])
    with pytest.raises(InputError):
        views.select_frames([8])
    with pytest.raises(InputError):
        views.select_frames([])


def test_shape_checks() -> None:
    cams = camera_from_spherical(90.0, torch.zeros(6), 1.8)
    with pytest.raises(InputError, match=r"\[B, T\]"):
        Views.from_cameras(cams, 4, 2)
    with pytest.raises(InputError, match="condition"):
        Views.from_cameras(cams, 2, 3, condition=torch.rand(2, 2, 3, 4, 4))
    with pytest.raises(InputError, match="static_camera"):
        Views.from_relative(0.0, torch.zeros(2, 3), 0.0, static_camera=[True, False, True])
    with pytest.raises(InputError):
        Views.from_relative(0.0, torch.zeros(3), 0.0)  # not [B, T]
    views = Views.from_cameras(cams, 2, 3)
    views.check(torch.rand(2, 3, 3, 8, 8))
    with pytest.raises(InputError, match="do not match"):
        views.check(torch.rand(3, 2, 3, 8, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(views, "dpolar", torch.zeros(2, 3))  # noqa: B010
    assert views.reference == REFERENCE_CAMERA
