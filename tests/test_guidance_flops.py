"""``guidance/flops.py``: the FLOP counter against a hand count, and each prior's counted call (meta twins of its
networks) against the FLOPs its real call runs, forward and backward, with and without the VAE recompute."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_guidance import make_controlnet, make_sd, make_video, make_zero123, still_views
from torch.nn.attention import SDPBackend, sdpa_kernel

from animate124.guidance.flops import CallFlops, call_flops, count_flops, invert_step_flops, meta_twin

REPO = Path(__file__).resolve().parents[1]


class ConvAttention(torch.nn.Module):
    """conv 3 -> 8 (3×3, padding 1), then the 64 pixels as tokens: q, k, v (2 heads of 4), attention, out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.qkv = torch.nn.Linear(8, 24)
        self.out = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)  # [B, 64, 8]
        q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in self.qkv(h).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.out(a)


def test_count_flops_matches_a_hand_count_forward_and_backward() -> None:
    b, tokens = 2, 64
    conv = 2 * b * 8 * 64 * 3 * 9  # 2 · N · C_out · H·W · C_in · k²
    qkv = 2 * b * tokens * 8 * 24
    attention = 2 * (2 * b * 2 * tokens * tokens * 4)  # QKᵀ and PV: 2 · B·heads · L · S · d each
    out = 2 * b * tokens * 8 * 8
    forward = conv + qkv + attention + out
    # frozen weights, input gradient only: each conv / linear once more (its transpose), attention's four
    # products (dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q)
    backward = conv + qkv + 2 * attention + out
    torch.manual_seed(0)
    net = ConvAttention().requires_grad_(False)
    twin = meta_twin(net)
    assert next(twin.parameters()).device.type == "meta" and not next(twin.parameters()).requires_grad
    assert next(net.parameters()).device.type == "cpu"  # the network itself is untouched
    x = torch.empty(b, 3, 8, 8, device="meta")
    assert count_flops(lambda: twin(x)) == forward
    xg = x.clone().requires_grad_(True)
    y = twin(xg)
    assert count_flops(lambda: y.sum().backward()) == backward
    # the same on real CPU tensors (attention on the math path, as the meta device runs it)
    xr = torch.rand(b, 3, 8, 8, requires_grad=True)
    with sdpa_kernel([SDPBackend.MATH]):
        assert count_flops(lambda: net(xr).sum().backward()) == forward + backward


def _real_call_flops(prior, frames: int, condition: bool) -> int:
    gen = torch.Generator().manual_seed(3)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen) if condition else None
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    images = torch.rand(1, frames, 3, 16, 16, generator=gen, requires_grad=True)

    def call() -> None:
        out = prior(images, views, step=0, generator=torch.Generator().manual_seed(11))
        out.losses[prior.loss_key].backward()

    with sdpa_kernel([SDPBackend.MATH]):
        return count_flops(call)


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("which", ["sd", "zero123", "video", "video_grad_frames", "controlnet"])
def test_call_flops_is_what_the_real_call_runs(store, which: str, checkpoint: bool) -> None:
    """The count from the networks' shapes equals the FLOPs the tiny prior's call really runs (forward +
    backward to the images; with the VAE recompute in backward when ``checkpoint``)."""
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    frames, condition = 2, False
    if which == "sd":  # the view-interpolated text (< 1 MFLOP at full size) is not counted
        prior = make_sd(load_sd(store), view_dependent=False, checkpoint_encoder=checkpoint)
    elif which == "zero123":
        prior = make_zero123(
            load_zero123(store), reference=torch.rand(1, 3, 32, 32), checkpoint_encoder=checkpoint
        )
    elif which.startswith("video"):
        k = 2 if which == "video_grad_frames" else 0
        prior = make_video(load_video(store), vae_grad_frames=k, checkpoint_encoder=checkpoint)
        frames = 4
    else:
        prior = make_controlnet(load_sd(store), load_controlnet(store), checkpoint_encoder=checkpoint)
        frames, condition = 4, True
    counted = call_flops(prior, (1, frames, 3, 16, 16))
    assert isinstance(counted, CallFlops)
    assert counted.total == _real_call_flops(prior, frames, condition)
    assert counted.denoise > 0 and counted.encode > 0 and counted.encode_backward > 0
    assert (counted.recompute > 0) is checkpoint
    if which == "video_grad_frames":  # 2 of 4 frames get the backward (and its recompute)
        full = call_flops(
            make_video(load_video(store), vae_grad_frames=0, checkpoint_encoder=checkpoint), (1, 4)
        )
        assert counted.encode == full.encode and 2 * counted.encode_backward == full.encode_backward


def test_invert_step_flops_is_what_the_step_runs(store) -> None:
    from animate124.guidance.textual_inversion import TextualInversionSystem, TIConfig
    from animate124.models.loaders import load_sd

    comps = load_sd(store)
    cfg = TIConfig(
        placeholder="<t>", initializer="cat", steps=1, lr=1e-3, batch_size=2, resolution=64, augment=False,
        upstream_aug_range_bug=False, seed=0, checkpoint_every=10, mixed_precision=False,
    )  # fmt: skip
    system = TextualInversionSystem(comps, torch.rand(3, 70, 80), cfg, torch.device("cpu"))

    def step() -> None:
        system.training_step(1, 1.0).losses["mse"].backward()

    with sdpa_kernel([SDPBackend.MATH]):
        real = count_flops(step)
    counted = invert_step_flops(comps, 2, 64)
    assert counted["total"] == real == counted["vae"] + counted["text"] + counted["unet"]
    assert system.vec.grad is not None and system.vec.grad.abs().sum() > 0


