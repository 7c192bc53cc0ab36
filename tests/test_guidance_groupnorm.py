"""Fused group norm (+ SiLU) of the VAE encoders (``guidance/groupnorm.py``, ``run.vae_fused_norm``).

CPU: the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) in a subprocess, against
``F.group_norm`` in float64 and, inside the tiny VAE, against the plain path as CUDA autocast runs it (the
norms in fp32, every convolution in fp16). GPU: gpu-marked tests at the refine stage's shapes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_triton import compile_for_sm90, needs_cuda, needs_triton, run_interpreted

from animate124.guidance.groupnorm import (
    FusedGroupNorm,
    fused_calls,
    fused_norm_calls,
    use_fused_unet_norms,
    use_fused_vae_norms,
)


def _reference(x: torch.Tensor, groups: int, w: torch.Tensor, b: torch.Tensor, act: bool) -> torch.Tensor:
    y = F.group_norm(x.double(), groups, w.double(), b.double(), 1e-6)
    return F.silu(y) if act else y


def _kernel_case(shape, groups, act, layout="nchw", dtype=torch.float32, max_partials=None) -> dict:
    """Forward and input-gradient errors of the fused op against float64 (relative to the largest entry)."""
    import animate124.guidance.groupnorm as G

    gen = torch.Generator().manual_seed(sum(shape) + groups)
    x = torch.randn(*shape, generator=gen) * 1.7 + 0.6
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":  # the attention block's [N, C, HW] view of an [N, HW, C] tensor
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    elif (
        layout == "temporal"
    ):  # the video UNet's temporal transformer: [B, C, F, H, W] permuted from [B, F, C, H, W]
        x = x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    x = x.to(dtype).requires_grad_(True)
    c = shape[1]
    w = torch.randn(c, generator=gen) * 0.5 + 1.0
    b = torch.randn(c, generator=gen) * 0.3
    go = torch.randn(*shape, generator=gen).to(dtype)
    old = G.MAX_PARTIALS
    if max_partials is not None:
        G.MAX_PARTIALS = max_partials
    try:
        y = G.fused_group_norm(x, groups, w, b, 1e-6, act, dtype)
        (gx,) = torch.autograd.grad(y, x, go)
    finally:
        G.MAX_PARTIALS = old
    x64 = x.detach().double().requires_grad_(True)
    ref = _reference(x64, groups, w, b, act)
    (g64,) = torch.autograd.grad(ref, x64, go.double())
    out = {
        "fwd": ((y.double() - ref).abs().max() / ref.abs().max()).item(),
        "grad": ((gx.double() - g64).abs().max() / g64.abs().max()).item(),
        "same_strides": y.stride() == x.stride() and gx.stride() == x.stride(),
        "contiguous": y.is_contiguous() and gx.is_contiguous(),
        "dtype_ok": y.dtype == dtype and gx.dtype == dtype,
    }
    if dtype == torch.float16:  # the plain path rounds the fp32 result to fp16 once: at most one ulp off
        ref16 = ref.to(torch.float16)
        ulp = torch.finfo(torch.float16).eps * ref16.double().abs().clamp_min(2**-14)
        out["ulps"] = ((y.double() - ref16.double()).abs() / ulp).max().item()
        out["equal_share"] = (y == ref16).double().mean().item()
    return out


def _autocast_plain(vae, part: str | None = "encoder"):
    """``vae`` with its encoder's (``part`` None: all its) norms computing as under CUDA autocast (fp32 norm and
    SiLU)."""

    class Fp32Norm(torch.nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.norm = norm

        def forward(self, x):
            return F.group_norm(
                x.float(), self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps
            )

    ref = copy.deepcopy(vae)
    for mod in list((getattr(ref, part) if part else ref).modules()):
        for name, child in list(mod.named_children()):
            if type(child) is torch.nn.GroupNorm:
                setattr(mod, name, Fp32Norm(child))
    return ref


def _fused_vs_plain(forward, plain, fused, exact, go: torch.Tensor, key: str) -> dict:
    """``forward(model) -> (output, input leaf)`` for the CUDA-autocast plain path and the fused one (both under
    CPU fp16 autocast, the gradients taken outside it) and for ``exact`` in fp32: the fused path's largest
    relative difference from the plain one (``key``, ``grad``) and each path's distance from fp32."""
    outs = {}
    for name, model in (("plain", plain), ("fused", fused)):
        with torch.autocast("cpu", dtype=torch.float16):
            y, leaf = forward(model)
        (g,) = torch.autograd.grad(y.float(), leaf, go)
        outs[name] = (y.float(), g)
    y32, leaf = forward(exact)  # fp32 throughout: the exact side
    (g32,) = torch.autograd.grad(y32, leaf, go)
    (yp, gp), (yf, gf) = outs["plain"], outs["fused"]
    res = {
        key: ((yf - yp).abs().max() / yp.abs().max()).item(),
        "grad": ((gf - gp).abs().max() / gp.abs().max()).item(),
    }
    for name, (y, g) in outs.items():
        res[f"{name}_{key}_vs_fp32"] = ((y - y32).norm() / y32.norm()).item()
        res[f"{name}_grad_vs_fp32"] = ((g - g32).norm() / g32.norm()).item()
    return res


