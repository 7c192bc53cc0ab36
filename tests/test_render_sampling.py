"""Camera, trajectory and frame-time samplers (SPEC §3.3, §5.1, §11.12).

Monte Carlo tolerances are >= 4 standard deviations of the estimate for the stated draw counts.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from helpers_config import camera_kwargs, frame_time_kwargs, trajectory_kwargs

from animate124.render.cameras import camera_from_spherical
from animate124.render.sampling import (
    sample_frame_times,
    sample_training_camera,
    sample_trajectory,
)

N_TIMES = 20_000


@pytest.fixture(scope="module")
def time_draws():
    g = torch.Generator().manual_seed(1234)
    draws = [sample_frame_times(g, **frame_time_kwargs()) for _ in range(N_TIMES)]
    times = torch.stack([d[0] for d in draws]).double()
    flags = torch.tensor([d[1] for d in draws])
    return times, flags


def _span_probs() -> dict[int, Fraction]:
    """SPEC §5.1: S = 16·floor(randint(16, 256)/16), randint inclusive (241 values)."""
    probs: dict[int, Fraction] = {}
    for v in range(16, 257):
        s = 16 * (v // 16)
        probs[s] = probs.get(s, Fraction(0)) + Fraction(1, 241)
    return probs


def test_times_shape_range_and_spacing(time_draws):
    times, _ = time_draws
    assert times.shape == (N_TIMES, 16)
    assert times.min() >= 0 and times.max() <= 1
    q = times * 256
    torch.testing.assert_close(q, q.round())  # on the 1/256 lattice
    diffs = q[:, 1:] - q[:, :-1]
    assert torch.all(diffs == diffs[:, :1])  # evenly spaced
    assert torch.all(diffs[:, 0].abs() >= 1) and torch.all(diffs[:, 0].abs() <= 16)


def test_start_from_zero_probability(time_draws):
    times, flags = time_draws
    p = flags.double().mean().item()
    assert p == pytest.approx(0.1, abs=0.01)
    # flag means: starts at 0 and runs forward
    assert torch.all(times[flags, 0] == 0)
    assert torch.all(times[flags, 1] > times[flags, 0])


def test_stride_distribution(time_draws):
    times, _ = time_draws
    stride = ((times[:, 1] - times[:, 0]).abs() * 256).round().long()
    probs = _span_probs()
    for s, p in probs.items():
        freq = (stride == s // 16).double().mean().item()
        sd = math.sqrt(float(p) * (1 - float(p)) / N_TIMES)
        assert freq == pytest.approx(float(p), abs=max(5 * sd, 1e-3)), (s, freq, float(p))


def test_reversal_and_endpoints(time_draws):
    """Reversal maps τ -> reverse(256 − τ): a mirrored clip, still increasing in time (SPEC §5.1)."""
    times, flags = time_draws
    assert torch.all(times[:, 1:] > times[:, :-1])
    # P(t_last = 1) = P(mirrored and start 0) and P(t_0 = 0) = P(forward and start 0), both equal to
    # 0.5·(0.2 + 0.8·E[1/(257−S)]) (start = 0 in the random branch with prob 1/(257−S)).
    e_inv = sum(p / (257 - s) for s, p in _span_probs().items())
    expected = 0.5 * (0.2 + 0.8 * float(e_inv))
    tol = 5 * math.sqrt(expected * (1 - expected) / N_TIMES)
    assert (times[:, -1] == 1.0).double().mean().item() == pytest.approx(expected, abs=tol)
    assert (times[:, 0] == 0.0).double().mean().item() == pytest.approx(expected, abs=tol)
    # a mirrored zero-start clip ends at t=1 and has its flag cleared
    assert not torch.any(flags & (times[:, -1] == 1.0))
    # mirror symmetry of the mixture: E[t_0 + t_last] = 1
    pair = times[:, 0] + times[:, -1]
    assert pair.mean().item() == pytest.approx(1.0, abs=5 * pair.std().item() / math.sqrt(N_TIMES))


def test_start_mean(time_draws):
    times, _ = time_draws
    probs = _span_probs()
    e_start = 0.8 * sum(float(p) * (256 - s) / 2 for s, p in probs.items())
    e_i = sum(float(p) * s / 16 for s, p in probs.items())
    # forward: τ_0 = start; mirrored: τ_0 = 256 − start − 15·i
    e = 0.5 * e_start + 0.5 * (256 - e_start - 15 * e_i)
    t0 = times[:, 0] * 256
    assert t0.mean().item() == pytest.approx(e, abs=5 * t0.std().item() / math.sqrt(t0.numel()))


def test_branch_b_ranges():
    g = torch.Generator().manual_seed(0)
    s = sample_training_camera(g, **camera_kwargs(n=4000, uniform_sphere_rate=0.0))
    assert s.polar.min() >= 45 and s.polar.max() <= 135
    assert s.azimuth.min() >= -180 and s.azimuth.max() < 180
    assert s.polar.mean().item() == pytest.approx(90, abs=2.0)
    assert torch.all(s.radius == 1.8) and torch.all(s.cameras.fovy_deg == 40)
    torch.testing.assert_close(s.cameras.c2w, camera_from_spherical(s.polar, s.azimuth, 1.8).c2w)


def test_branch_a_fixed_is_area_uniform_upper_hemisphere():
    g = torch.Generator().manual_seed(1)
    s = sample_training_camera(g, **camera_kwargs(n=20_000, uniform_sphere_rate=1.0, fix_upstream=True))
    cos = torch.cos(torch.deg2rad(s.polar))
    assert s.polar.min() >= 0 and s.polar.max() <= 90
    for q in (0.25, 0.5, 0.75):  # cos(polar) ~ U(0,1)
        assert (cos < q).double().mean().item() == pytest.approx(q, abs=0.015)
    assert (s.azimuth < 0).double().mean().item() == pytest.approx(0.5, abs=0.015)


def test_branch_a_upstream_formula_exact():
    seed = 7
    s = sample_training_camera(
        torch.Generator().manual_seed(seed),
        **camera_kwargs(n=64, uniform_sphere_rate=1.0, fix_upstream=False),
    )
    g = torch.Generator().manual_seed(seed)
    torch.rand(1, generator=g)  # branch draw
    x = torch.rand(64, generator=g) * 2 - 1
    y = torch.rand(64, generator=g)
    z = torch.rand(64, generator=g) * 2 - 1
    v = torch.stack([x, y, z], -1)
    v = v / v.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(s.polar, torch.rad2deg(torch.acos(v[:, 1])), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.azimuth, torch.rad2deg(torch.atan2(v[:, 0], v[:, 2])), atol=1e-4, rtol=0)
    # the camera sits in direction v
    torch.testing.assert_close(s.cameras.centers / 1.8, v, atol=1e-5, rtol=0)


def test_branch_mixture_rate():
    g = torch.Generator().manual_seed(3)
    below45 = 0
    n = 2000
    for _ in range(n):
        p = sample_training_camera(g, **camera_kwargs(uniform_sphere_rate=0.5)).polar.item()
        below45 += p < 45  # only branch A (fixed) gives polar < 45: P = 0.5·(1 − cos 45°)
    assert below45 / n == pytest.approx(0.5 * (1 - math.cos(math.radians(45))), abs=0.045)


def _draw_trajectories(n: int, **kw):
    g = torch.Generator().manual_seed(11)
    return [sample_trajectory(g, **trajectory_kwargs(height=8, width=8, **kw)) for _ in range(n)]


def test_trajectory_structure():
    trajs = _draw_trajectories(400, clamp_polar=False, uniform_sphere_rate=0.0)
    dyn = [t for t in trajs if t.dynamic]
    assert len(dyn) / len(trajs) == pytest.approx(0.9, abs=0.06)
    for t in trajs:
        assert len(t.cameras) == 16
        torch.testing.assert_close(
            t.cameras.c2w, camera_from_spherical(t.polar, t.azimuth, t.radius, 40, 8, 8).c2w
        )
        if t.dynamic:
            k = torch.arange(16.0) / 16
            dpol = (t.polar[1] - t.polar[0]) * 16
            daz = (t.azimuth[1] - t.azimuth[0]) * 16
            torch.testing.assert_close(t.polar, t.polar[0] + k * dpol, atol=1e-3, rtol=0)
            torch.testing.assert_close(t.azimuth, t.azimuth[0] + k * daz, atol=1e-3, rtol=0)
            assert abs(dpol) <= 45 + 1e-3 and abs(daz) <= 90 + 1e-3
        else:
            assert torch.all(t.polar == t.polar[0]) and torch.all(t.azimuth == t.azimuth[0])


def test_trajectory_pole_fix():
    unclamped = _draw_trajectories(300, clamp_polar=False, uniform_sphere_rate=1.0)
    crossed = sum(bool((t.polar < 0).any() or (t.polar > 180).any()) for t in unclamped)
    assert crossed > 0  # upstream behaviour reproduced: the pole is crossed sometimes
    clamped = _draw_trajectories(300, clamp_polar=True, uniform_sphere_rate=1.0)
    for t in clamped:
        assert t.polar.min() >= 1.0 and t.polar.max() <= 179.0
        assert torch.isfinite(t.cameras.c2w).all()