@pytest.mark.slow
def test_full_size_counts(shared_data) -> None:
    """The full-size networks from the real configs, on the meta device (no weights): the UNet forwards agree
    with an earlier, independent count (``FlopCounterMode`` on meta tensors, shared/notes/device.md: SD b2 64²
    1.61, Zero123 b2 32² 0.35, ModelScope b2 16×32² 9.77, ControlNet + SD b4 128² 25.6 TFLOP)."""
    configs = shared_data / "hf-configs"
    if not (configs / "ali-vilab--text-to-video-ms-1.7b").is_dir():
        pytest.skip("hf-configs not present")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_guidance as bg

    meta = torch.device("meta")
    expected = {"sd": 1.61, "zero123": 0.35, "video": 9.77, "controlnet": 25.6}
    for name, denoise in expected.items():
        comp, cn = bg.build_full(name, configs, meta, torch.float16)
        guid, _ = bg.make_call(name, comp, cn, False, meta, vae_checkpoint=True)
        frames = 16 if name in ("video", "controlnet") else 1
        f = call_flops(guid, (1, frames, 3, 128, 128))
        assert f.denoise / 1e12 == pytest.approx(denoise, rel=1e-2), name  # as rounded there
        assert f.recompute == f.encode  # every encoded image gets the gradient
        assert 0.95 < f.encode_backward / f.encode < 1.15, name  # input gradients: about one more forward


# ---------------------------------------------------------------------------------------------- run.profile


def test_timers_report_the_counted_work_and_its_rate() -> None:
    from animate124.engine.timing import Timers

    off = Timers(False)
    off.add_flops("sd", 1e12)
    assert off.flops_summary(1) == {}
    timers = Timers(True)
    for _ in range(3):
        timers.add_flops("sd", 2.5e12)
        with timers("sd"):
            torch.ones(64, 64) @ torch.ones(64, 64)
    timers.add_flops("backward", 1e12)  # told its work, never timed: no rate
    got = timers.flops_summary(steps=2)
    secs = timers.seconds["sd"]
    assert got["sd"] == {
        "tflop_per_step": 3.75,
        "tflop_per_call": 2.5,
        "tflop_s": float(f"{7.5 / secs:.6g}"),
    }
    assert got["backward"] == {"tflop_per_step": 0.5, "tflop_per_call": 0.0, "tflop_s": 0.0}
    timers.reset()
    assert timers.flops_summary(1) == {}


@pytest.mark.slow
def test_the_static_stage_profile_reports_each_priors_flops(store, tmp_path, monkeypatch) -> None:
    """``run.profile``: the manifest's ``flops_by_part`` holds each prior's counted forward per call (the count
    of the prior the stage built), the VAE backwards as work of ``backward``, and rates from the part times."""
    from animate124.config import resolve_config
    from animate124.guidance.base import DiffusionPrior
    from animate124.project import Project
    from animate124.stages import build
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess
    from animate124.stages.static import run_static

    counted: dict[str, object] = {}
    orig = DiffusionPrior.call_flops

    def spy(self, shape):
        counted[self.name] = orig(self, shape)
        return counted[self.name]

    monkeypatch.setattr(DiffusionPrior, "call_flops", spy)
    monkeypatch.setattr(build, "_store", lambda cfg: store)
    cfg = resolve_config(
        "tiny", None, {"static": {"prompt": "a toy", "iters": 4}, "run": {"profile": True}}, []
    )
    p = Project(tmp_path / "p")
    run_preprocess(p, cfg, REPO / "examples" / "toy.png")
    run_invert(p, cfg, show_progress=False)
    metrics = run_static(p, cfg, show_progress=False).metrics
    work, ms = metrics["flops_by_part"], metrics["ms_per_step"]
    assert set(counted) == {"sd", "zero123"}
    for name, f in counted.items():
        assert work[name]["tflop_per_call"] == pytest.approx(f.forward / 1e12, rel=1e-5), name
        calls = work[name]["tflop_per_step"] * metrics["steps"] / work[name]["tflop_per_call"]
        assert calls == pytest.approx(round(calls), abs=1e-4) and round(calls) >= 1
        rate = work[name]["tflop_per_step"] / (ms[name] / 1e3)
        assert work[name]["tflop_s"] == pytest.approx(rate, rel=1e-3), name
    backward = sum(
        work[n]["tflop_per_step"] / work[n]["tflop_per_call"] * f.backward for n, f in counted.items()
    )
    assert work["backward"]["tflop_per_step"] == pytest.approx(backward / 1e12, rel=1e-4)
    for k in ("tflop_per_step", "tflop_per_call"):  # the same work, in the half that does it (a faster rate)
        assert work["backward_priors"][k] == work["backward"][k]
    assert work["backward_priors"]["tflop_s"] > work["backward"]["tflop_s"]
    # the step's backward split where the rendered images' gradient arrives (issue 26: the NeRF side inside a
    # stage): the priors' half, then the render's; ms_per_step rounds each to 0.01 ms
    assert ms["backward_priors"] + ms["backward_nerf"] == pytest.approx(ms["backward"], abs=0.02)
    assert ms["backward_priors"] > 0 and ms["backward_nerf"] > 0
    from animate124.engine.timing import Timers

    nerf = [p for p in Timers.NERF_PARTS if p in ms]
    assert {"render", "backward_nerf", "optimizer"} <= set(nerf), ms
    assert ms["nerf_side"] == pytest.approx(sum(ms[p] for p in nerf), abs=0.05)