def _vae_case() -> dict:
    """The tiny VAE encoder under (CPU) fp16 autocast: fused norms against the CUDA-autocast plain path."""
    from animate124.models.tiny import _tiny_vae

    torch.manual_seed(0)
    vae = _tiny_vae().eval().requires_grad_(False)
    plain = _autocast_plain(vae)
    fused = copy.deepcopy(vae)
    replaced = use_fused_vae_norms(fused)
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    go = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    res = _fused_vs_plain(lambda m: (m.encode(x).latent_dist.parameters, x), plain, fused, vae, go, "moments")
    return {"replaced": replaced, "calls": fused_norm_calls(fused), **res}


def _unet_case() -> dict:
    """The tiny SD UNet (SD's and ControlNet's blocks) under (CPU) fp16 autocast, fused norms against the
    CUDA-autocast plain path: the output and, as the textual inversion needs it, the gradient to the text
    context."""
    from animate124.models.tiny import TINY_WIDTH, _tiny_unet2d

    torch.manual_seed(0)
    unet = _tiny_unet2d().eval().requires_grad_(False)
    plain = _autocast_plain(unet, None)
    fused = copy.deepcopy(unet)
    norms = sum(type(m) is torch.nn.GroupNorm for m in unet.modules())
    replaced = use_fused_unet_norms(fused)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.full((2,), 500)
    context = torch.randn(2, 7, TINY_WIDTH, generator=gen)
    go = torch.randn(2, 4, 8, 8, generator=gen)

    def forward(model):
        ctx = context.clone().requires_grad_(True)
        return model(x, t, encoder_hidden_states=ctx).sample, ctx

    res = _fused_vs_plain(forward, plain, fused, unet, go, "out")
    return {"norms": norms, "replaced": replaced, "calls": fused_calls(fused), **res}


KERNEL_CASES = {
    "nchw_silu": dict(shape=(2, 8, 5, 7), groups=2, act=True),  # CG=4, a short tile
    "nchw_plain": dict(shape=(2, 8, 5, 7), groups=2, act=False),
    "cg3": dict(shape=(1, 12, 9, 16), groups=4, act=True),  # CG=3: padded channel block
    "channels_last": dict(shape=(2, 32, 8, 12), groups=8, act=True, layout="channels_last"),
    "transposed3d": dict(shape=(2, 16, 100), groups=4, act=False, layout="transposed"),
    "temporal5d": dict(shape=(1, 8, 3, 4, 5), groups=2, act=False, layout="temporal"),
    "many_tiles": dict(shape=(1, 8, 64, 80), groups=2, act=True, max_partials=2),  # 5 tiles, 3 per program
    "fp16": dict(shape=(2, 16, 24, 40), groups=4, act=True, dtype=torch.float16),
    "fp16_cl": dict(shape=(1, 32, 16, 16), groups=8, act=False, dtype=torch.float16, layout="channels_last"),
}


def _interp_checks() -> dict:
    out = {k: _kernel_case(**v) for k, v in KERNEL_CASES.items()}
    out["vae"] = _vae_case()
    # the 2D UNet only: the 3D one's 58 norms cost a minute and a half in the interpreter; its blocks are the
    # same kernels (its 5D temporal layout: ``temporal5d``), its patch sites are checked bit for bit below
    out["unet2d"] = _unet_case()
    return out


@pytest.fixture(scope="module")
def interp_results() -> dict:
    return run_interpreted("test_guidance_groupnorm")


@needs_triton
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_fused_group_norm_matches_float64(interp_results, case):
    r = interp_results[case]
    # a layout whose spatial dims do not collapse to one stride (temporal5d) is read from a contiguous copy
    assert (r["contiguous"] if case == "temporal5d" else r["same_strides"]) and r["dtype_ok"], r
    if "ulps" in r:  # fp16 in and out: the plain path's single rounding, up to the fp32 statistics
        assert r["ulps"] <= 1.0 and r["equal_share"] > 0.99, r
        assert r["grad"] < 2e-3, r
    else:
        assert r["fwd"] < 2e-6 and r["grad"] < 2e-5, r


