"""Pure SDS maths, prompt helpers, Zero123 camera convention and frame selection (no models)."""

from __future__ import annotations

import math

import pytest
import torch

from animate124.errors import ConfigError, InputError
from animate124.guidance import sds
from animate124.guidance.controlnet import select_frames
from animate124.guidance.prompts import interpolate_views, replace_token, view_prompts, view_weights
from animate124.guidance.zero123 import angle_weight, camera_embedding, camera_position


def _alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SD scaled_linear
    return torch.cumprod(1 - betas, 0).float()


def test_sample_timesteps_inclusive_range() -> None:
    g = torch.Generator().manual_seed(0)
    t = sds.sample_timesteps(20000, (0.2, 0.6), 1000, g)
    assert t.dtype == torch.long and t.shape == (20000,)
    assert int(t.min()) == 200 and int(t.max()) == 600  # both ends reached (inclusive)
    t = sds.sample_timesteps(20000, (0.02, 0.98), 1000, g)
    assert int(t.min()) == 20 and int(t.max()) == 980
    t = sds.sample_timesteps(5, (0.5, 0.5), 1000, g)
    assert torch.equal(t, torch.full((5,), 500))
    with pytest.raises(ConfigError):
        sds.sample_timesteps(1, (0.7, 0.2))


def test_cfg_modes() -> None:
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    assert torch.allclose(sds.cfg(u, c, 5.0, "standard"), u + 5 * (c - u))
    assert torch.allclose(sds.cfg(u, c, 5.0, "upstream"), c + 5 * (c - u))
    # "+1" form = standard CFG with s + 1 (SPEC 11.3)
    assert torch.allclose(sds.cfg(u, c, 100.0, "upstream"), sds.cfg(u, c, 101.0, "standard"))
    with pytest.raises(ConfigError):
        sds.cfg(u, c, 1.0, "nope")


def test_weights() -> None:
    ac = _alphas()
    t = torch.tensor([200, 500, 800])
    assert torch.allclose(sds.w_one_minus_alpha_bar(ac, t), 1 - ac[t])
    w = sds.w_x0_target(ac, t)
    assert torch.allclose(w, ((1 - ac[t]) / ac[t]).sqrt())
    # SPEC 6: ≈0.57 at t=200, 1.62 at 500, 5.1 at 800
    assert w[0] == pytest.approx(0.57, abs=0.02) and w[1] == pytest.approx(1.62, abs=0.03)
    assert w[2] == pytest.approx(5.1, abs=0.1)


def test_add_noise_matches_scheduler() -> None:
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    z, e = torch.randn(2, 4, 3, 5, 5), torch.randn(2, 4, 3, 5, 5)
    t = torch.tensor([10, 900])
    ref = sch.add_noise(z, e, t)
    assert torch.allclose(sds.add_noise(sch.alphas_cumprod, z, e, t), ref, atol=1e-6)


def test_surrogate_loss_gradient_is_g_over_batch() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    eps, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    w = torch.tensor([0.1, 0.5, 0.9])
    grad = sds.sds_gradient(eps, noise, w, scale=2.0)
    assert torch.allclose(grad, 2.0 * w.view(3, 1, 1, 1) * (eps - noise))
    loss = sds.sds_surrogate_loss(z, grad)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.5 * float((grad**2).sum()) / 3, rel=1e-5)
    loss.backward()
    assert torch.allclose(z.grad, grad / 3, atol=1e-6)
    z.grad = None
    sds.sds_surrogate_loss(z, grad, reduction="sum").backward()
    assert torch.allclose(z.grad, grad, atol=1e-6)


def test_sds_gradient_nan_to_zero_and_half_inputs() -> None:
    eps = torch.tensor([float("nan"), 1.0, float("inf")]).half()
    g = sds.sds_gradient(eps, torch.zeros(3).half(), 1.0)
    assert g.dtype == torch.float32 and torch.equal(g, torch.tensor([0.0, 1.0, 0.0]))


def test_x0_target_equals_sds_with_sqrt_weight() -> None:
    """½Σ(z − x̂₀)²/n has the gradient of SDS with w = √((1−ᾱ)/ᾱ), λ = 1 (SPEC 6, 11.4)."""
    ac = _alphas()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64).float().requires_grad_(True)
    noise, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([300, 300])
    zt = sds.add_noise(ac, z.detach(), noise, t)
    l_x0 = sds.x0_target_loss(z, zt, eps, ac, t)
    (gx0,) = torch.autograd.grad(l_x0, z)
    grad = sds.sds_gradient(eps, noise, sds.w_x0_target(ac, t), 1.0)
    l_sds = sds.sds_surrogate_loss(z, grad)
    (gsds,) = torch.autograd.grad(l_sds, z)
    assert torch.allclose(gx0, gsds, atol=1e-4)
    assert l_x0.item() == pytest.approx(l_sds.item(), rel=1e-4)
    # by hand: x̂₀ = (z_t − √(1−ᾱ) ε̂)/√ᾱ
    a = ac[300]
    x0 = (zt - (1 - a).sqrt() * eps) / a.sqrt()
    assert l_x0.item() == pytest.approx(float(0.5 * ((z.detach() - x0) ** 2).sum() / 2), rel=1e-5)


