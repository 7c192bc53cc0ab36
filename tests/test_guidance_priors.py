"""SD, Zero123, video and ControlNet guidance on the tiny factory models (CPU), all through the one
interface ``prior(images, views, step=...)``.

For every prior: noise and t are injected; the expected image gradient is recomputed here from the
SPEC formula (own encode, scheduler.add_noise, own UNet calls, CFG, weight) and pushed through the VAE
encoder with autograd; it must equal the gradient the guidance's loss sends to the images.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers_guidance import (
    assert_grad_close,
    grad_error,
    make_controlnet,
    make_sd,
    make_video,
    make_zero123,
    still_views,
)

from animate124.errors import InputError
from animate124.guidance.interface import Guidance, TextGuidance, Views
from animate124.guidance.zero123 import CLIP_MEAN, CLIP_STD
from animate124.render.cameras import camera_from_spherical, reference_camera

S = 0.18215


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
    guid = make_sd(
        sd, prompt="a panda", image_size=64, guidance_scale=scale, cfg_mode=cfg_mode, weight=lam,
        latent_mode="mode",
    )  # fmt: skip
    out = guid(images, still_views([30.0, 135.0]), step=0, noise=noise, t=t)
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
        g = make_sd(sd, image_size=64, guidance_scale=s, cfg_mode=mode, latent_mode="mode")
        g(x, still_views(), step=0, noise=noise, t=t).losses["sds"].backward()
        grads.append(x.grad)
    assert_grad_close(grads[0], grads[1])
    assert grad_error(grads[0], grads[2]) > 1e-2  # s = 4 differs from s = 5


def test_sd_posterior_sample_uses_generator_and_t_time_batch(sd) -> None:
    """T > 1 is treated as B·T images; the posterior sample is mean + std·randn(generator)."""
    images = torch.rand(1, 3, 3, 32, 32).requires_grad_(True)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([100, 300, 500])
    guid = make_sd(sd, prompt="a dog", image_size=64, guidance_scale=3.0, view_dependent=False)
    views = still_views([[10.0, 20.0, 30.0]])  # [1, 3]; ignored without view-dependent text
    gen = torch.Generator().manual_seed(7)
    guid(images, views, step=0, noise=noise, t=t, generator=gen).losses["sds"].backward()

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
    with pytest.raises(InputError, match="tokens long"):
        make_sd(c, prompt="a " * 80)
    with pytest.raises(InputError, match="<token>"):
        make_sd(c, prompt="a <token> dancing")
    guid = make_sd(c, prompt="a cat", image_size=64)
    assert isinstance(guid, TextGuidance) and guid.prompt == "a cat"
    with pytest.raises(InputError, match="tokens long"):
        guid.set_prompt("a " * 74)  # fits alone, not with ", front view" (view-dependent text)
    with pytest.raises(InputError):
        guid.set_prompt("a <token> dancing")
    assert guid.prompt == "a cat"  # a rejected prompt changes nothing
    vec = torch.randn(32)
    guid.add_learned_token("<a124>", vec)
    guid.set_prompt("a <token> dancing")
    tid = c.tokenizer.convert_tokens_to_ids("<a124>")
    assert torch.equal(c.text_encoder.get_input_embeddings().weight[tid], vec)
    assert tid in c.tokenizer("a <a124> dancing").input_ids
    assert torch.allclose(guid.text.positive(1), _text(c, "a <a124> dancing"), atol=1e-6)
    with pytest.raises(InputError):
        guid(torch.rand(1, 3, 32, 32), still_views(), step=0)  # not [B, T, 3, H, W]
    with pytest.raises(InputError, match="do not match the views"):
        guid(torch.rand(2, 1, 3, 32, 32), still_views(), step=0)
    # a learned token given at construction: the prompt may hold <token> from the start
    c2 = load_sd(store)
    g2 = make_sd(c2, prompt="a <token> dancing", learned_token=("<b124>", torch.randn(32)))
    assert torch.allclose(g2.text.positive(1), _text(c2, "a <b124> dancing"), atol=1e-6)


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

    With view words in the negative too, ε_c − ε_u would cancel the view information under CFG 101.
    The view text uses the absolute azimuth, reference azimuth + Δazimuth (here 45° + [−45, 45, 135])."""
    guid = make_sd(sd, prompt="a panda", image_size=64, guidance_scale=7.0, latent_mode="mode")
    images = torch.rand(1, 3, 3, 32, 32)
    views = Views.from_relative(0.0, [[-45.0, 45.0, 135.0]], 0.0, reference=(90.0, 45.0, 1.8))
    with _ContextSpy(sd.unet) as spy:
        guid(images, views, step=0, t=300, noise=torch.randn(3, 4, 8, 8))
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
    guid = make_zero123(zero123, reference=ref, latent_mode="mode")
    assert guid.image_size == 64  # tiny: unet sample_size 8 × VAE factor 8
    polar, azim, radius = [80.0, 100.0], [60.0, -150.0], [1.8, 2.0]
    views = still_views(azim, [p - 90 for p in polar], [r - 1.8 for r in radius])
    out = guid(images, views, step=0, noise=noise, t=t)
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


