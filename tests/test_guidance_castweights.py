"""The VAE encoders' convolution and linear weights kept in the autocast dtype (``guidance/castweights.py``,
``run.vae_cast_weights``).

The lever must compute the same function bit for bit: the encoder's moments and the gradient to its input, the
latents a prior computes and the SDS gradient on the render through each prior's real call as the stages build
it, under CPU autocast (bf16, the CPU's default, and fp16), with and without the ``run.vae_checkpoint``
recompute. The tiny models' weights are stored in fp16, so every test first gives the VAE full-precision fp32
weights (and group norms other than the identity): otherwise a lever casting to the wrong dtype, or casting the
norms too, would round nothing and go unseen (``test_the_comparison_catches_a_wrong_lever`` checks that it is
seen).
"""

from __future__ import annotations

import collections
import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_guidance import still_views
from helpers_triton import needs_triton, run_interpreted

from animate124.guidance import castweights
from animate124.guidance.castweights import (
    CastConv2d,
    CastLinear,
    cast_weight_bytes,
    use_cast_encoder_weights,
)
from animate124.guidance.common import encoder_moments
from animate124.models.tiny import TINY_WIDTH

DTYPES = (torch.bfloat16, torch.float16)
#: the tiny VAE's encoder: conv_in, 4 down blocks (4 resnets × 2 convs, one shortcut, 3 downsamplers), the mid
#: block (2 resnets × 2 convs, attention q/k/v/out), conv_out; and quant_conv
TINY_LAYERS = 1 + (8 + 1 + 3) + (4 + 4) + 1 + 1


def _full_precision(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the encoder's parameters values that fp16 and bf16 cannot hold exactly (the tiny store keeps fp16
    values, the norms start as the identity), in place; returns ``vae``."""
    gen = torch.Generator().manual_seed(seed)
    parts = [vae.encoder] + ([vae.quant_conv] if getattr(vae, "quant_conv", None) is not None else [])
    with torch.no_grad():
        for part in parts:
            for p in part.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64).mul(0.02).float())
    return vae


def _tiny_vae() -> torch.nn.Module:
    from animate124.models.tiny import _tiny_vae as build

    torch.manual_seed(0)
    return _full_precision(build().eval().requires_grad_(False))


class _Fp32Norm(torch.nn.Module):
    """A group norm as CUDA autocast runs it (an fp32 op: the input cast to fp32, fp32 parameters)."""

    def __init__(self, norm: torch.nn.GroupNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        return F.group_norm(x.float(), n.num_groups, n.weight, n.bias, n.eps)


def _cuda_like_norms(vae: torch.nn.Module) -> torch.nn.Module:
    """The encoder's norms computing as under CUDA autocast (CPU autocast keeps them in the low precision), so
    the convolutions after them get fp32 inputs as they do on the GPU."""
    for mod in list(vae.encoder.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is torch.nn.GroupNorm:
                setattr(mod, name, _Fp32Norm(child))
    return vae


def _moments_and_grad(vae, x, dtype, checkpoint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        m = encoder_moments(vae, x, checkpoint=checkpoint, chunk_pixels=32 * 32)
    go = torch.randn(m.shape, generator=torch.Generator().manual_seed(5))
    (g,) = torch.autograd.grad(m.float(), x, go)
    return m, g


def _casts(fn) -> int:
    """``aten::_to_copy`` calls (autocast's casts) while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(e.name for e in prof.events())["aten::_to_copy"]


# ------------------------------------------------------------------------------------------ the premise
def test_autocast_casts_a_frozen_weight_at_every_call() -> None:
    """The premise (ATen's ``cached_cast``): autocast caches the cast of a weight that requires grad for the
    rest of the autocast region, and casts a frozen weight again at every call. Should torch ever cache frozen
    weights too, this fails and the lever has nothing left to save."""
    x = torch.randn(1, 4, 8, 8)
    # first call: x, weight, bias; second call: x, and weight and bias again unless cached
    for trainable, expected in ((True, 3 + 1), (False, 3 + 3)):
        conv = torch.nn.Conv2d(4, 4, 3).requires_grad_(trainable)

        def two_calls(conv=conv) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv(x)
                conv(x)

        assert _casts(two_calls) == expected, trainable


@pytest.mark.parametrize("checkpoint", [False, True])
def test_the_lever_removes_every_weight_cast_of_an_encoder_call(checkpoint: bool) -> None:
    """Per encoder pass the lever removes the two casts (weight, bias) of each swapped layer: in the forward, and
    in backward the ``run.vae_checkpoint`` recompute's as well; the copies are made once."""
    plain = _tiny_vae()
    lever = copy.deepcopy(plain)
    assert use_cast_encoder_weights(lever) == TINY_LAYERS
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    counts = {}
    for name, vae in (("plain", plain), ("lever", lever)):
        _moments_and_grad(vae, x, torch.bfloat16, checkpoint)  # the lever makes its copies here
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fwd = _casts(lambda vae=vae: encoder_moments(vae, x, checkpoint=checkpoint))
            m = encoder_moments(vae, x, checkpoint=checkpoint)
        bwd = _casts(lambda m=m: torch.autograd.grad(m.float().sum(), x))
        counts[name] = (fwd, bwd)
    (pf, pb), (lf, lb) = counts["plain"], counts["lever"]
    assert pf - lf == 2 * TINY_LAYERS, counts
    assert pb - lb == (2 * TINY_LAYERS if checkpoint else 0), counts


# ------------------------------------------------------------------------------------ the encoder alone
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "recompute"])
@pytest.mark.parametrize("norms", ["cpu", "cuda_like"])
def test_encoder_moments_and_input_gradient_are_bit_identical(dtype, checkpoint: bool, norms: str) -> None:
    plain = _tiny_vae()
    if norms == "cuda_like":
        _cuda_like_norms(plain)
    lever = copy.deepcopy(plain)
    use_cast_encoder_weights(lever)
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    m0, g0 = _moments_and_grad(plain, x, dtype, checkpoint)
    for _ in range(2):  # the call that makes the copies, and one that reuses them
        m1, g1 = _moments_and_grad(lever, x, dtype, checkpoint)
        assert torch.equal(m0, m1) and torch.equal(g0, g1)
    assert g0.abs().max() > 0


