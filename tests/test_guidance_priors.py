"""SD, Zero123, video and ControlNet guidance on the tiny factory models (CPU).

For every prior: noise and t are injected; the expected image gradient is recomputed here from the
SPEC formula (own encode, scheduler.add_noise, own UNet calls, CFG, weight) and pushed through the VAE
encoder with autograd; it must equal the gradient the guidance's loss sends to the images.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers_guidance import assert_grad_close, grad_error

from animate124.errors import InputError
from animate124.guidance.controlnet import ControlNetGuidance
from animate124.guidance.stable_diffusion import StableDiffusionGuidance
from animate124.guidance.video import VideoGuidance
from animate124.guidance.zero123 import CLIP_MEAN, CLIP_STD, Zero123Guidance

S = 0.18215


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory):
    from animate124.models.testing import tiny_store

    return tiny_store(tmp_path_factory.getbasetemp() / "tiny_models")


@pytest.fixture(scope="module")
def sd(store):
    from animate124.models.loaders import load_sd

    return load_sd(store)


@pytest.fixture(scope="module")
def zero123(store):
    from animate124.models.loaders import load_zero123

    return load_zero123(store)


@pytest.fixture(scope="module")
def video(store):
    from animate124.models.loaders import load_video

    return load_video(store)


@pytest.fixture(scope="module")
def controlnet(store):
    from animate124.models.loaders import load_controlnet

    return load_controlnet(store)


def _text(c, prompt: str) -> torch.Tensor:
    ids = c.tokenizer(
        prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return c.text_encoder(ids)[0]


def _encode_mode(vae, x01: torch.Tensor, size) -> torch.Tensor:
    x = F.interpolate(x01, size=size, mode="bilinear", align_corners=False)
    return vae.encode(x * 2 - 1).latent_dist.mode() * S


def _no_prior_grads(*modules) -> None:
    for m in modules:
        for p in m.parameters():
            assert p.grad is None and not p.requires_grad


def _ac(c) -> torch.Tensor:
    return c.scheduler.alphas_cumprod.float().cpu()


# ---------------------------------------------------------------------------------------------- SD


@pytest.mark.parametrize("cfg_mode", ["upstream", "standard"])
def test_sd_gradient_matches_formula(sd, cfg_mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 3, 32, 32, generator=gen).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([250, 550])
    scale, lam = 7.0, 0.5
    guid = StableDiffusionGuidance(
        sd, image_size=64, guidance_scale=scale, cfg_mode=cfg_mode, weight=lam, latent_mode="mode"
    )
    out = guid(images, prompt="a panda", azimuth_deg=[30.0, 135.0], noise=noise, t=t)
    loss = out.losses["sds"]
    assert loss.dtype == torch.float32 and loss.ndim == 0
    loss.backward()

    # independent recomputation (SPEC 3.7)
    x = images.detach().reshape(2, 3, 32, 32).requires_grad_(True)
    z = _encode_mode(sd.vae, x, (64, 64))
    zt = sd.scheduler.add_noise(z.detach(), noise, t)
    f, s_, b = (_text(sd, f"a panda, {v} view") for v in ("front", "side", "back"))
    pos = torch.cat([(2 / 3) * f + (1 / 3) * s_, 0.5 * s_ + 0.5 * b])  # az 30 and 135
    neg = torch.cat([_text(sd, "")] * 2)  # the negative is never view-decorated (SPEC 3.7-7)
    with torch.no_grad():
        e = sd.unet(
            torch.cat([zt, zt]), torch.cat([t, t]), encoder_hidden_states=torch.cat([neg, pos])
        ).sample
    eu, ec = e.chunk(2)
    eh = ec + scale * (ec - eu) if cfg_mode == "upstream" else eu + scale * (ec - eu)
    g = lam * (1 - _ac(sd)[t]).view(-1, 1, 1, 1) * (eh - noise)
    (expected,) = torch.autograd.grad(z, x, grad_outputs=g / 2)
    assert_grad_close(images.grad.reshape(2, 3, 32, 32), expected)
    assert loss.item() == pytest.approx(0.5 * float((g**2).sum()) / 2, rel=1e-4)
    assert images.grad.shape == images.shape
    _no_prior_grads(sd.unet, sd.vae, sd.text_encoder)


def test_sd_upstream_cfg_equals_standard_plus_one(sd) -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(1, 1, 3, 32, 32, generator=gen)
    noise, t = torch.randn(1, 4, 8, 8, generator=gen), 400
    grads = []
    for mode, s in (("upstream", 4.0), ("standard", 5.0), ("standard", 4.0)):
        x = images.clone().requires_grad_(True)
        g = StableDiffusionGuidance(sd, image_size=64, guidance_scale=s, cfg_mode=mode, latent_mode="mode")
        g(x, prompt="a cat", noise=noise, t=t).losses["sds"].backward()
        grads.append(x.grad)
    assert_grad_close(grads[0], grads[1])
    assert grad_error(grads[0], grads[2]) > 1e-2  # s = 4 differs from s = 5


def test_sd_posterior_sample_uses_generator_and_t_time_batch(sd) -> None:
    """T > 1 is treated as B·T images; the posterior sample is mean + std·randn(generator)."""
    images = torch.rand(1, 3, 3, 32, 32).requires_grad_(True)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([100, 300, 500])
    guid = StableDiffusionGuidance(sd, image_size=64, guidance_scale=3.0, view_dependent=False)
    guid(images, prompt="a dog", noise=noise, t=t, generator=torch.Generator().manual_seed(7)).losses[
        "sds"
    ].backward()

    x = images.detach().reshape(3, 3, 32, 32).requires_grad_(True)
    dist = sd.vae.encode(
        F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) * 2 - 1
    ).latent_dist
    e_post = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    z = (dist.mean + dist.std * e_post) * S
    zt = sd.scheduler.add_noise(z.detach(), noise, t)
    emb = torch.cat([_text(sd, "")] * 3 + [_text(sd, "a dog")] * 3)
    with torch.no_grad():
        eu, ec = sd.unet(torch.cat([zt, zt]), torch.cat([t, t]), encoder_hidden_states=emb).sample.chunk(2)
    g = (1 - _ac(sd)[t]).view(-1, 1, 1, 1) * (ec + 3.0 * (ec - eu) - noise)
    (expected,) = torch.autograd.grad(z, x, grad_outputs=g / 3)
    assert_grad_close(images.grad.reshape(3, 3, 32, 32), expected)


def test_sd_prompt_checks(store) -> None:
    from animate124.models.loaders import load_sd

    c = load_sd(store)  # fresh: add_learned_token mutates the tokenizer
    guid = StableDiffusionGuidance(c, image_size=64)
    with pytest.raises(InputError):
        guid.prepare("a " * 80)
    with pytest.raises(InputError):
        guid.prepare("a <token> dancing")
    vec = torch.randn(32)
    guid.add_learned_token("<a124>", vec)
    guid.prepare("a <token> dancing")
    tid = c.tokenizer.convert_tokens_to_ids("<a124>")
    assert torch.equal(c.text_encoder.get_input_embeddings().weight[tid], vec)
    ids = c.tokenizer("a <a124> dancing").input_ids
    assert tid in ids
    with pytest.raises(InputError):
        guid(torch.rand(1, 3, 32, 32), prompt="x")


class _ContextSpy:
    """Records the ``encoder_hidden_states`` of every call of a UNet (what the prior conditions on)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.seen: list[torch.Tensor] = []
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _mod, args, kwargs):
        self.seen.append(kwargs["encoder_hidden_states"].detach().clone())

    def __enter__(self) -> _ContextSpy:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_sd_negative_prompt_has_no_view_words(sd) -> None:
    """SPEC 3.7-7: the negative is the plain negative for every view; only the positive is interpolated.

    With view words in the negative too, ε_c − ε_u would cancel the view information under CFG 101."""
    guid = StableDiffusionGuidance(sd, image_size=64, guidance_scale=7.0, latent_mode="mode")
    images = torch.rand(1, 3, 3, 32, 32)
    with _ContextSpy(sd.unet) as spy:
        guid(images, prompt="a panda", azimuth_deg=[0.0, 90.0, 180.0], t=300, noise=torch.randn(3, 4, 8, 8))
    (ctx,) = spy.seen
    neg, pos = ctx.chunk(2)
    plain = _text(sd, "")
    for i in range(3):
        assert torch.equal(neg[i], neg[0])
        assert torch.allclose(neg[i], plain[0], atol=1e-6)
    for v, i in (("front", 0), ("side", 1), ("back", 2)):
        assert torch.allclose(pos[i], _text(sd, f"a panda, {v} view")[0], atol=1e-6)
    assert not torch.allclose(pos[0], pos[1]) and not torch.allclose(pos[1], pos[2])