def _copying_projection(zero123) -> torch.nn.Linear:
    """A projection whose output starts with the camera vector T: c[:4] = T (clip part ignored)."""
    d = zero123.projection.out_features
    proj = torch.nn.Linear(d + 4, d)
    with torch.no_grad():
        proj.weight.zero_()
        proj.bias.zero_()
        for i in range(4):
            proj.weight[i, d + i] = 1.0
    return proj


def test_zero123_projection_sign_with_hand_set_weights(zero123) -> None:
    """c = projection([clip, T]) with a projection that copies T into c[:4]: Δaz=±30° -> sin = ∓0.5."""
    d = zero123.projection.out_features
    guid = make_zero123(dataclasses.replace(zero123, projection=_copying_projection(zero123)))
    guid.clip_embeds = torch.zeros(1, 1, d)
    c = guid.conditioning(still_views([30.0, -30.0, 0.0], [0.0, 0.0, 15.0], [0.0, 0.0, -0.3]))
    assert c.shape == (3, 1, d)
    expect = torch.tensor(
        [
            [0.0, -0.5, math.cos(math.radians(30)), 0.0],
            [0.0, 0.5, math.cos(math.radians(30)), 0.0],
            [math.radians(15), 0.0, 1.0, -0.3],
        ]
    )
    assert torch.allclose(c[:, 0, :4], expect, atol=1e-6)


def test_zero123_sign_follows_the_render_cameras(zero123) -> None:
    """The Zero123 pose convention is tied to ``render/cameras.py``: cameras built by
    ``camera_from_spherical`` (polar 60°, azimuth ±30°, radius 2.0), through ``Views.from_cameras`` and
    the prior's conditioning path, must give T = [rad(Δθ), sin(−Δφ), cos Δφ, Δr] with the sine's sign
    matching how the camera moved IN THE REFERENCE IMAGE: positive when it moved towards the image's
    right (the reference c2w's first column), negative towards its left (SPEC 0, 3.8: upstream's
    mirror-handed frame puts +x on the image's left, hence sin(−Δφ)).

    A standard look-at in cameras.py (right = +x) flips the image and fails the geometric check; moving
    +azimuth to −x fails the spot check (+30° -> −0.5). The angles come from the c2w positions, not from
    the ``Cameras.azimuth`` attribute (set to None here)."""
    d = zero123.projection.out_features
    guid = make_zero123(dataclasses.replace(zero123, projection=_copying_projection(zero123)))
    guid.clip_embeds = torch.zeros(1, 1, d)
    cams = camera_from_spherical(torch.tensor([60.0, 60.0]), torch.tensor([30.0, -30.0]), 2.0)
    cams = dataclasses.replace(cams, polar=None, azimuth=None, radius=None)  # positions only
    views = Views.from_cameras(cams, 2, 1)
    t_vec = guid.conditioning(views)[:, 0, :4]

    ref = reference_camera()
    right, up = ref.c2w[0, :3, 0], ref.c2w[0, :3, 1]
    moved = cams.centers - ref.centers  # [2, 3]
    assert torch.equal(torch.sign(t_vec[:, 1]), torch.sign(moved @ right))  # image right -> sine > 0
    assert torch.equal(torch.sign(t_vec[:, 0]), -torch.sign(moved @ up))  # image up -> Δpolar < 0
    # the values, in this convention (SPEC 3.8: Δφ = +30° gives sin(−30°) = −0.5)
    assert torch.allclose(views.dazimuth, torch.tensor([[30.0], [-30.0]], dtype=torch.float64), atol=1e-4)
    assert t_vec[0, 1] == pytest.approx(-0.5, abs=1e-5)
    assert t_vec[1, 1] == pytest.approx(0.5, abs=1e-5)
    assert torch.allclose(t_vec[:, 0], torch.full((2,), math.radians(-30.0)), atol=1e-5)  # Δpolar
    assert torch.allclose(t_vec[:, 2], torch.full((2,), math.cos(math.radians(30))), atol=1e-5)
    assert torch.allclose(t_vec[:, 3], torch.full((2,), 0.2), atol=1e-5)  # Δradius = 2.0 − 1.8