def test_the_copy_follows_the_weights_and_the_autocast_dtype() -> None:
    """A copy is remade when the weights change in place, move to channels-last (``.data`` swapped) or the
    autocast dtype changes; outside autocast the layers use the fp32 parameters."""
    from animate124.guidance.layout import channels_last_

    plain = _tiny_vae()
    lever = copy.deepcopy(plain)
    use_cast_encoder_weights(lever)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def same(dtype=torch.bfloat16) -> None:
        a, b = _moments_and_grad(plain, x, dtype, False), _moments_and_grad(lever, x, dtype, False)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    same()
    for vae in (plain, lever):  # an in-place change of the fp32 weights (a load, an optimizer step)
        _full_precision(vae, seed=7)
    same()
    for vae in (plain, lever):
        channels_last_(vae.encoder)
    same()
    conv = lever.encoder.conv_in
    assert conv.weight_cast.is_contiguous(memory_format=torch.channels_last)
    same(torch.float16)
    assert conv.weight_cast.dtype == torch.float16
    with torch.no_grad():  # no autocast: the fp32 layers
        assert torch.equal(plain.encode(x).latent_dist.parameters, lever.encode(x).latent_dist.parameters)


def test_only_the_encoders_conv_and_linear_layers_gain_a_half_size_copy() -> None:
    """Memory: the copies are the swapped layers' parameters in two bytes each; the fp32 parameters, the norms,
    the decoder and the state dict stay as they were."""
    vae = _tiny_vae()
    params = {k: (v, v.data_ptr()) for k, v in vae.named_parameters()}
    keys = list(vae.state_dict())
    assert use_cast_encoder_weights(vae) == TINY_LAYERS
    assert use_cast_encoder_weights(vae) == 0  # already done
    assert cast_weight_bytes(vae) == 0  # nothing before the first call under autocast
    _moments_and_grad(vae, torch.rand(1, 3, 32, 32), torch.bfloat16, True)
    swapped = [m for m in vae.modules() if isinstance(m, (CastConv2d, CastLinear))]
    assert len(swapped) == TINY_LAYERS
    expected = sum(2 * p.numel() for m in swapped for p in m.parameters(recurse=False))
    assert cast_weight_bytes(vae) == expected
    assert 2 * expected < 4 * sum(p.numel() for p in vae.encoder.parameters())  # under half the encoder
    assert list(vae.state_dict()) == keys
    for k, v in vae.named_parameters():
        assert v is params[k][0] and v.data_ptr() == params[k][1] and v.dtype == torch.float32, k
    assert all(type(m) is torch.nn.GroupNorm for m in vae.modules() if isinstance(m, torch.nn.GroupNorm))
    assert not any(isinstance(m, (CastConv2d, CastLinear)) for m in vae.decoder.modules())
    assert type(vae.post_quant_conv) is torch.nn.Conv2d


