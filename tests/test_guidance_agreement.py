"""Issue 27's gradient agreement rule (``guidance/agreement.py``) and the options it admits: channels-last
layouts, ``torch.compile``, the textual inversion's fast step, fp8 (held to its own bound). The max-autotune mode
reaching the prior is checked without compiling (``test_the_options_reach_the_built_priors``); its agreement
run on the CPU (25 s of CI, a CPU's autotuning, not the GPU's) was dropped; on the GPU ``bench_guidance.py``'s
``compile_ma`` variants report its cosine.

On the CPU with the tiny priors; marked ``gpu``, with the full-size random-weight priors from the real configs
under fp16 autocast, as the stages run them (``A124_GPU_AGREEMENT`` picks the variants, default
``graphs,channels_last,fp8``; the compiled variants are measured by ``benchmarks/bench_guidance.py``, which
reports the same cosine per prior, because each full-size compile takes minutes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers_guidance import make_controlnet, make_sd, make_video, make_zero123, still_views

from animate124.errors import ConfigError
from animate124.guidance.agreement import (
    COSINE_MIN,
    FP8_COSINE_MIN,
    NORM_ERROR_MAX,
    Agreement,
    compare,
    gradient_agreement,
)
from animate124.guidance.fp8 import swap_to_fp8
from animate124.guidance.layout import channels_last_, parse_channels_last, use_channels_last

REPO = Path(__file__).resolve().parents[1]
PRIORS = ("sd", "zero123", "video", "controlnet")


def test_compare_measures_direction_and_size() -> None:
    g = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = compare(g, g.clone())
    assert same.cosine == pytest.approx(1.0, abs=1e-12) and same.norm_error == 0.0 and same.passes()
    longer = compare(g, 1.02 * g)  # the right direction, 2 % too long: fails on the norm only
    assert longer.cosine == pytest.approx(1.0, abs=1e-12) and longer.norm_error == pytest.approx(0.02)
    assert not longer.passes()
    noise = torch.randn(g.shape, generator=torch.Generator().manual_seed(1))
    tilted = compare(g, g + 0.1 * noise * g.norm() / noise.norm())  # 10 % orthogonal-ish error: cos ≈ 0.995
    assert (
        0.99 < tilted.cosine < COSINE_MIN
        and not tilted.passes()
        and tilted.passes(cosine=0.99, norm_error=0.02)
    )
    assert compare(g, -g).cosine == pytest.approx(-1.0)
    assert not compare(g, torch.full_like(g, float("nan"))).passes()
    with pytest.raises(ValueError):
        compare(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError):
        compare(g, g[:1])


def _prior(store, name: str, **kw):
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    if name == "sd":
        return make_sd(load_sd(store), **kw), 1
    if name == "zero123":
        ref = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        return make_zero123(load_zero123(store), reference=ref, **kw), 1
    if name == "video":
        return make_video(load_video(store), **kw), 4
    return make_controlnet(load_sd(store), load_controlnet(store), **kw), 4


def _inputs(frames: int, size: int = 16) -> tuple[torch.Tensor, object]:
    gen = torch.Generator().manual_seed(3)
    cond = torch.rand(1, frames, 3, size, size, generator=gen)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    return torch.rand(1, frames, 3, size, size, generator=gen), views


def _agreement(store, name: str, optimise, **kw) -> Agreement:
    prior, frames = _prior(store, name, checkpoint_encoder=True, **kw)
    images, views = _inputs(frames)
    return gradient_agreement(prior, optimise, images, views, seed=7)


@pytest.mark.parametrize("name", PRIORS)
def test_channels_last_priors_pass_the_rule(store, name: str) -> None:
    def optimise(prior) -> None:
        assert use_channels_last(prior) > 0
        conv = next(m for m in prior.unet.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    a = _agreement(store, name, optimise)
    assert a.passes(), a  # fp32 on the CPU: summation order only
    assert a.cosine > 1 - 1e-6 and a.norm_error < 1e-5, a


def test_channels_last_converts_2d_and_3d_convolutions_only() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3), torch.nn.Conv3d(8, 8, (3, 1, 1)), torch.nn.Linear(8, 8)
    )
    w3 = net[1].weight
    assert channels_last_(net) == 2
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[1].weight is w3 and w3.is_contiguous(memory_format=torch.channels_last_3d)
    assert net[2].weight.is_contiguous()
    assert parse_channels_last("all") == ("sd", "zero123", "video", "controlnet", "invert")
    with pytest.raises(ConfigError, match="run.channels_last"):
        parse_channels_last("unet")


#: the cosine the tiny priors reach with fp8 feed-forward layers, by CFG scale: Zero123 (5) and ControlNet (7.5)
#: 0.9996 and 0.9995, SD 0.986; the video prior (100: the branches' rounding amplified a hundredfold) 0.956, so
#: its bound here is that value with a margin (the full-size GPU test applies issue 27's 0.98 to every prior)
FP8_TINY_COSINE = {
    "sd": FP8_COSINE_MIN,
    "zero123": FP8_COSINE_MIN,
    "video": 0.95,
    "controlnet": FP8_COSINE_MIN,
}


@pytest.mark.parametrize("name", PRIORS)
def test_fp8_priors_meet_the_fp8_bound(store, name: str) -> None:
    """fp8 products (``run.prior_precision=fp8``), run here through PyTorch's CPU ``_scaled_mm``: lower
    precision, held to the cosine that issue 27 asks of it, not to the paper rule."""

    def optimise(prior) -> None:
        assert swap_to_fp8(prior.unet) > 0
        if getattr(prior, "controlnet", None) is not None:
            assert swap_to_fp8(prior.controlnet) > 0

    a = _agreement(store, name, optimise)
    assert a.cosine >= FP8_TINY_COSINE[name] and a.norm_error <= 0.1, a
    assert a.cosine < 1 - 1e-6, "fp8 changed nothing: the swap did not reach the call"


def test_fp8_layers_compute_the_product_and_the_swap_leaves_the_rest(store) -> None:
    from animate124.guidance.fp8 import FP8Linear, FP8Pointwise, quantize_rows
    from animate124.models.loaders import load_sd

    torch.manual_seed(0)
    x = torch.randn(6, 64) * torch.logspace(-2, 2, 6)[:, None]  # rows of very different scales
    x8, s = quantize_rows(x)
    assert x8.dtype == torch.float8_e4m3fn and s.shape == (6, 1)
    assert (
        (x8.float() * s - x).abs() <= 2**-4 * x.abs().amax(1, keepdim=True)
    ).all()  # 3 mantissa bits, per row
    lin = torch.nn.Linear(64, 32)
    y, y8 = lin(x), FP8Linear(lin)(x)
    assert torch.nn.functional.cosine_similarity(y.flatten(), y8.flatten(), dim=0) > 0.999
    conv = torch.nn.Conv2d(64, 32, 1)
    xc = torch.randn(2, 64, 5, 5).contiguous(memory_format=torch.channels_last)
    yc = FP8Pointwise(conv)(xc)
    assert yc.shape == (2, 32, 5, 5) and yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.nn.functional.cosine_similarity(conv(xc).flatten(), yc.flatten(), dim=0) > 0.999
    unet = load_sd(store).unet
    before = {
        n: (type(m), tuple(p.shape for p in m.parameters(recurse=False))) for n, m in unet.named_modules()
    }
    x_in = torch.randn(2, 4, 8, 8)
    out0 = unet(x_in, torch.tensor([10, 10]), encoder_hidden_states=torch.randn(2, 77, 32)).sample
    swapped = swap_to_fp8(unet)
    after = {n: type(m) for n, m in unet.named_modules()}
    changed = {n for n in before if n in after and after[n] is not before[n][0]}
    assert len(changed) == swapped > 0 and all(".ff." in n and after[n] is FP8Linear for n in changed)
    assert all(
        before[n][0] is after[n] for n in before if n in after and n not in changed
    )  # the rest untouched
    out1 = unet(x_in, torch.tensor([10, 10]), encoder_hidden_states=torch.randn(2, 77, 32)).sample
    assert out1.shape == out0.shape
    everything = load_sd(store).unet
    assert swap_to_fp8(everything, "all") > swap_to_fp8(load_sd(store).unet, "linear") > swapped
    with pytest.raises(ValueError):
        swap_to_fp8(unet, "convs")


def test_fp8_needs_a_recent_cuda_gpu() -> None:
    from animate124.guidance.fp8 import check_fp8_device

    with pytest.raises(ConfigError, match=r"fp8 needs a CUDA GPU with compute capability >= 8\.9"):
        check_fp8_device(torch.device("cpu"))


@pytest.mark.slow
def test_compiled_sd_prior_passes_the_rule(store, tmp_path, monkeypatch) -> None:
    """Inductor on the CPU (a C compiler is needed; about a minute on 2 cores)."""
    mode = "default"
    from animate124.guidance.compiled import compile_prior_networks, is_compiled

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()

    def optimise(prior) -> None:
        assert compile_prior_networks(prior, mode) == 1 and is_compiled(prior.unet)
        assert prior.unet.mode == mode

    a = _agreement(store, "sd", optimise)
    assert prior_ran_compiled(a)
    assert a.passes(), a


def prior_ran_compiled(a: Agreement) -> bool:
    """A compiled call rounds differently somewhere: a bit-identical gradient means it fell back to eager."""
    return a.cosine < 1.0 or a.norm_error > 0.0


def test_the_options_reach_the_built_priors(store, monkeypatch, tmp_path) -> None:
    from animate124.config import resolve_config
    from animate124.guidance.compiled import is_compiled
    from animate124.stages import build

    monkeypatch.setattr(build, "_store", lambda cfg: store)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = resolve_config("tiny", sets=["run.channels_last=video", "run.compile_priors=video",
                                       "run.compile_mode=max-autotune"])  # fmt: skip
    prior = build.build_video_guidance(cfg, torch.device("cpu"), "a cat is dancing")
    assert is_compiled(prior.unet) and prior.unet.mode == "max-autotune"
    conv = next(m for m in prior.unet.eager.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build.build_sd_guidance(
        resolve_config("tiny", sets=["run.channels_last=video"]), torch.device("cpu"), "a"
    )
    conv = next(m for m in plain.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    # fp8 on a CPU: a clear configuration error when the prior is built
    with pytest.raises(ConfigError, match=r"compute capability >= 8\.9"):
        build.build_sd_guidance(
            resolve_config("tiny", sets=["run.prior_precision=fp8"]), torch.device("cpu"), "a"
        )
    paper = resolve_config("paper").run  # nothing of issue 27 is on in paper
    assert (paper.channels_last, paper.compile_mode, paper.fused_adamw, paper.prior_precision) == (
        "",
        "default",
        False,
        "fp16",
    )
    ti = build.ti_config(resolve_config("tiny", sets=["run.channels_last=invert", "run.compile_priors=all",
                                                      "run.fused_adamw=true"]), torch.device("cpu"))  # fmt: skip
    assert ti.channels_last and ti.compile_unet and ti.fused_adamw
    assert not build.ti_config(resolve_config("tiny"), torch.device("cpu")).compile_unet


def _ti_vector_gradient(store, device: str = "cpu", **options) -> torch.Tensor:
    from animate124.guidance.textual_inversion import TextualInversionSystem, TIConfig
    from animate124.models.loaders import load_sd

    cfg = TIConfig(
        placeholder="<t>", initializer="cat", steps=1, lr=1e-3, batch_size=2, resolution=64, augment=True,
        upstream_aug_range_bug=False, seed=0, checkpoint_every=10, mixed_precision=False, **options,
    )  # fmt: skip
    photo = torch.rand(3, 70, 80, generator=torch.Generator().manual_seed(1))
    comps = load_sd(store)
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.to(device)
    system = TextualInversionSystem(comps, photo.to(device), cfg, torch.device(device))
    system.training_step(1, 1.0).losses["mse"].backward()
    assert system.vec.grad is not None
    return system.vec.grad


def test_textual_inversion_channels_last_passes_the_rule(store) -> None:
    a = compare(_ti_vector_gradient(store), _ti_vector_gradient(store, channels_last=True))
    assert a.cosine > 1 - 1e-6 and a.norm_error < 1e-5, a


def _ti_compiled_agreement(store, device: str) -> Agreement:
    eager = _ti_vector_gradient(store, device)
    torch._dynamo.reset()
    return compare(eager, _ti_vector_gradient(store, device, compile_unet=True, channels_last=True))


def test_textual_inversion_is_compiled_on_cuda_only(store, caplog) -> None:
    """On the CPU the step keeps the eager UNet (see the next test) and says so: the same gradient."""
    with caplog.at_level("WARNING"):
        a = compare(_ti_vector_gradient(store), _ti_vector_gradient(store, compile_unet=True))
    assert a.cosine == pytest.approx(1.0, abs=1e-12) and a.norm_error == 0.0
    assert "compiled on CUDA only" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(
    torch.__version__.startswith("2.13."),
    reason="known wrong on torch 2.13 (the xfail below, found on 2.13.0): this canary's outcome can change only "
    "with torch, so it runs (about a minute of Inductor compiling on 2 cores) under any other torch version",
)
@pytest.mark.xfail(
    strict=True,
    reason="Inductor's CPU (C++) code for the UNet's backward to its text context is wrong in torch 2.13: "
    "gradient cosine 0.80 on the tiny SD UNet, its forward right to 1e-7, the same graph through "
    "aot_eager_decomp_partition right to 1e-8. A pass here means torch fixed it: the CUDA-only guard of "
    "TextualInversionSystem._fast_unet can go.",
)
def test_inductor_cpu_backward_of_the_unet_to_its_context(store, tmp_path, monkeypatch) -> None:
    from animate124.models.loaders import load_sd

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    unet = load_sd(store).unet.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([100, 700])
    context = torch.randn(2, 77, 32, generator=gen)

    def grad(net) -> torch.Tensor:
        c = context.clone().requires_grad_(True)
        (net(x, t, encoder_hidden_states=c).sample ** 2).mean().backward()
        return c.grad

    a = compare(grad(unet), grad(torch.compile(unet, dynamic=False)))
    assert a.passes(), a


@pytest.mark.gpu
def test_textual_inversion_compiled_step_passes_the_rule_on_the_gpu(store, tmp_path, monkeypatch) -> None:
    """The same with Inductor's CUDA (Triton) code: the tiny models on the GPU, fp32."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    a = _ti_compiled_agreement(store, "cuda")
    print(f"invert compiled + channels-last: cosine {a.cosine:.6f}, norm error {a.norm_error:.2e}")
    assert prior_ran_compiled(a) and a.passes(), a