def test_zero123_reference_view_has_zero_weight(zero123) -> None:
    guid = make_zero123(zero123, reference=torch.rand(1, 3, 64, 64))
    images = torch.rand(1, 1, 3, 32, 32).requires_grad_(True)
    out = guid(images, still_views(), step=0, generator=torch.Generator().manual_seed(0))
    out.losses["zero123"].backward()
    assert out.losses["zero123"].item() == 0.0 and torch.count_nonzero(images.grad) == 0
    # the reference camera of render/cameras.py is the reference up to its float32 position
    views = Views.from_cameras(reference_camera(), 1, 1)
    assert views.dazimuth.abs().max() < 1e-4 and views.dpolar.abs().max() < 1e-4
    assert views.dradius.abs().max() < 1e-6
    out = guid(images, views, step=0, generator=torch.Generator().manual_seed(0))
    assert out.diagnostics["angle_deg"] < 1e-4 and out.diagnostics["lambda_eff"] < 1e-5


# ---------------------------------------------------------------------------------------------- video


def test_video_gradient_matches_formula_16_frames(video) -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(1, 16, 3, 32, 32, generator=gen).requires_grad_(True)
    noise = torch.randn(1, 4, 16, 8, 8, generator=gen)
    t = torch.tensor([700])
    guid = make_video(
        video, prompt="a panda dancing", image_size=64, guidance_scale=10.0, latent_mode="mode",
        encode_chunk=5,
    )  # fmt: skip
    views = still_views(torch.linspace(0, 60, 16)[None], frames=16)  # a moving camera
    out = guid(images, views, step=0, noise=noise, t=t)
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


def test_video_vae_grad_frames(video) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(1, 4, 3, 32, 32, generator=gen)
    noise = torch.randn(1, 4, 4, 8, 8, generator=gen)
    views = still_views(frames=4)
    full = images.clone().requires_grad_(True)
    g_all = make_video(video, prompt="a cat", image_size=64, latent_mode="mode")
    out_all = g_all(full, views, step=0, noise=noise, t=500, generator=torch.Generator().manual_seed(9))
    out_all.losses["video_sds"].backward()
    assert out_all.diagnostics["grad_frames"] == 4.0
    part = images.clone().requires_grad_(True)
    g_two = make_video(video, prompt="a cat", image_size=64, vae_grad_frames=2, latent_mode="mode")
    out = g_two(part, views, step=0, noise=noise, t=500, generator=torch.Generator().manual_seed(9))
    out.losses["video_sds"].backward()
    has = part.grad.flatten(2).abs().sum(-1)[0] > 0
    assert int(has.sum()) == 2 and out.diagnostics["grad_frames"] == 2.0
    # the frames that keep their gradient get the full-gradient value (same z, same draws)
    assert_grad_close(part.grad[0, has], full.grad[0, has])
    with pytest.raises(InputError):
        make_video(video, vae_grad_frames=-1)