def test_layers_fall_back_where_autocast_would_not_cast_a_frozen_weight() -> None:
    """Trainable weights (autocast's own cache applies and gradients must reach them) and weights already in the
    autocast dtype run the plain layer and make no copy."""
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    cast = CastConv2d(conv)
    assert cast.weight is conv.weight and cast.bias is conv.bias
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = conv(x), cast(x)
    assert torch.equal(a, b) and cast.weight_cast is None
    (ga,) = torch.autograd.grad(a.float().sum(), conv.weight)
    (gb,) = torch.autograd.grad(b.float().sum(), conv.weight)
    assert torch.equal(ga, gb)
    half = CastLinear(torch.nn.Linear(4, 3).to(torch.bfloat16).requires_grad_(False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half(torch.randn(2, 4))
    assert half.weight_cast is None
    mixed = CastLinear(torch.nn.Linear(4, 3).requires_grad_(False))  # only what autocast casts is copied
    mixed.bias.data = mixed.bias.data.to(torch.bfloat16)
    y = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(mixed(y), F.linear(y, mixed.weight, mixed.bias))
    assert mixed.weight_cast is not None and mixed.bias_cast is None
    assert list(mixed.state_dict()) == ["weight", "bias"]
    assert use_cast_encoder_weights(None) == 0


# ------------------------------------------------------------------------------ through the priors
PRIORS = ("sd", "zero123", "video", "controlnet")


def _build(name: str, store, monkeypatch, on: bool):
    from animate124.config import resolve_config
    from animate124.stages import build

    monkeypatch.setattr(build, "_store", lambda cfg: store)
    cfg = resolve_config("tiny", sets=[f"run.vae_cast_weights={str(on).lower()}"])
    cpu = torch.device("cpu")
    ref = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    prior = {
        "sd": lambda: build.build_sd_guidance(cfg, cpu, "a cat"),
        "zero123": lambda: build.build_zero123_guidance(cfg, cpu, "dynamic", ref),
        "video": lambda: build.build_video_guidance(cfg, cpu, "a cat is dancing"),
        "controlnet": lambda: build.build_controlnet_guidance(
            cfg, cpu, "a <t> is dancing", ("<t>", torch.ones(TINY_WIDTH))
        ),
    }[name]()
    _full_precision(prior.vae)
    return prior


def _call(prior, monkeypatch, dtype, checkpoint: bool):
    """One guidance call as a stage makes it (under autocast, backward after it): the loss, the latents the
    prior computed (``z`` as the SDS noising receives it) and the gradient on the render."""
    from animate124.guidance import sds

    seen: list[torch.Tensor] = []
    add_noise = sds.add_noise
    monkeypatch.setattr(sds, "add_noise", lambda a, z, n, t: seen.append(z) or add_noise(a, z, n, t))
    prior.checkpoint_encoder = checkpoint
    frames = 4
    gen = torch.Generator().manual_seed(3)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    images = torch.rand(1, frames, 3, 16, 16, generator=gen).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
    loss = out.losses[prior.loss_key]
    loss.backward()
    monkeypatch.setattr(sds, "add_noise", add_noise)
    assert len(seen) == 1
    return loss.detach(), seen[0], images.grad


@pytest.fixture(scope="module")
def built(store):
    """Each prior built by the stages' builders with the lever on and off (built once: a test sets the recompute
    on the prior, and ``_full_precision`` gave both the same VAE weights)."""
    mp = pytest.MonkeyPatch()
    try:
        yield {(n, on): _build(n, store, mp, on) for n in PRIORS for on in (True, False)}
    finally:
        mp.undo()


#: (prior, autocast dtype): the video UNet in fp16 on the CPU takes 20-30 s a call
PRIOR_CASES = [
    pytest.param(n, d, id=f"{n}-{i}", marks=[pytest.mark.slow] if (n, d) == ("video", torch.float16) else [])
    for n in PRIORS
    for d, i in zip(DTYPES, ("bf16", "fp16"), strict=True)
]


@pytest.mark.parametrize("name,dtype", PRIOR_CASES)
@pytest.mark.parametrize("checkpoint", [True, False], ids=["recompute", "plain"])
def test_each_priors_latents_and_render_gradient_are_bit_identical(
    built, monkeypatch, name, dtype, checkpoint
):
    lever, plain = built[(name, True)], built[(name, False)]
    assert cast_weight_bytes(plain.vae) == 0
    loss0, z0, g0 = _call(plain, monkeypatch, dtype, checkpoint)
    loss1, z1, g1 = _call(lever, monkeypatch, dtype, checkpoint)
    assert cast_weight_bytes(lever.vae) > 0 and cast_weight_bytes(plain.vae) == 0  # the lever ran, only there
    assert torch.equal(z0, z1) and z0.dtype == z1.dtype
    assert torch.equal(loss0, loss1)
    assert torch.equal(g0, g1) and g0.abs().max() > 0


def _wrong_dtype(monkeypatch) -> None:
    """A lever whose copies are fp16 whatever autocast's dtype (the test runs bf16 autocast)."""
    monkeypatch.setattr(castweights, "autocast_dtype", lambda device_type: torch.float16)


def _norms_cast_too(vae) -> None:
    """A lever that also gives the group norms (plain or fused: ``run.vae_fused_norm``) low-precision
    parameters."""
    from animate124.guidance.groupnorm import FusedGroupNorm

    norms = [m for m in vae.encoder.modules() if isinstance(m, (torch.nn.GroupNorm, FusedGroupNorm))]
    assert norms
    for m in norms:
        m.weight.data, m.bias.data = m.weight.data.to(torch.bfloat16), m.bias.data.to(torch.bfloat16)


@pytest.mark.parametrize("wrong", ["dtype", "norms"])
@pytest.mark.parametrize("name", ["sd", "video"])
def test_the_comparison_catches_a_wrong_lever(store, monkeypatch, name: str, wrong: str) -> None:
    """The equality above is not trivially true: a lever that casts to another dtype than autocast's, or that
    casts the norms too, changes the latents and the render gradient."""
    plain = _build(name, store, monkeypatch, False)
    broken = _build(name, store, monkeypatch, True)
    if wrong == "dtype":
        _wrong_dtype(monkeypatch)
    else:
        _norms_cast_too(broken.vae)
    _, z0, g0 = _call(plain, monkeypatch, torch.bfloat16, True)
    _, z1, g1 = _call(broken, monkeypatch, torch.bfloat16, True)
    assert not torch.equal(z0, z1) and not torch.equal(g0, g1)


def test_run_vae_cast_weights_reaches_the_prior_vae() -> None:
    from types import SimpleNamespace

    from animate124.config import resolve_config
    from animate124.models.tiny import _tiny_vae as build_vae
    from animate124.stages.build import _finish_prior

    for on in (True, False):
        cfg = resolve_config("tiny", None, {"run": {"vae_cast_weights": on, "cuda_graphs": False}}, [])
        prior = SimpleNamespace(vae=build_vae().eval())
        _finish_prior(cfg, prior, "video")
        n = sum(isinstance(m, (CastConv2d, CastLinear)) for m in prior.vae.modules())
        assert n == (TINY_LAYERS if on else 0)


# ------------------------------------------------------------------------------ textual inversion
def test_textual_inversion_step_is_bit_identical_and_the_invert_stage_applies_it(store, monkeypatch) -> None:
    """The inversion's VAE forward runs under the trainer's autocast (fp16 on CUDA; bf16 here): the step's loss
    and the token's gradient are the same with the lever; ``run_invert`` applies it when asked."""
    from animate124.guidance.textual_inversion import TextualInversionSystem, TIConfig
    from animate124.models.loaders import load_sd

    cfg = TIConfig(
        placeholder="<t>", initializer="cat", steps=1, lr=1e-3, batch_size=2, resolution=64, augment=True,
        upstream_aug_range_bug=False, seed=0, checkpoint_every=10, mixed_precision=False,
    )  # fmt: skip
    photo = torch.rand(3, 70, 80, generator=torch.Generator().manual_seed(1))
    res = []
    for on in (False, True):
        comps = load_sd(store)
        _full_precision(comps.vae)
        if on:
            assert use_cast_encoder_weights(comps.vae) == TINY_LAYERS
        system = TextualInversionSystem(comps, photo, cfg, torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = system.training_step(1, 1.0).losses["mse"]
        loss.backward()
        res.append((loss.detach(), system.vec.grad.clone()))
        assert (cast_weight_bytes(comps.vae) > 0) == on
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


def test_the_invert_stage_applies_the_lever_when_asked(store, monkeypatch, tmp_path) -> None:
    from animate124.config import resolve_config
    from animate124.project import Project
    from animate124.stages import build
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess

    seen = []
    orig = castweights.use_cast_encoder_weights
    monkeypatch.setattr(
        castweights, "use_cast_encoder_weights", lambda vae: seen.append(orig(vae)) or seen[-1]
    )
    monkeypatch.setattr(build, "_store", lambda cfg: store)
    toy = Path(__file__).resolve().parents[1] / "examples" / "toy.png"
    for on in (True, False):
        cfg = resolve_config("tiny", None, {"invert": {"steps": 1}, "run": {"vae_cast_weights": on}}, [])
        p = Project(tmp_path / str(on))
        run_preprocess(p, cfg, toy)
        run_invert(p, cfg, show_progress=False)
    assert seen == [TINY_LAYERS]


# ------------------------------------------------------------------------------ with the fused norms
def _interp_checks() -> dict:
    """Under Triton's interpreter (the fused norms' path on the CPU; slow, so one small image): the tiny VAE
    with fused norms, with and without the lever, under fp16 autocast with the recompute and bf16 without."""
    from animate124.guidance.groupnorm import fused_norm_calls, use_fused_vae_norms

    out = {}
    fused = _tiny_vae()
    use_fused_vae_norms(fused)
    both = copy.deepcopy(fused)
    out["swapped"] = use_cast_encoder_weights(both)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    for dtype, checkpoint in ((torch.float16, True), (torch.bfloat16, False)):
        a = _moments_and_grad(fused, x, dtype, checkpoint)
        b = _moments_and_grad(both, x, dtype, checkpoint)
        out[f"equal_{str(dtype)[6:]}"] = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    out["fused_calls"] = fused_norm_calls(both)
    out["copy_bytes"] = cast_weight_bytes(both)
    return out


@pytest.mark.slow
@needs_triton
def test_the_lever_with_the_fused_group_norms() -> None:
    r = run_interpreted("test_guidance_castweights")
    assert r["swapped"] == TINY_LAYERS and r["fused_calls"] > 0 and r["copy_bytes"] > 0, r
    assert r["equal_float16"] and r["equal_bfloat16"], r


# ------------------------------------------------------------------------------ GPU, full size
def _sd_vae_config() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    for p in (os.environ.get("A124_HF_CONFIGS", ""), root / ".device" / "hf-configs",
              root / ".." / "shared" / "data" / "hf-configs"):  # fmt: skip
        vae = Path(p) / "stable-diffusion-v1-5--stable-diffusion-v1-5" / "vae" if p else None
        if vae is not None and vae.is_dir():
            return vae
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("n,size", [(4, 256), (1, 1024)], ids=["chunked", "by_piece"])
def test_full_size_encoder_is_bit_identical_on_the_gpu(monkeypatch, n: int, size: int) -> None:
    """The SD VAE encoder at full size (random fp32 weights) as the stages run it on the GPU: fp16 autocast, fused
    norms, blocked attention, the recompute (in chunks at 256², piece by piece at 1024²). cuDNN is made
    deterministic so that the plain path repeats itself exactly (the control), then the lever must equal it."""
    from diffusers import AutoencoderKL

    from animate124.guidance.attention import use_blocked_vae_attention
    from animate124.guidance.groupnorm import fused_norm_calls, use_fused_vae_norms

    config = _sd_vae_config()
    if config is None:
        pytest.skip("no hf-configs (A124_HF_CONFIGS, .device/hf-configs or ../shared/data/hf-configs)")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    plain = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config))).eval().requires_grad_(False)
    plain = _full_precision(plain).cuda()
    use_blocked_vae_attention(plain)
    use_fused_vae_norms(plain)
    lever = copy.deepcopy(plain)
    assert use_cast_encoder_weights(lever) == 32
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.rand(n, 3, size, size, device="cuda", generator=gen) * 2 - 1

    def run(vae):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.float16):
            m = encoder_moments(vae, xi, checkpoint=True)
        go = torch.randn(m.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
        (g,) = torch.autograd.grad(m.float(), xi, go)
        return m, g

    m0, g0 = run(plain)
    m1, g1 = run(plain)
    assert torch.equal(m0, m1) and torch.equal(g0, g1), "the plain path is not deterministic here"
    for _ in range(2):
        m2, g2 = run(lever)
        assert torch.equal(m0, m2) and torch.equal(g0, g2)
    assert fused_norm_calls(lever) > 0
    assert cast_weight_bytes(lever) == 2 * sum(
        p.numel()
        for m in lever.modules()
        if isinstance(m, (CastConv2d, CastLinear))
        for p in m.parameters(False)
    )