# ---------------------------------------------------------------------------------------------- prompts


def test_view_prompts_and_weights() -> None:
    assert view_prompts("a panda") == ["a panda, front view", "a panda, side view", "a panda, back view"]
    w = view_weights([0.0, 45.0, -45.0, 90.0, 135.0, -150.0, 180.0, 270.0])
    expect = [
        [1, 0, 0],
        [0.5, 0.5, 0],
        [0.5, 0.5, 0],
        [0, 1, 0],
        [0, 0.5, 0.5],  # r = 1 - (135-90)/90 = 0.5
        [0, 1 / 3, 2 / 3],  # |a|=150: r = 1/3
        [0, 0, 1],  # 180 wraps to -180: back
        [0, 1, 0],  # 270 == -90: side
    ]
    assert torch.allclose(w, torch.tensor(expect, dtype=torch.float64), atol=1e-9)
    emb = torch.randn(3, 4, 2)
    out = interpolate_views(emb, [30.0])
    assert torch.allclose(out[0], (2 / 3) * emb[0] + (1 / 3) * emb[1], atol=1e-6)


def test_replace_token() -> None:
    assert replace_token("a <token> dancing", "_panda_") == "a _panda_ dancing"
    assert replace_token("a panda", None) == "a panda"
    with pytest.raises(InputError):
        replace_token("a <token>", None)


# ---------------------------------------------------------------------------------------------- Zero123


def test_camera_embedding_formula() -> None:
    emb = camera_embedding([10.0, -20.0], [30.0, -30.0], [0.2, 0.0])
    assert emb.shape == (2, 4)
    exp0 = [math.radians(10), math.sin(math.radians(-30)), math.cos(math.radians(30)), 0.2]
    exp1 = [math.radians(-20), math.sin(math.radians(30)), math.cos(math.radians(-30)), 0.0]
    assert torch.allclose(emb, torch.tensor([exp0, exp1]), atol=1e-6)


def test_positive_azimuth_is_plus_x_and_maps_to_negative_sine() -> None:
    """Our convention (SPEC 0): position r(sinθ sinφ, cosθ, sinθ cosφ); upstream's frame has
    right = forward × up, so the reference camera's right vector is −x (mirror-handed)."""
    ref = camera_position(90.0, 0.0, 1.8)[0]
    cam = camera_position(90.0, 30.0, 1.8)[0]
    assert torch.allclose(ref, torch.tensor([0.0, 0.0, 1.8], dtype=torch.float64), atol=1e-12)
    assert cam[0] == pytest.approx(0.9) and cam[2] == pytest.approx(1.8 * math.cos(math.radians(30)))
    forward = ref / ref.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(right, torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))
    # +30° azimuth (camera towards +x = the reference image's left) -> sin(−Δaz) = −0.5
    assert camera_embedding(0.0, 30.0, 0.0)[0, 1].item() == pytest.approx(-0.5)
    assert camera_embedding(0.0, -30.0, 0.0)[0, 1].item() == pytest.approx(0.5)


def test_angle_weight() -> None:
    w = angle_weight([90.0, 90.0, 90.0, 0.0], [0.0, 60.0, 180.0, 0.0], scale=40.0)
    assert torch.allclose(w, torch.tensor([0.0, 40 * 60 / 180, 40.0, 40 * 90 / 180], dtype=torch.float64))


def test_select_frames() -> None:
    assert select_frames(16, "even:2") == [0, 8]
    assert select_frames(16, "even:4") == [0, 4, 8, 12]
    # any frame count: N is clamped to F, frame k·F // N (upstream's stride F/N when N divides F)
    assert select_frames(4, "even:2") == [0, 2]
    assert select_frames(1, "even:2") == [0]
    assert select_frames(4, "even:8") == [0, 1, 2, 3]
    assert select_frames(10, "even:3") == [0, 3, 6]
    assert select_frames(16, "even:16") == list(range(16))
    with pytest.raises(ConfigError):
        select_frames(16, "even:0")
    with pytest.raises(ConfigError):
        select_frames(16, "even:x")
    assert select_frames(16, (0, 8)) == [0, 8]
    assert select_frames(3, "all") == [0, 1, 2]
    with pytest.raises(ConfigError):
        select_frames(4, (0, 8))
    with pytest.raises(ConfigError):
        select_frames(4, "odd:2")