def test_video_text_plain_or_upstream_view_text(video) -> None:
    """Plain prompt by default; with ``upstream_view_text`` view-interpolated for static-camera clips only
    (SPEC 11.6), by the absolute azimuth. The negative is plain in every case (SPEC 3.7-7)."""
    plain = make_video(video, prompt="a cat")
    vd = make_video(video, prompt="a cat", upstream_view_text=True)
    static = still_views([0.0, 90.0, 180.0], frames=4)  # three static clips: front, side, back
    assert static.static_camera.tolist() == [True, True, True]
    neg, pos = vd.text_embeddings(static)
    for i, view in enumerate(("front", "side", "back")):
        assert torch.allclose(neg[i], _text(video, "")[0], atol=1e-6)
        assert torch.allclose(pos[i], _text(video, f"a cat, {view} view")[0], atol=1e-6)
    moving = still_views([[0.0, 10.0, 20.0, 30.0], [90.0, 90.0, 90.0, 90.0]], frames=4)
    assert moving.static_camera.tolist() == [False, True]
    neg, pos = vd.text_embeddings(moving)
    assert torch.allclose(pos[0], _text(video, "a cat")[0], atol=1e-6)
    assert torch.allclose(pos[1], _text(video, "a cat, side view")[0], atol=1e-6)
    neg, pos = plain.text_embeddings(static)
    assert torch.allclose(pos, _text(video, "a cat").expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(neg, _text(video, "").expand(3, -1, -1), atol=1e-6)
    # what the UNet receives in a call
    with _ContextSpy(video.unet) as spy:
        vd(torch.rand(3, 4, 3, 16, 16), static, step=0, generator=torch.Generator().manual_seed(0))
    (ctx,) = spy.seen
    assert torch.equal(ctx[:3], neg) and torch.allclose(
        ctx[4], _text(video, "a cat, side view")[0], atol=1e-6
    )


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
    guid = make_controlnet(
        c, controlnet, prompt="a <token> dancing", learned_token=("<a124>", torch.randn(32, generator=gen)),
        frames="even:2", target=target, weight=lam, latent_mode="mode",
    )  # fmt: skip
    views = still_views(frames=16, condition=cond)
    out = guid(images, views, step=0, noise=noise, t=t)
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
    guid = make_controlnet(sd, controlnet, prompt="a cat", frames="even:2", target="sds")
    out = guid(images, still_views(frames=frames, condition=cond), step=0, generator=gen)
    out.losses["controlnet"].backward()
    assert out.diagnostics["frames"] == len(picked)
    assert (images.grad.flatten(2).abs().sum(-1)[0] > 0).nonzero().flatten().tolist() == picked


def test_controlnet_text_and_condition_checks(sd, controlnet) -> None:
    """Upstream view text (static camera): the UNet's positive follows each selected frame's azimuth,
    the negative and the ControlNet's own text stay plain (SPEC 3.7-7); no condition is an error."""
    images = torch.rand(1, 4, 3, 16, 16)
    views = still_views(90.0, frames=4, condition=torch.rand(1, 4, 3, 16, 16))
    guid = make_controlnet(sd, controlnet, prompt="a cat", upstream_view_text=True)
    with _ContextSpy(sd.unet) as unet_spy, _ContextSpy(controlnet) as cn_spy:
        guid(images, views, step=0, generator=torch.Generator().manual_seed(0))
    (u_ctx,), (c_ctx,) = unet_spy.seen, cn_spy.seen
    neg, side, cnp = (
        _text(sd, "")[0],
        _text(sd, "a cat, side view")[0],
        _text(sd, "best quality, high resolution")[0],
    )
    for i in range(2):  # frames {0, 2}
        assert torch.allclose(u_ctx[i], neg, atol=1e-6) and torch.allclose(c_ctx[i], neg, atol=1e-6)
        assert torch.allclose(u_ctx[2 + i], side, atol=1e-6)
        assert torch.allclose(c_ctx[2 + i], cnp, atol=1e-6)
    moving = still_views([[0.0, 30.0, 60.0, 90.0]], frames=4, condition=views.condition)
    neg, pos, _ = guid.text_embeddings(moving, [0, 2])
    assert torch.allclose(pos, _text(sd, "a cat").expand(2, -1, -1), atol=1e-6)
    with pytest.raises(InputError, match="condition"):
        guid(images, still_views(frames=4), step=0)


# ------------------------------------------------------------------------------------ shapes T=1/16


@pytest.mark.parametrize("frames", [1, 16])
def test_every_prior_keeps_image_shapes(sd, zero123, video, controlnet, frames: int) -> None:
    """Every prior through the one interface, ``prior(images, views, step=...)``, with [B, T, 3, H, W]
    inputs, T = 1 and T = 16: the image gradient has the input's shape, the loss is a finite fp32 scalar
    under the prior's fixed key, and no prior weight receives a gradient."""
    gen = torch.Generator().manual_seed(5)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    priors = [
        (make_sd(sd), "sd", "sds", (sd.unet, sd.vae, sd.text_encoder)),
        (
            make_zero123(zero123, reference=torch.rand(1, 3, 32, 32, generator=gen)),
            "zero123",
            "zero123",
            (zero123.unet, zero123.vae, zero123.image_encoder, zero123.projection),
        ),
        (make_video(video), "video", "video_sds", (video.unet, video.vae, video.text_encoder)),
        (make_controlnet(sd, controlnet), "controlnet", "controlnet", (controlnet, sd.unet, sd.vae)),
    ]
    for prior, name, key, modules in priors:
        assert isinstance(prior, Guidance) and (prior.name, prior.loss_key) == (name, key)
        assert isinstance(prior, TextGuidance) == (name != "zero123")
        images = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
        out = prior(images, views, step=123, generator=gen)
        assert list(out.losses) == [key]
        loss = out.losses[key]
        assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        assert images.grad is not None and images.grad.shape == images.shape
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
        _no_prior_grads(*modules)