# ---------------------------------------------------------------------------------------------- Zero123


def test_zero123_gradient_matches_formula(zero123) -> None:
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 64, 64, generator=gen)
    images = torch.rand(2, 1, 3, 32, 32, generator=gen).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([300, 450])
    guid = Zero123Guidance(zero123, reference=ref, latent_mode="mode")
    assert guid.image_size == 64  # tiny: unet sample_size 8 × VAE factor 8
    polar, azim, radius = [80.0, 100.0], [60.0, -150.0], [1.8, 2.0]
    out = guid(images, polar_deg=polar, azimuth_deg=azim, radius=radius, noise=noise, t=t)
    out.losses["zero123"].backward()

    c = zero123
    # reference conditioning (own torch CLIP preprocessing; c_concat = posterior mode, unscaled)
    size = c.image_encoder.config.image_size
    pix = F.interpolate(ref, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(
        0, 1
    )
    pix = (pix - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        clip = c.image_encoder(pixel_values=pix).image_embeds  # [1, D]
        cc = c.vae.encode(ref * 2 - 1).latent_dist.mode()
    cams = torch.tensor(
        [
            [math.radians(p - 90), math.sin(math.radians(-a)), math.cos(math.radians(a)), r - 1.8]
            for p, a, r in zip(polar, azim, radius, strict=True)
        ]
    )
    with torch.no_grad():
        cond = c.projection(torch.cat([clip.expand(2, -1), cams], -1))[:, None]  # [2, 1, D]
    x = images.detach().reshape(2, 3, 32, 32).requires_grad_(True)
    z = _encode_mode(c.vae, x, (64, 64))
    zt = c.scheduler.add_noise(z.detach(), noise, t)
    cc2 = cc.expand(2, -1, -1, -1)
    x_in = torch.cat([torch.cat([zt, zt]), torch.cat([torch.zeros_like(cc2), cc2])], 1)
    with torch.no_grad():
        eu, ec = c.unet(
            x_in, torch.cat([t, t]), encoder_hidden_states=torch.cat([torch.zeros_like(cond), cond])
        ).sample.chunk(2)
    eh = eu + 5.0 * (ec - eu)
    # angle between camera positions r(sinθ sinφ, cosθ, sinθ cosφ) and the reference (0, 0, 1)
    ang = [
        math.degrees(math.acos(math.sin(math.radians(p)) * math.cos(math.radians(a))))
        for p, a in zip(polar, azim, strict=True)
    ]
    lam = torch.tensor([40.0 * a / 180.0 for a in ang]).view(-1, 1, 1, 1)
    g = lam * (1 - _ac(c)[t]).view(-1, 1, 1, 1) * (eh - noise)
    (expected,) = torch.autograd.grad(z, x, grad_outputs=g / 2)
    assert_grad_close(images.grad.reshape(2, 3, 32, 32), expected)
    assert out.diagnostics["lambda_eff"] == pytest.approx(float(lam.mean()), rel=1e-5)
    _no_prior_grads(c.unet, c.vae, c.image_encoder, c.projection)


def test_zero123_projection_sign_with_hand_set_weights(zero123) -> None:
    """c = projection([clip, T]) with a projection that copies T into c[:4]: Δaz=±30° -> sin = ∓0.5."""
    d = zero123.projection.out_features
    proj = torch.nn.Linear(d + 4, d)
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        for i in range(4):
            proj.weight[i, d + i] = 1.0
    comp = SimpleNamespace(**{k: getattr(zero123, k) for k in ("vae", "unet", "image_encoder", "scheduler")})
    comp.projection = proj
    guid = Zero123Guidance(comp)
    guid.clip_embeds = torch.zeros(1, 1, d)
    from animate124.guidance.zero123 import camera_embedding

    c = guid.conditioning(camera_embedding([0.0, 0.0, 15.0], [30.0, -30.0, 0.0], [0.0, 0.0, -0.3]))
    assert c.shape == (3, 1, d)
    expect = torch.tensor(
        [
            [0.0, -0.5, math.cos(math.radians(30)), 0.0],
            [0.0, 0.5, math.cos(math.radians(30)), 0.0],
            [math.radians(15), 0.0, 1.0, -0.3],
        ]
    )
    assert torch.allclose(c[:, 0, :4], expect, atol=1e-6)


def test_zero123_reference_view_has_zero_weight(zero123) -> None:
    guid = Zero123Guidance(zero123, reference=torch.rand(1, 3, 64, 64))
    images = torch.rand(1, 1, 3, 32, 32).requires_grad_(True)
    out = guid(
        images, polar_deg=90.0, azimuth_deg=0.0, radius=1.8, generator=torch.Generator().manual_seed(0)
    )
    out.losses["zero123"].backward()
    assert out.losses["zero123"].item() == 0.0 and torch.count_nonzero(images.grad) == 0


# ---------------------------------------------------------------------------------------------- video


def test_video_gradient_matches_formula_16_frames(video) -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(1, 16, 3, 32, 32, generator=gen).requires_grad_(True)
    noise = torch.randn(1, 4, 16, 8, 8, generator=gen)
    t = torch.tensor([700])
    guid = VideoGuidance(video, image_size=64, guidance_scale=10.0, latent_mode="mode", encode_chunk=5)
    out = guid(images, prompt="a panda dancing", noise=noise, t=t)
    out.losses["video_sds"].backward()
    assert images.grad.shape == images.shape

    c = video
    x = images.detach().reshape(16, 3, 32, 32).requires_grad_(True)
    z = _encode_mode(c.vae, x, (64, 64))  # [16, 4, 8, 8]
    z5 = z.reshape(1, 16, 4, 8, 8).permute(0, 2, 1, 3, 4)
    zt = c.scheduler.add_noise(z5.detach(), noise, t)
    emb = torch.cat([_text(c, ""), _text(c, "a panda dancing")])
    with torch.no_grad():
        eu, ec = c.unet(torch.cat([zt, zt]), torch.cat([t, t]), encoder_hidden_states=emb).sample.chunk(2)
    g = (1 - _ac(c)[t]).view(-1, 1, 1, 1, 1) * (ec + 10.0 * (ec - eu) - noise)
    (expected,) = torch.autograd.grad(z5, x, grad_outputs=g)
    actual = images.grad.reshape(16, 3, 32, 32)
    assert_grad_close(actual, expected)
    # the scale-relative tolerance still catches real errors: 1 % off, a flipped sign, one frame wrong
    for wrong in (expected * 1.01, -expected, torch.cat([expected[:15], 0.9 * expected[15:]])):
        with pytest.raises(AssertionError, match="gradient mismatch"):
            assert_grad_close(actual, wrong)
    _no_prior_grads(c.unet, c.vae, c.text_encoder)


def test_video_vae_grad_frames_and_static_camera_text(video) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(1, 4, 3, 32, 32, generator=gen)
    noise = torch.randn(1, 4, 4, 8, 8, generator=gen)
    full = images.clone().requires_grad_(True)
    g_all = VideoGuidance(video, image_size=64, latent_mode="mode")
    g_all(full, prompt="a cat", noise=noise, t=500, generator=torch.Generator().manual_seed(9)).losses[
        "video_sds"
    ].backward()
    part = images.clone().requires_grad_(True)
    g_two = VideoGuidance(video, image_size=64, vae_grad_frames=2, latent_mode="mode")
    out = g_two(part, prompt="a cat", noise=noise, t=500, generator=torch.Generator().manual_seed(9))
    out.losses["video_sds"].backward()
    has = part.grad.flatten(2).abs().sum(-1)[0] > 0
    assert int(has.sum()) == 2 and out.diagnostics["grad_frames"] == 2.0
    # the frames that keep their gradient get exactly the full-gradient value (same z, same draws)
    assert_grad_close(part.grad[0, has], full.grad[0, has])

    # plain prompt by default; view-interpolated only for static cameras when asked (SPEC 11.6)
    vd = VideoGuidance(video, image_size=64, view_dependent_static_camera=True)
    neg, pos = vd.text_embeddings("a cat", 1, 0.0, static_camera=True)
    assert torch.allclose(pos, _text(video, "a cat, front view"), atol=1e-6)
    # the negative stays plain for every view (SPEC 3.7-7); the positive follows the azimuth
    for az, view in ((90.0, "side"), (180.0, "back")):
        neg, pos = vd.text_embeddings("a cat", 1, az, static_camera=True)
        assert torch.allclose(neg, _text(video, ""), atol=1e-6)
        assert torch.allclose(pos, _text(video, f"a cat, {view} view"), atol=1e-6)
    neg, pos = vd.text_embeddings("a cat", 1, 0.0, static_camera=False)
    assert torch.allclose(pos, _text(video, "a cat"), atol=1e-6)
    neg, pos = g_all.text_embeddings("a cat", 1, 0.0, static_camera=True)
    assert torch.allclose(pos, _text(video, "a cat"), atol=1e-6)


# ---------------------------------------------------------------------------------------------- ControlNet


@pytest.mark.parametrize("target", ["x0", "sds"])
def test_controlnet_gradient_matches_formula(store, controlnet, target: str) -> None:
    from animate124.models.loaders import load_sd

    c = load_sd(store)  # fresh: the TI token is added below
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(1, 16, 3, 16, 16, generator=gen).requires_grad_(True)
    cond = torch.rand(1, 16, 3, 16, 16, generator=gen)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = 600
    lam = 3.0
    guid = ControlNetGuidance(
        c, controlnet, image_size=64, frames="even:2", target=target, weight=lam, latent_mode="mode"
    )
    guid.add_learned_token("<a124>", torch.randn(32, generator=gen))
    out = guid(images, cond, prompt="a <token> dancing", noise=noise, t=t)
    out.losses["controlnet"].backward()
    grad_frames = images.grad.flatten(2).abs().sum(-1)[0] > 0
    assert grad_frames.nonzero().flatten().tolist() == [0, 8]

    x = images.detach()[0, [0, 8]].requires_grad_(True)
    z = _encode_mode(c.vae, x, (64, 64))
    tt = torch.tensor([t, t])
    zt = c.scheduler.add_noise(z.detach(), noise, tt)
    ctrl = F.interpolate(
        cond[0, [0, 8]], size=(64, 64), mode="bilinear", align_corners=False
    )  # stays in [0, 1]
    neg, cnp, pos = _text(c, ""), _text(c, "best quality, high resolution"), _text(c, "a <a124> dancing")
    with torch.no_grad():
        x2, t2 = torch.cat([zt, zt]), torch.cat([tt, tt])
        down, mid = controlnet(
            x2, t2, encoder_hidden_states=torch.cat([neg, neg, cnp, cnp]),
            controlnet_cond=torch.cat([ctrl, ctrl]), conditioning_scale=1.0, return_dict=False,
        )  # fmt: skip
        e = c.unet(
            x2, t2, encoder_hidden_states=torch.cat([neg, neg, pos, pos]),
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample  # fmt: skip
    eu, ec = e.chunk(2)
    eh = ec + 7.5 * (ec - eu)
    a = _ac(c)[t]
    if target == "x0":
        x0 = (zt - (1 - a).sqrt() * eh) / a.sqrt()
        lat_grad = (z.detach() - x0) / 2
    else:
        lat_grad = lam * (1 - a) * (eh - noise) / 2
    (expected,) = torch.autograd.grad(z, x, grad_outputs=lat_grad)
    assert_grad_close(images.grad[0, [0, 8]], expected)
    _no_prior_grads(c.unet, c.vae, c.text_encoder, controlnet)


@pytest.mark.parametrize(("frames", "picked"), [(4, [0, 2]), (16, [0, 8]), (1, [0])])
def test_controlnet_even_selection_any_frame_count(sd, controlnet, frames: int, picked: list[int]) -> None:
    """The paper's "even:2" works for every clip length: exactly the picked frames get a gradient."""
    gen = torch.Generator().manual_seed(6)
    images = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    guid = ControlNetGuidance(sd, controlnet, image_size=64, frames="even:2", target="sds")
    out = guid(images, cond, prompt="a cat", generator=gen)
    out.losses["controlnet"].backward()
    assert out.diagnostics["frames"] == len(picked)
    assert (images.grad.flatten(2).abs().sum(-1)[0] > 0).nonzero().flatten().tolist() == picked


# ------------------------------------------------------------------------------------ shapes T=1/16


@pytest.mark.parametrize("frames", [1, 16])
def test_every_prior_keeps_image_shapes(sd, zero123, video, controlnet, frames: int) -> None:
    """[B, T, 3, H, W] inputs with T = 1 and T = 16: the image gradient has the input's shape, the loss is
    a finite fp32 scalar, and no prior weight receives a gradient."""
    gen = torch.Generator().manual_seed(5)

    def check(images: torch.Tensor, loss: torch.Tensor) -> None:
        assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert images.grad is not None and images.grad.shape == images.shape
        assert torch.isfinite(images.grad).all()

    imgs = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    check(imgs, StableDiffusionGuidance(sd)(imgs, prompt="a cat", generator=gen).losses["sds"])
    _no_prior_grads(sd.unet, sd.vae, sd.text_encoder)

    imgs = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    z = Zero123Guidance(zero123, reference=torch.rand(1, 3, 32, 32, generator=gen))
    n = frames
    out = z(imgs, polar_deg=[80.0] * n, azimuth_deg=[30.0] * n, radius=[1.8] * n, generator=gen)
    check(imgs, out.losses["zero123"])
    _no_prior_grads(zero123.unet, zero123.vae, zero123.image_encoder, zero123.projection)

    imgs = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    check(imgs, VideoGuidance(video)(imgs, prompt="a cat is dancing", generator=gen).losses["video_sds"])
    _no_prior_grads(video.unet, video.vae, video.text_encoder)

    imgs = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    cn = ControlNetGuidance(sd, controlnet, image_size=64, frames="even:2")  # even:2 -> {0} when T = 1
    check(imgs, cn(imgs, cond, prompt="a cat dancing", generator=gen).losses["controlnet"])
    _no_prior_grads(controlnet, sd.unet, sd.vae)
