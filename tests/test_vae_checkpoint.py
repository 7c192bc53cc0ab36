"""``run.vae_checkpoint`` (issue 12): the priors' VAE encoder recomputed in backward, in chunks of images.

It must compute the same function as the plain path: the same latents and the same image gradients (on
the tiny factory models, CPU), for the encoder alone and through each of the four priors, while keeping
far fewer bytes for backward (counted with ``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import pytest
import torch
from helpers_guidance import (
    assert_grad_close,
    make_controlnet,
    make_sd,
    make_video,
    make_zero123,
    still_views,
)

from animate124.engine.timing import kept_for_backward
from animate124.guidance.common import encode_latents, encoder_moments, posterior


@pytest.fixture(scope="module")
def sd(store):
    from animate124.models.loaders import load_sd

    return load_sd(store)


def test_encoder_checkpoint_same_moments_and_gradients_less_memory(sd) -> None:
    vae = sd.vae
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_(True)
    w = torch.randn(4, 8, 4, 4, generator=gen)  # a fixed upstream gradient

    def run(checkpoint: bool, per_image: bool):
        x.grad = None
        if per_image and not checkpoint:
            fn = lambda: torch.cat([encoder_moments(vae, x[i : i + 1]) for i in range(4)])  # noqa: E731
        else:
            fn = lambda: encoder_moments(vae, x, checkpoint=checkpoint)  # noqa: E731
        m, saved = kept_for_backward(fn)
        (m * w).sum().backward()
        return m.detach(), x.grad.clone(), saved

    m_ck, g_ck, saved_ck = run(True, False)
    m_one, g_one, saved_one = run(False, True)
    m_all, g_all, _ = run(False, False)
    # the forward is the plain batched call: bit-identical moments
    assert torch.equal(m_ck, m_all)
    # the gradients are the plain path's up to float32 summation order (batched or image by image)
    assert_grad_close(g_ck, g_all)
    assert_grad_close(g_ck, g_one)
    assert saved_ck * 8 < saved_one, (saved_ck, saved_one)
    # without grad (or an input that needs none) it is the plain call
    with torch.no_grad():
        assert torch.equal(
            encoder_moments(vae, x.detach(), checkpoint=True), encoder_moments(vae, x.detach())
        )


@pytest.mark.parametrize("chunk_pixels", [2 * 32 * 32, 3 * 32 * 32, 16 * 16])
def test_encoder_checkpoint_chunks_and_inner_block_checkpointing(sd, chunk_pixels: int) -> None:
    """Chunks of 2 and of 3 (a ragged last chunk) of 4 images, and images larger than the budget (one at a
    time with the encoder's own block checkpointing, switched off again afterwards)."""
    vae = sd.vae
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_(True)
    w = torch.randn(4, 8, 4, 4, generator=gen)
    grads = []
    for ck in (False, True):
        x.grad = None
        m = encoder_moments(vae, x, checkpoint=ck, chunk_pixels=chunk_pixels)
        (m * w).sum().backward()
        grads.append(x.grad.clone())
    assert_grad_close(grads[1], grads[0])
    assert not vae.encoder.gradient_checkpointing


def test_encoder_checkpoint_keeps_the_autocast_state_in_backward(sd) -> None:
    """The recompute runs under the forward's autocast state (bf16 on the CPU here), like the forward."""
    vae = sd.vae
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    grads = []
    for ck in (False, True):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m = encoder_moments(vae, x, checkpoint=ck)
        m.float().square().sum().backward()
        grads.append(x.grad.clone())
    # both in bf16: equal here (0.0); a recompute without autocast is 2e-2 off on the tiny VAE
    assert_grad_close(grads[1], grads[0], rel=1e-3)


def test_posterior_is_diffusers_diagonal_gaussian(sd) -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        dist = sd.vae.encode(x).latent_dist
        mean, std = posterior(encoder_moments(sd.vae, x))
    assert torch.equal(mean, dist.mean) and torch.equal(std, dist.std) and torch.equal(mean, dist.mode())


@pytest.mark.parametrize("sample", [True, False])
def test_encode_latents_checkpoint_draws_the_same_posterior_sample(sd, sample: bool) -> None:
    x = torch.rand(3, 3, 32, 32).requires_grad_(True)
    outs = []
    for ck in (False, True):
        x.grad = None
        z = encode_latents(
            sd.vae, x, sample=sample, generator=torch.Generator().manual_seed(7), checkpoint=ck
        )
        z.square().sum().backward()
        outs.append((z.detach(), x.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    assert_grad_close(outs[1][1], outs[0][1])


def _four_frame_call(seed: int):
    """``(frames, generator, views, reference)`` of a 4-frame 16² call every prior takes (ControlNet's condition
    frames in the views, Zero123's 32² reference), drawn from ``seed``'s generator, which goes on to draw the
    images."""
    frames = 4
    gen = torch.Generator().manual_seed(seed)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    return frames, gen, views, torch.rand(1, 3, 32, 32, generator=gen)


def test_every_prior_same_loss_and_gradient_with_encoder_checkpoint(store, sd) -> None:
    from animate124.models.loaders import load_controlnet, load_video, load_zero123

    zero123, video, cn = load_zero123(store), load_video(store), load_controlnet(store)
    frames, gen, views, ref = _four_frame_call(3)
    builders = {
        "sd": lambda ck: make_sd(sd, checkpoint_encoder=ck),
        "zero123": lambda ck: make_zero123(zero123, reference=ref, checkpoint_encoder=ck),
        "video": lambda ck: make_video(video, checkpoint_encoder=ck),
        "controlnet": lambda ck: make_controlnet(sd, cn, checkpoint_encoder=ck),
    }
    images0 = torch.rand(1, frames, 3, 16, 16, generator=gen)
    for name, build in builders.items():
        res = []
        for ck in (False, True):
            prior = build(ck)
            images = images0.clone().requires_grad_(True)
            out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
            loss = out.losses[prior.loss_key]
            loss.backward()
            res.append((float(loss.detach()), images.grad.clone()))
        assert res[0][0] == pytest.approx(res[1][0], rel=1e-5, abs=1e-7), name
        assert_grad_close(res[1][1], res[0][1])


def test_large_images_recompute_piece_by_piece_and_run_the_encoder_twice(sd) -> None:
    """Images above the pixel budget: the forward keeps the inputs of the encoder's pieces, backward
    recomputes one piece at a time. Same moments (bit for bit) and gradients as the plain path; each down
    block runs once in the batched forward and once per image in backward (diffusers' own block
    checkpointing ran it twice per image in backward); the encoder's checkpointing flag stays off."""
    from animate124.guidance.common import encoder_stages

    vae = sd.vae
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1).requires_grad_(True)
    w = torch.randn(3, 8, 4, 4, generator=gen)
    with torch.no_grad():  # the pieces compose to vae.encode's moments
        h = x.detach()
        for stage in encoder_stages(vae):
            h = stage(h)
        assert torch.equal(h, vae.encode(x.detach()).latent_dist.parameters)
    calls = []
    hook = vae.encoder.down_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        results = []
        for ck in (False, True):
            x.grad = None
            calls.clear()
            m = encoder_moments(vae, x, checkpoint=ck, chunk_pixels=16 * 16)
            (m * w).sum().backward()
            results.append((m.detach(), x.grad.clone(), len(calls)))
    finally:
        hook.remove()
    (m0, g0, n0), (m1, g1, n1) = results
    assert torch.equal(m0, m1)
    assert_grad_close(g1, g0)
    assert (n0, n1) == (1, 1 + 3)
    assert not vae.encoder.gradient_checkpointing


@pytest.mark.parametrize("name", ["sd", "zero123", "video", "video_grad2", "controlnet"])
def test_a_call_within_keep_pixels_runs_the_encoder_once_with_the_same_gradient(store, sd, name: str) -> None:
    """``static.vae_keep_pixels`` as each prior assembles its call: with ``run.vae_checkpoint`` on, a call whose
    images with grad fit ``checkpoint_keep_pixels`` runs the encoder once (its activations kept), one above it
    twice (the recompute), and both give the loss and image gradient of the plain path. On the CPU in fp32 the
    kept path runs the same operations on the same inputs in the same order as the recompute's one chunk (every
    call here is one chunk), so the gradients are equal bit for bit, not only within the summation-order bound
    the chunked recompute is held to (``assert_grad_close``)."""
    from animate124.models.loaders import load_controlnet, load_video, load_zero123

    frames, gen, views, ref = _four_frame_call(5)
    comps = {
        "sd": lambda **kw: make_sd(sd, **kw),
        "zero123": lambda **kw: make_zero123(load_zero123(store), reference=ref, **kw),
        "video": lambda **kw: make_video(load_video(store), **kw),
        # two of the four frames with grad (dynamic.vae_grad_frames): the limit counts those two only
        "video_grad2": lambda **kw: make_video(load_video(store), vae_grad_frames=2, **kw),
        "controlnet": lambda **kw: make_controlnet(sd, load_controlnet(store), **kw),
    }
    images0 = torch.rand(1, frames, 3, 16, 16, generator=gen)
    res = {}
    for keep in ("none", "below", "exact"):
        prior = comps[name](checkpoint_encoder=keep != "none")
        size = prior.image_size  # the encoder's input: an int side, or (h, w) for the video prior
        h, w = (size, size) if isinstance(size, int) else size
        n_grad = (
            len(prior.selected_frames(frames))
            if name == "controlnet"
            else 2
            if name == "video_grad2"
            else frames
        )
        pixels = n_grad * h * w
        prior.checkpoint_keep_pixels = {"none": 0, "below": pixels - 1, "exact": pixels}[keep]
        assert prior.recompute_encoder(pixels) is (keep == "below")
        calls: list[int] = []
        hook = prior.vae.encoder.register_forward_hook(lambda *a, c=calls: c.append(1))
        try:
            images = images0.clone().requires_grad_(True)
            out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
            out.losses[prior.loss_key].backward()
        finally:
            hook.remove()
        res[keep] = (float(out.losses[prior.loss_key].detach()), images.grad.clone(), len(calls))
    (l0, g0, c0), (l1, g1, c1), (l2, g2, c2) = res["none"], res["below"], res["exact"]
    assert c2 == c0 and l0 == l2, (c0, c2)
    assert torch.equal(g2, g0), name  # kept = the plain path
    if name.startswith("video"):
        # the video prior keeps the frames that fit (3 of 4; 1 of 2) and recomputes the last one: one encoder
        # call more in the forward (the chunk in two) and one in backward; another batch split, so rounding
        assert c1 == c0 + 2, (c0, c1)
        assert l1 == pytest.approx(l0, rel=1e-6)
        assert_grad_close(g1, g0)
        return
    # encoder calls: the plain path and the kept one run it once per call, the recompute once more for the
    # images with grad (one chunk here)
    assert c1 == c0 + 1, (c0, c1, c2)
    assert l0 == l1
    assert torch.equal(g1, g0), name  # one recompute chunk: the same operations in the same order (docstring)


@pytest.mark.parametrize("encode_chunk", [8, 3])
def test_the_video_prior_keeps_its_first_frames_and_recomputes_the_rest(store, encode_chunk: int) -> None:
    """``dynamic.vae_keep_pixels`` below a clip's pixels: the video prior keeps the encoder activations of its
    first frames up to the budget (2 of 4 here) and recomputes only the others in backward, in the encoder
    calls counted by batch size, for the plain path's loss and image gradient (up to fp32 summation order: the
    batches differ). With ``encode_chunk=3`` the budget cuts the first chunk (2 kept + 1 recomputed), the
    second chunk (1 frame) is recomputed."""
    from animate124.models.loaders import load_video

    frames, gen, views, _ = _four_frame_call(7)
    images0 = torch.rand(1, frames, 3, 16, 16, generator=gen)
    res = {}
    for keep in ("plain", "two"):
        prior = make_video(load_video(store), checkpoint_encoder=keep == "two", encode_chunk=encode_chunk)
        h, w = prior.image_size
        prior.checkpoint_keep_pixels = 2 * h * w + (h * w - 1)  # 2 frames and a part of one: 2 kept
        batches: list[tuple[int, bool]] = []

        def seen(module, args, out, b=batches):
            b.append((args[0].shape[0], torch.is_grad_enabled()))

        hook = prior.vae.encoder.register_forward_hook(seen)
        try:
            images = images0.clone().requires_grad_(True)
            out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
            n_forward = len(batches)
            out.losses[prior.loss_key].backward()
        finally:
            hook.remove()
        res[keep] = (float(out.losses[prior.loss_key].detach()), images.grad.clone(), batches, n_forward)
    (l0, g0, _, _), (l1, g1, b1, nf) = res["plain"], res["two"]
    # (frames, with grad) of each encoder call: forward, the kept frames with grad and the others in the
    # recompute's no-grad pass; backward, the recompute of those others only, never of the kept ones
    forward = {8: [(2, True), (2, False)], 3: [(2, True), (1, False), (1, False)]}[encode_chunk]
    backward = {8: [(2, True)], 3: [(1, True), (1, True)]}[encode_chunk]
    assert (b1[:nf], b1[nf:]) == (forward, backward), b1
    assert l1 == pytest.approx(l0, rel=1e-6)
    assert_grad_close(g1, g0)