@needs_triton
def test_fused_norms_in_the_tiny_vae_match_the_autocast_plain_path(interp_results):
    r = interp_results["vae"]
    # 4 resnet blocks × 2 in the down path, mid block 2 resnets × 2, its attention, the output norm
    assert r["replaced"] == 8 + 4 + 1 + 1, r
    assert r["calls"] == r["replaced"], r  # every patched norm took the fused path
    # fp16 convolutions either side: single-ulp differences of fp16 roundings propagate, nothing more
    assert r["moments"] < 5e-3 and r["grad"] < 5e-3, r
    # and the fused path is as close to the fp32 encoder as the autocast plain path is
    for k in ("moments", "grad"):
        assert r[f"fused_{k}_vs_fp32"] < 1.25 * r[f"plain_{k}_vs_fp32"] + 1e-5, r


@needs_triton
def test_fused_norms_in_the_tiny_unet_match_the_autocast_plain_path(interp_results):
    """``run.unet_fused_norm``: every group norm of the tiny SD UNet is replaced and takes the fused
    path; under fp16 autocast the output and the gradient to the text context agree with the plain path (norms
    and SiLU in fp32) as the VAE's do, and are as close to the fp32 network as the plain path is."""
    r = interp_results["unet2d"]
    assert r["replaced"] == r["norms"] > 0 and r["calls"] == r["replaced"], r
    assert r["out"] < 5e-3 and r["grad"] < 5e-3, r
    for k in ("out", "grad"):
        assert r[f"fused_{k}_vs_fp32"] < 1.25 * r[f"plain_{k}_vs_fp32"] + 1e-5, r


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_patched_unet_without_autocast_is_bit_identical_to_the_plain_one(kind) -> None:
    """Outside CUDA autocast the patched UNet runs the plain ops (the time embedding's SiLU now inside
    ``time_emb_proj``): output and context gradient bit-identical; a second patch replaces nothing."""
    from animate124.models.tiny import TINY_WIDTH, _tiny_unet2d, _tiny_unet3d

    torch.manual_seed(0)
    unet = (_tiny_unet2d() if kind == "2d" else _tiny_unet3d()).eval().requires_grad_(False)
    patched = copy.deepcopy(unet)
    assert use_fused_unet_norms(patched) == sum(type(m) is torch.nn.GroupNorm for m in unet.modules()) > 0
    assert use_fused_unet_norms(patched) == 0
    shape = (2, 4, 8, 8) if kind == "2d" else (1, 4, 4, 8, 8)
    x, t = torch.randn(*shape), torch.full((shape[0],), 500)
    ctx = torch.randn(shape[0], 7, TINY_WIDTH, requires_grad=True)
    a = unet(x, t, encoder_hidden_states=ctx).sample
    b = patched(x, t, encoder_hidden_states=ctx).sample
    assert torch.equal(a, b)
    assert torch.equal(torch.autograd.grad(a.sum(), ctx)[0], torch.autograd.grad(b.sum(), ctx)[0])


def test_run_unet_fused_norm_reaches_the_priors_and_the_inversion(tmp_path, monkeypatch) -> None:
    """``_finish_prior`` patches the prior's UNet and ControlNet, and the invert stage its UNet, only when on."""
    from types import SimpleNamespace

    import animate124.guidance.groupnorm as G
    from animate124.config import resolve_config
    from animate124.models.tiny import _tiny_unet2d
    from animate124.project import Project
    from animate124.stages.build import _finish_prior
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess

    for on in (True, False):
        cfg = resolve_config("tiny", None, {"run": {"unet_fused_norm": on, "cuda_graphs": False}}, [])
        prior = SimpleNamespace(unet=_tiny_unet2d().eval(), controlnet=_tiny_unet2d().eval())
        _finish_prior(cfg, prior, "controlnet")
        for net in (prior.unet, prior.controlnet):
            assert sum(isinstance(m, FusedGroupNorm) for m in net.modules()) == (21 if on else 0)
    patched: list = []
    monkeypatch.setattr(G, "use_fused_unet_norms", lambda net: patched.append(type(net).__name__) or 0)
    toy = Path(__file__).resolve().parents[1] / "examples" / "toy.png"
    for on in (False, True):
        cfg = resolve_config("tiny", None, {"run": {"unet_fused_norm": on}, "invert": {"steps": 1}}, [])
        project = Project(tmp_path / f"p{on}")
        run_preprocess(project, cfg, toy)
        patched.clear()
        run_invert(project, cfg, show_progress=False)
        assert patched == (["UNet2DConditionModel"] if on else []), (on, patched)


