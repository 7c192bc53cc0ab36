"""Shared helpers of the guidance tests (not a test module: pytest collects ``test_*.py`` only)."""

from __future__ import annotations

import torch

from animate124.guidance.common import CHECKPOINT_PIXELS

#: tolerance of a gradient comparison, relative to the largest |element| of the expected gradient
GRAD_REL_TOL = 1e-4


def grad_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual − expected| / max|expected|`` computed in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).abs().max() / e.abs().max())


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = GRAD_REL_TOL) -> None:
    """Two gradients agree up to float32 summation order.

    Element-wise ``allclose`` with a small ``atol`` is fragile: a float32 gradient that went through a
    VAE encoder carries rounding errors of about ``1e-7 × (its largest elements) × √(terms)`` on EVERY
    element, so the elements near zero fail ``|a − e| ≤ atol + rtol·|e|`` depending on how the BLAS
    summed (a 2-core AVX2 machine put 3 of 49,152 video-gradient elements 2.25e-6 off, atol 1e-6).
    The error is compared with the gradient's scale instead: ``max|a − e| ≤ rel · max|e|`` (float64).
    A gradient off by 1 % (or with a flipped sign) is off by ≥ 1e-2·max|e| at its largest element,
    100× the tolerance, so real errors still fail (``test_assert_grad_close_catches_real_errors``).
    """
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    scale = float(expected.detach().double().abs().max())
    assert scale > 0, "the expected gradient is zero: the comparison would prove nothing"
    err = grad_error(actual, expected)
    assert err <= rel, f"gradient mismatch: max|a − e| = {err:.3g} · max|e| (allowed {rel:g})"


# ---------------------------------------------------------------------------------------------- priors
# The priors take every configured value explicitly (the config schema is the only place a default
# lives). These builders pass the paper's values (SPEC 12) unless a test overrides them.


def make_sd(components, **overrides):
    from animate124.guidance.stable_diffusion import StableDiffusionGuidance

    kw = dict(
        prompt="a cat",
        negative_prompt="",
        guidance_scale=100.0,
        cfg_mode="upstream",
        t_range=(0.2, 0.6),
        weight=1.0,
        view_dependent=True,
        checkpoint_encoder=False,
        checkpoint_pixels=CHECKPOINT_PIXELS,
        checkpoint_keep_pixels=0,
    )
    return StableDiffusionGuidance(components, **{**kw, **overrides})


def make_zero123(components, **overrides):
    from animate124.guidance.zero123 import Zero123Guidance

    kw = dict(
        guidance_scale=5.0,
        cfg_mode="standard",
        t_range=(0.2, 0.6),
        weight=40.0,
        c_concat_mode="mode",
        clip_preprocess="torch",
        checkpoint_encoder=False,
        checkpoint_pixels=CHECKPOINT_PIXELS,
        checkpoint_keep_pixels=0,
    )
    return Zero123Guidance(components, **{**kw, **overrides})


def make_video(components, **overrides):
    from animate124.guidance.video import VideoGuidance

    kw = dict(
        prompt="a cat is dancing",
        negative_prompt="",
        guidance_scale=100.0,
        cfg_mode="upstream",
        t_range=(0.02, 0.98),
        weight=1.0,
        vae_grad_frames=0,
        upstream_view_text=False,
        checkpoint_encoder=False,
        checkpoint_pixels=CHECKPOINT_PIXELS,
        checkpoint_keep_pixels=0,
    )
    return VideoGuidance(components, **{**kw, **overrides})


def make_controlnet(sd_components, controlnet, **overrides):
    from animate124.guidance.controlnet import ControlNetGuidance

    kw = dict(
        prompt="a cat is dancing",
        negative_prompt="",
        controlnet_prompt="best quality, high resolution",
        image_size=64,  # 1024 in the paper; the tiny models run at 64
        guidance_scale=7.5,
        cfg_mode="upstream",
        t_range=(0.2, 0.8),
        target="x0",
        weight=1.0,
        frames="even:2",
        upstream_view_text=False,
        checkpoint_encoder=False,
        checkpoint_pixels=CHECKPOINT_PIXELS,
        checkpoint_keep_pixels=0,
    )
    return ControlNetGuidance(sd_components, controlnet, **{**kw, **overrides})


def still_views(dazimuth=0.0, dpolar=0.0, dradius=0.0, *, frames: int = 1, **kw):
    """Views of B clips of ``frames`` frames; scalars or [B] lists (one pose per clip), or [B, T]."""
    from animate124.guidance.interface import Views

    def bt(v):
        t = torch.as_tensor(v, dtype=torch.float64)
        if t.ndim == 0:
            t = t.reshape(1, 1)
        elif t.ndim == 1:
            t = t[:, None]
        return t.expand(t.shape[0], frames) if t.shape[1] == 1 else t

    dp, da, dr = torch.broadcast_tensors(bt(dpolar), bt(dazimuth), bt(dradius))
    return Views.from_relative(dp, da, dr, **kw)


def assert_same_prior_output(build, change, name: str = "", rel: float | None = None) -> None:
    """Build a prior twice and apply ``change(prior)`` to the second: one guidance call on the same 4-frame
    clip (with a condition render) must give a bit-identical loss and image gradient (``rel``: equal up to
    that relative error instead, the loss against its value and the gradient as :func:`assert_grad_close`)."""
    frames = 4
    gen = torch.Generator().manual_seed(3)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    images0 = torch.rand(1, frames, 3, 16, 16, generator=gen)
    res = []
    for changed in (False, True):
        prior = build()
        if changed:
            change(prior)
        images = images0.clone().requires_grad_(True)
        out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
        loss = out.losses[prior.loss_key]
        loss.backward()
        res.append((loss.detach(), images.grad.clone()))
    if rel is not None:
        assert abs(float(res[1][0] - res[0][0])) <= rel * abs(float(res[0][0])), (name, res[0][0], res[1][0])
        assert res[0][1].abs().max() > 0, name
        assert_grad_close(res[1][1], res[0][1], rel)
        return
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1]), name