def test_fused_adamw_only_on_cuda(store) -> None:
    from animate124.guidance.textual_inversion import TextualInversionSystem, TIConfig
    from animate124.models.loaders import load_sd

    cfg = TIConfig(
        placeholder="<t>", initializer="cat", steps=1, lr=1e-3, batch_size=1, resolution=32, augment=False,
        upstream_aug_range_bug=False, seed=0, checkpoint_every=10, mixed_precision=False, fused_adamw=True,
    )  # fmt: skip
    opt = TextualInversionSystem(load_sd(store), torch.rand(3, 40, 40), cfg, torch.device("cpu")).optimizer()
    assert not opt.defaults.get("fused")  # the CPU keeps the plain step


# ---------------------------------------------------------------------------------------------- GPU, full size


def _configs() -> Path | None:
    for p in (os.environ.get("A124_HF_CONFIGS", ""), REPO / ".device" / "hf-configs",
              REPO / ".." / "shared" / "data" / "hf-configs"):  # fmt: skip
        if p and (Path(p) / "stable-diffusion-v1-5--stable-diffusion-v1-5").is_dir():
            return Path(p)
    return None


GPU_VARIANTS = tuple(
    v for v in os.environ.get("A124_GPU_AGREEMENT", "graphs,channels_last,fp8").split(",") if v
)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", GPU_VARIANTS)
@pytest.mark.parametrize("name", PRIORS)
def test_full_size_priors_pass_the_rule_on_the_gpu(name: str, variant: str) -> None:
    """One guidance call as the stages make it (fp16 networks, fp32 VAE under fp16 autocast, the VAE recompute),
    full-size random-weight networks: eager against ``variant`` (``graphs``, ``channels_last``, ``compile``,
    ``compile_cl`` = max-autotune + channels-last, ``fp8``)."""
    configs = _configs()
    if configs is None:
        pytest.skip("no hf-configs (A124_HF_CONFIGS, .device/hf-configs or ../shared/data/hf-configs)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from guidance_variants import agreement_of

    a = agreement_of(name, variant, configs)
    bound = FP8_COSINE_MIN if variant == "fp8" else COSINE_MIN
    norm = 0.05 if variant == "fp8" else NORM_ERROR_MAX
    print(f"{name} {variant}: cosine {a.cosine:.6f}, norm error {a.norm_error:.2e}")
    assert a.passes(cosine=bound, norm_error=norm), a
