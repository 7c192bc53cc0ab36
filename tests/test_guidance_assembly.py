"""The priors as the stages call them: a clip's frames one by one (SD, Zero123) and Zero123's upstream
conditioning switches, on the tiny factory models (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_guidance import assert_grad_close, make_sd, make_zero123, still_views

from animate124.errors import InputError
from animate124.guidance.zero123 import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def sd(store):
    from animate124.models.loaders import load_sd

    return load_sd(store)


@pytest.fixture(scope="module")
def zero123(store):
    from animate124.models.loaders import load_zero123

    return load_zero123(store)


@pytest.mark.parametrize("name", ["sd", "zero123"])
def test_image_priors_take_a_clip_as_its_frames_one_by_one(sd, zero123, name: str) -> None:
    """SD and Zero123 on a [1, 4] clip whose frames have their own views: the loss is the mean of the four
    single-frame losses and each frame's image gradient is its single-frame gradient / 4 (∂/∂z = g/(B·T)),
    with the same injected noise and t per frame (frame order, per-frame views and the /N all checked)."""
    gen = torch.Generator().manual_seed(8)
    n = 4
    if name == "sd":
        prior = make_sd(sd, latent_mode="mode")
    else:
        prior = make_zero123(zero123, reference=torch.rand(1, 3, 32, 32, generator=gen), latent_mode="mode")
    images = torch.rand(1, n, 3, 16, 16, generator=gen).requires_grad_(True)
    az, dp = torch.tensor([[20.0, 100.0, -60.0, 170.0]]), torch.tensor([[-10.0, 5.0, 20.0, -30.0]])
    size = prior.image_size // 8
    noise = torch.randn(n, 4, size, size, generator=gen)
    t = torch.tensor([250, 300, 450, 590])
    out = prior(images, still_views(az, dp, frames=n), step=0, noise=noise, t=t)
    loss = out.losses[prior.loss_key]
    loss.backward()
    singles = []
    for f in range(n):
        x = images.detach()[:, f : f + 1].clone().requires_grad_(True)
        one = prior(
            x, still_views(az[:, f : f + 1], dp[:, f : f + 1]), step=0, noise=noise[f : f + 1], t=t[f : f + 1]
        )
        one.losses[prior.loss_key].backward()
        singles.append((one.losses[prior.loss_key].detach(), x.grad[:, 0]))
    assert loss.item() == pytest.approx(float(sum(s[0] for s in singles)) / n, rel=1e-5)
    for f, (_, g) in enumerate(singles):
        assert_grad_close(images.grad[:, f], g / n)
    assert singles[0][1].abs().sum() > 0 and not torch.allclose(singles[0][1], singles[1][1])


def test_zero123_upstream_conditioning_switches(zero123) -> None:
    """``c_concat_mode="sample"``: one posterior sample mean + std·ε with ε from the given generator (upstream),
    "mode": the mean. ``clip_preprocess="processor"``: upstream's PIL path, recomputed here by hand: the
    reference as integers ⌊255·x⌋, PIL bicubic to the encoder's size, /255, CLIP mean/std."""
    import numpy as np
    from PIL import Image

    c = zero123
    ref = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    sampled = make_zero123(
        c, reference=ref, c_concat_mode="sample", generator=torch.Generator().manual_seed(9)
    )
    mode = make_zero123(c, reference=ref)
    with torch.no_grad():
        post = c.vae.encode(ref * 2 - 1).latent_dist
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(sampled.c_concat, post.mean + post.std * eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mode.c_concat, post.mean, rtol=1e-5, atol=1e-6)

    proc = make_zero123(c, reference=ref, clip_preprocess="processor")
    size = c.image_encoder.config.image_size
    ints = (ref[0] * 255).int().permute(1, 2, 0).numpy().astype(np.uint8)  # truncated, as upstream's .int()
    pil = Image.fromarray(ints).resize((size, size), Image.Resampling.BICUBIC)
    pix = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    pix = (pix - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = c.image_encoder(pixel_values=pix).image_embeds[:, None]
    torch.testing.assert_close(proc.clip_embeds, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(proc.clip_embeds, mode.clip_embeds, atol=1e-4)  # the switch changes it
    with pytest.raises(InputError, match="feature_extractor"):
        make_zero123(dataclasses.replace(c, image_processor=None), reference=ref, clip_preprocess="processor")