def test_patched_vae_without_autocast_is_bit_identical_to_the_plain_one() -> None:
    """Outside CUDA autocast the patched modules run ``F.group_norm`` and ``F.silu`` as the plain blocks do."""
    from animate124.models.tiny import _tiny_vae

    torch.manual_seed(0)
    vae = _tiny_vae().eval().requires_grad_(False)
    patched = copy.deepcopy(vae)
    assert use_fused_vae_norms(patched) == 14
    assert use_fused_vae_norms(patched) == 0  # already patched
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    for ctx in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", dtype=torch.bfloat16)):
        with ctx:
            a = vae.encode(x).latent_dist.parameters
            b = patched.encode(x).latent_dist.parameters
        assert torch.equal(a, b)
        assert torch.equal(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0])
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert fused_norm_calls(patched) == 0
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in patched.decoder.modules()) > 0  # decoder untouched


def test_fused_module_falls_back_for_trainable_weights() -> None:
    norm = torch.nn.GroupNorm(2, 8)
    mod = FusedGroupNorm(norm, act=True)
    x = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(mod(x), F.silu(norm(x)), rtol=0, atol=0)
    assert mod._fused_dtype(x) is None  # CPU, no autocast, trainable weights


def test_run_vae_fused_norm_reaches_the_prior_vae() -> None:
    from types import SimpleNamespace

    from animate124.config import resolve_config
    from animate124.models.tiny import _tiny_vae
    from animate124.stages.build import _finish_prior

    for on in (True, False):
        cfg = resolve_config("tiny", None, {"run": {"vae_fused_norm": on, "cuda_graphs": False}}, [])
        prior = SimpleNamespace(vae=_tiny_vae().eval())
        _finish_prior(cfg, prior, "sd")
        n = sum(isinstance(m, FusedGroupNorm) for m in prior.vae.encoder.modules())
        assert n == (14 if on else 0)


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize(
    "shape,groups,layout",
    [((2, 128, 1024, 1024), 32, "nchw"), ((16, 512, 32, 32), 32, "nchw"), ((2, 256, 512, 512), 32, "cl")],
)
def test_fused_group_norm_gpu_refine_shapes(shape, groups, layout) -> None:
    """fp16 in and out at the refine / ModelScope VAE shapes: as close to float64 as the autocast plain path."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float16) * 2 + 0.5
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    c = shape[1]
    w = torch.randn(c, device="cuda", generator=gen) * 0.5 + 1
    b = torch.randn(c, device="cuda", generator=gen) * 0.3
    go = torch.randn(*shape, device="cuda", generator=gen, dtype=torch.float16)
    from animate124.guidance.groupnorm import fused_group_norm

    y = fused_group_norm(x, groups, w, b, 1e-6, True, torch.float16)
    (gx,) = torch.autograd.grad(y, x, go)
    with torch.autocast("cuda", dtype=torch.float16):
        p = F.silu(F.group_norm(x, groups, w, b, 1e-6))
    (gp,) = torch.autograd.grad(p, x, go)
    p16 = p.detach().to(torch.float16)
    with torch.no_grad():
        exact = F.silu(F.group_norm(x.detach().double(), groups, w.double(), b.double(), 1e-6))
        e_fused = (y.double() - exact).abs().max().item()
        e_plain = (p16.double() - exact).abs().max().item()
    # both are one fp16 rounding of an fp32 result: as close to float64 as each other, mostly bit-equal
    assert e_fused <= 1.01 * e_plain + 1e-6, (e_fused, e_plain)
    assert (y == p16).float().mean().item() > 0.99
    err = ((gx.float() - gp.float()).abs().max() / gp.float().abs().max()).item()
    assert err < 2e-3, err
    assert y.stride() == x.stride() and gx.stride() == x.stride()


@needs_triton
def test_kernels_compile_for_sm90_without_a_gpu() -> None:
    """Every kernel lowers to an sm_90 cubin with Triton's own compiler (no GPU needed), so a change that
    the CPU interpreter accepts but the GPU compiler would reject fails here."""
    from animate124.guidance import gn_kernels as K

    halves = {"X", "Y", "DY", "DX"}
    floats = {"PCNT", "PMEAN", "PM2", "MEAN", "RSTD", "W", "B", "PSUM", "SUMS"}
    names = (
        "gn_stats_kernel",
        "gn_finalize_kernel",
        "gn_apply_kernel",
        "gn_bwd_partial_kernel",
        "gn_bwd_apply_kernel",
    )
    for name in names:
        fn = getattr(K, name)
        values = {"ACT": True, "BLOCK_C": 4, "BLOCK_S": 1024, "BLOCK_P": 128}
        ce = {a: v for a, v in values.items() if a in fn.arg_names}
        types = {a: "*fp16" if a in halves else "*fp32" if a in floats else "fp32" if a == "eps" else "i32"
                 for a in fn.arg_names}  # fmt: skip
        k = compile_for_sm90(fn, ce, types)
        assert "cubin" in k.asm, name
