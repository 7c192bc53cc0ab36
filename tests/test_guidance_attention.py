"""Blocked exact attention for the VAE mid block (``guidance/attention.py``, ``run.vae_attention``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from animate124.guidance.attention import blocked_attention, use_blocked_vae_attention


@pytest.mark.parametrize("block_scores", [2**26, 37 * 2 * 3])  # one block; many blocks, the last short
def test_blocked_attention_matches_sdpa_values_and_gradients(block_scores: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 101, 24, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    for t in (q, k, v):
        t.requires_grad_(True)
    go = torch.randn(2, 3, 101, 24, generator=gen, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v)
    g_ref = torch.autograd.grad(ref, (q, k, v), go)
    out = blocked_attention(q, k, v, block_scores=block_scores)
    g_out = torch.autograd.grad(out, (q, k, v), go)
    # float64 inputs: the scores are computed in float32, so agreement is at float32 precision
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_blocked_processor_in_the_vae_same_moments_and_input_gradient() -> None:
    """The tiny VAE's mid-block attention (32-wide head) forced onto the blocked path: the encoder's
    moments and the gradient reaching the image equal the SDPA processor's."""
    from animate124.models.tiny import _tiny_vae

    torch.manual_seed(0)
    vae = _tiny_vae().eval().requires_grad_(False)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    go = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = vae.encode(x).latent_dist.parameters
    (g_ref,) = torch.autograd.grad(ref, x, go)
    assert use_blocked_vae_attention(vae, min_tokens=16, max_flash_dim=16) == 1
    import animate124.guidance.attention as A

    calls = []
    orig = A.blocked_attention

    def spy(*a, **kw):
        calls.append(a[0].shape)
        return orig(*a, **kw)

    A.blocked_attention = spy
    try:
        out = vae.encode(x).latent_dist.parameters
        (g_out,) = torch.autograd.grad(out, x, go)
    finally:
        A.blocked_attention = orig
    assert len(calls) == 1  # the mid block's attention took the blocked path
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-5)


def test_blocked_processor_leaves_small_or_narrow_attention_to_sdpa() -> None:
    from animate124.guidance.attention import blocked_processor

    proc = blocked_processor()
    calls = []

    def spy(*a, **kw):
        calls.append(a[0].shape)
        return F.scaled_dot_product_attention(*a, **kw)

    from animate124.models.tiny import _tiny_vae

    vae = _tiny_vae().eval()
    vae.encoder.mid_block.attentions[0].set_processor(proc)
    import animate124.guidance.attention as A

    orig = A.blocked_attention
    A.blocked_attention = spy  # the tiny VAE (64 tokens, 32-wide head) must not take the blocked path
    try:
        vae.encode(torch.rand(1, 3, 64, 64))
    finally:
        A.blocked_attention = orig
    assert calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_blocked_attention_gpu_fp16_at_the_refine_size() -> None:
    """16,384 tokens × one 512-wide head (a 1024² image's VAE mid block), fp16: blocked vs SDPA against a
    float32 reference; the blocked path is at least as accurate."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1, 16384, 512, device="cuda", generator=gen) for _ in range(3))
    go = torch.randn(1, 1, 16384, 512, device="cuda", generator=gen)
    exact = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*exact)
    g_ref = torch.autograd.grad(ref, exact, go)
    half = [t.detach().half().requires_grad_(True) for t in (q, k, v)]

    def err(fn):
        out = fn(*half)
        grads = torch.autograd.grad(out, half, go.half())
        e = [((out.float() - ref).norm() / ref.norm()).item()]
        e += [((a.float() - b).norm() / b.norm()).item() for a, b in zip(grads, g_ref, strict=True)]
        return e

    e_sdpa, e_blocked = err(F.scaled_dot_product_attention), err(blocked_attention)
    for a, b in zip(e_blocked, e_sdpa, strict=True):
        assert a <= 1.5 * b + 1e-3, (e_blocked, e_sdpa)


@pytest.mark.parametrize("mode", ["blocked", "sdpa"])
def test_run_vae_attention_sets_the_prior_vae_processor(mode: str) -> None:
    """``run.vae_attention`` reaches the prior's VAE encoder through the build layer's ``_finish_prior``."""
    from types import SimpleNamespace

    from animate124.config import resolve_config
    from animate124.models.tiny import _tiny_vae
    from animate124.stages.build import _finish_prior

    cfg = resolve_config("tiny", None, {"run": {"vae_attention": mode, "cuda_graphs": False}}, [])
    prior = SimpleNamespace(vae=_tiny_vae().eval())
    _finish_prior(cfg, prior, "sd")
    name = type(prior.vae.encoder.mid_block.attentions[0].processor).__name__
    assert name == ("BlockedAttnProcessor" if mode == "blocked" else "AttnProcessor2_0")
