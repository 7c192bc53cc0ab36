"""Speed and peak memory of one guidance call per prior at paper settings (SPEC 3.7, 3.8, 5.2, 6).

A guidance call = forward (VAE encode with grad, UNet CFG batch under no_grad) + backward of the loss
to the rendered images. Models are FULL-SIZE and randomly initialised from the real configs
(``--configs``, default ``../shared/data/hf-configs``), built directly on the GPU in fp16. Random
weights give the same cost as real ones.

    python benchmarks/bench_guidance.py --configs .device/hf-configs --out bench_guidance.json
    python benchmarks/bench_guidance.py --compile --channels-last --out ...
    python benchmarks/bench_guidance.py --cuda-graphs --vae-checkpoint --out ...   # the stages' defaults
    python benchmarks/bench_guidance.py --tiny --out /tmp/g.json          # CPU smoke test (tiny models)
    python benchmarks/bench_guidance.py --stages --variant compile_ma_cl --dense --agreement \
        --calls-json guidance_calls.json --out ...                        # issue 27: one variant, its record

Every result carries the call's exact FLOPs (``guidance/flops.py``: UNet on the CFG batch, VAE encoder forward,
backward and recompute), so ``achieved TFLOP/s`` = TFLOP / median time and, with ``--dense`` (the card's bf16
8192³ matmul rate measured in the same run), ``share of peak``. ``--agreement`` also gives the gradient
agreement of the measured way with the eager networks (``guidance/agreement.py``: cosine, norm error), on a
fixed seed. ``--variant`` (``guidance_variants.py``) names the way the UNet/ControlNet run.

Priors: SD 1.5 (render 128² -> 512²), Zero123-XL (-> 256²), ModelScope (16 × 128² -> 16 × 256²),
ControlNet tile + SD (2 of 16 frames -> 1024²), each called through the one guidance interface
``prior(images, views, step=...)`` with the paper's settings (SPEC 12). Prints a table and writes JSON
to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRIORS = ("sd", "zero123", "video", "controlnet")
SD_DIR = "stable-diffusion-v1-5--stable-diffusion-v1-5"
Z123_DIR = "bennyguo--zero123-xl-diffusers"
MS_DIR = "ali-vilab--text-to-video-ms-1.7b"
CN_DIR = "lllyasviel--control_v11f1e_sd15_tile"


def _diff(cls, folder: Path, device, dtype):
    with torch.device(device):
        m = cls.from_config(cls.load_config(str(folder)))
    return m.to(dtype).eval().requires_grad_(False)


def _clip_text(folder: Path, device, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        m = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder)))
    return m.to(dtype).eval().requires_grad_(False)


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def _scheduler(folder: Path):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(DDIMScheduler.load_config(str(folder)))


def build_full(prior: str, cfg_dir: Path, device, dtype, vae_dtype=None):
    """Random-init full-size components for one prior from the real configs (the VAE in ``vae_dtype``,
    default ``dtype``; the stages keep it in fp32 under fp16 autocast)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNet3DConditionModel

    from animate124.models.loaders import SDComponents, VideoComponents, Zero123Components

    if prior in ("sd", "controlnet"):
        d = cfg_dir / SD_DIR
        comp = SDComponents(
            vae=_diff(AutoencoderKL, d / "vae", device, vae_dtype or dtype),
            unet=_diff(UNet2DConditionModel, d / "unet", device, dtype),
            text_encoder=_clip_text(d / "text_encoder", device, dtype),
            tokenizer=_tokenizer(d / "tokenizer"),
            scheduler=_scheduler(d / "scheduler"),
        )
        if prior == "controlnet":
            return comp, _diff(ControlNetModel, cfg_dir / CN_DIR, device, dtype)
        return comp, None
    if prior == "zero123":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        d = cfg_dir / Z123_DIR
        with torch.device(device):
            enc = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(str(d / "image_encoder")))
            dim = enc.config.projection_dim
            proj = torch.nn.Linear(dim + 4, dim)
        comp = Zero123Components(
            vae=_diff(AutoencoderKL, d / "vae", device, vae_dtype or dtype),
            unet=_diff(UNet2DConditionModel, d / "unet", device, dtype),
            image_encoder=enc.to(dtype).eval().requires_grad_(False),
            projection=proj.to(dtype).eval().requires_grad_(False),
            scheduler=_scheduler(d / "scheduler"),
            layout="bennyguo",
        )
        return comp, None
    if prior == "video":
        d = cfg_dir / MS_DIR
        comp = VideoComponents(
            vae=_diff(AutoencoderKL, d / "vae", device, vae_dtype or dtype),
            unet=_diff(UNet3DConditionModel, d / "unet", device, dtype),
            text_encoder=_clip_text(d / "text_encoder", device, dtype),
            tokenizer=_tokenizer(d / "tokenizer"),
            scheduler=_scheduler(d / "scheduler"),
            name="modelscope",
            native_size=(256, 256),
        )
        return comp, None
    raise ValueError(prior)


def build_tiny(prior: str, cache: Path):
    """Tiny factory models through the real loaders (CPU smoke test)."""
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123
    from animate124.models.testing import tiny_store

    store = tiny_store(cache)
    if prior == "sd":
        return load_sd(store), None
    if prior == "zero123":
        return load_zero123(store), None
    if prior == "video":
        return load_video(store), None
    return load_sd(store), load_controlnet(store)


def make_call(
    prior: str, comp, cn, tiny: bool, device, vae_checkpoint: bool = False, autocast: bool = False,
    keep_pixels: int = 0,
):  # fmt: skip
    """Return (guidance, callable running one forward + backward) at the paper's settings (SPEC 12); with
    ``autocast`` the forward runs under fp16 autocast and the backward after it, as in the stages; with
    ``vae_checkpoint`` the encoder is recomputed in backward unless the call's pixels fit ``keep_pixels``
    (``static.vae_keep_pixels``)."""
    from animate124.guidance.common import CHECKPOINT_PIXELS
    from animate124.guidance.controlnet import ControlNetGuidance
    from animate124.guidance.interface import Views
    from animate124.guidance.stable_diffusion import StableDiffusionGuidance
    from animate124.guidance.video import VideoGuidance
    from animate124.guidance.zero123 import Zero123Guidance

    render = 32 if tiny else 128
    gen = torch.Generator(device="cpu").manual_seed(0)
    frames = 1 if prior in ("sd", "zero123") else 16
    shape = (1, frames, 3, render, render)
    guid: StableDiffusionGuidance | Zero123Guidance | VideoGuidance | ControlNetGuidance
    if prior == "sd":
        guid = StableDiffusionGuidance(
            comp, prompt="a panda, 8k, good quality", negative_prompt="", guidance_scale=100.0,
            cfg_mode="upstream", t_range=(0.2, 0.6), weight=1.0, view_dependent=True,
            image_size=64 if tiny else 512, checkpoint_encoder=vae_checkpoint,
            checkpoint_pixels=CHECKPOINT_PIXELS, checkpoint_keep_pixels=keep_pixels,
        )  # fmt: skip
        views = Views.from_relative([[-10.0]], [[30.0]], [[0.0]])
    elif prior == "zero123":
        guid = Zero123Guidance(
            comp, guidance_scale=5.0, cfg_mode="standard", t_range=(0.2, 0.6), weight=40.0,
            c_concat_mode="mode", clip_preprocess="torch",
            reference=torch.rand(1, 3, 256, 256, device=device), checkpoint_encoder=vae_checkpoint,
            checkpoint_pixels=CHECKPOINT_PIXELS, checkpoint_keep_pixels=keep_pixels,
        )  # fmt: skip
        views = Views.from_relative([[-10.0]], [[60.0]], [[0.0]])
    elif prior == "video":
        guid = VideoGuidance(
            comp, prompt="a panda is dancing", negative_prompt="", guidance_scale=100.0,
            cfg_mode="upstream", t_range=(0.02, 0.98), weight=1.0, vae_grad_frames=0,
            upstream_view_text=False, image_size=64 if tiny else None, checkpoint_encoder=vae_checkpoint,
            checkpoint_pixels=CHECKPOINT_PIXELS, checkpoint_keep_pixels=keep_pixels,
        )  # fmt: skip
        views = Views.from_relative(0.0, torch.linspace(0.0, 45.0, frames)[None], 0.0)
    else:
        guid = ControlNetGuidance(
            comp, cn, prompt="a panda is dancing", negative_prompt="",
            controlnet_prompt="best quality, high resolution", image_size=64 if tiny else 1024,
            guidance_scale=7.5, cfg_mode="upstream", t_range=(0.2, 0.8), target="x0", weight=1.0,
            frames="even:2", upstream_view_text=False, checkpoint_encoder=vae_checkpoint,
            checkpoint_pixels=CHECKPOINT_PIXELS, checkpoint_keep_pixels=keep_pixels,
        )  # fmt: skip
        cond = torch.rand(shape, device=device)
        views = Views.from_relative(0.0, torch.zeros(1, frames), 0.0, condition=cond)

    def call() -> float:
        images = torch.rand(shape, device=device, requires_grad=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=autocast):
            out = guid(images, views, step=0, generator=gen)
        out.losses[guid.loss_key].backward()
        assert images.grad is not None
        return float(images.grad.abs().sum())

    call.shape, call.views = shape, views  # type: ignore[attr-defined]  # for the agreement and the FLOP count
    return guid, call


def apply_vae_options(guid, args) -> None:
    """The VAE options (the same for the measured path and the agreement's eager reference)."""
    if args.vae_attention == "blocked":
        from animate124.guidance.attention import use_blocked_vae_attention

        use_blocked_vae_attention(getattr(guid, "vae", None))
    if args.vae_fused_norm:
        from animate124.guidance.groupnorm import use_fused_vae_norms

        use_fused_vae_norms(getattr(guid, "vae", None))
    if args.vae_channels_last and getattr(guid, "vae", None) is not None:
        from animate124.guidance.layout import channels_last_

        channels_last_(guid.vae.encoder)


def apply_networks(guid, args) -> None:
    """The way the UNet/ControlNet run: ``--variant``, or the single flags."""
    if args.variant:
        from guidance_variants import apply_variant

        apply_variant(guid, args.variant)
        return
    if args.channels_last:
        from animate124.guidance.layout import use_channels_last

        use_channels_last(guid)
    if args.compile:  # as the stages do with run.compile_priors
        from animate124.guidance.compiled import compile_prior_networks

        compile_prior_networks(guid, args.compile_mode)
    elif args.cuda_graphs:
        from animate124.guidance.graphs import graph_prior_networks

        graph_prior_networks(guid, enabled=True)


def profile_calls(call, path: Path, cuda: bool, n: int = 3) -> None:
    """torch.profiler over ``n`` calls: the operators and kernels by their own device time, per call."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            call()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {n} calls\n" + prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=70)
    )


def dense_tflops(device, n: int = 8192, iters: int = 20) -> float:
    """The card's dense matrix rate: a bf16 ``n³`` matmul timed with CUDA events (TFLOP/s; issue 27's peak)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    del a, b
    torch.cuda.empty_cache()
    return iters * 2 * n**3 / (e0.elapsed_time(e1) / 1000) / 1e12


def card_rates(device) -> dict:
    """The card's measured fp16 matmul rate (TFLOP/s, 8192³) and device-to-device copy bandwidth (GB/s)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    big = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(big)
    for _ in range(3):
        a @ b
        dst.copy_(big)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    tflops = 20 * 2 * 8192**3 / (e0.elapsed_time(e1) / 1000) / 1e12
    e0.record()
    for _ in range(20):
        dst.copy_(big)
    e1.record()
    torch.cuda.synchronize()
    gbs = 20 * 2 * 2**30 / (e0.elapsed_time(e1) / 1000) / 1e9  # read + write
    del a, b, big, dst
    torch.cuda.empty_cache()
    return {"matmul_fp16_tflops": tflops, "copy_gb_s": gbs}


def time_calls(call, iters: int, warmup: int, cuda: bool) -> tuple[list[float], list[float], Any]:
    """``warmup`` untimed calls, then ``iters`` timed ones: (device ms per call from CUDA events, or host ms
    on the CPU; host wall-clock ms per call with a sync; the last call's result). The CUDA peak-memory
    counter is reset after the warm-up."""
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, walls, out = [], [], None
    for _ in range(iters):
        t0 = time.perf_counter()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out = call()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        walls.append((time.perf_counter() - t0) * 1000)
    return (times if cuda else walls), walls, out


def _reference_gradient(guid, call, args, device):
    """The eager networks' image gradient on a fixed seed (the agreement rule's reference)."""
    from animate124.guidance.agreement import sds_gradient

    images = torch.rand(call.shape, generator=torch.Generator().manual_seed(0)).to(device)
    autocast = torch.float16 if args.autocast else None
    return images, sds_gradient(guid, images, call.views, seed=0, autocast=autocast)


def bench_prior(prior: str, args, device) -> dict:
    from animate124.guidance.flops import call_flops

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    if args.tiny:
        comp, cn = build_tiny(prior, Path(args.tiny_cache))
    else:
        vae_dtype = torch.float32 if args.autocast else None
        comp, cn = build_full(prior, Path(args.configs), device, torch.float16, vae_dtype)
    build_s = time.perf_counter() - t_build
    keep = args.vae_keep_pixels
    if keep is None:  # --stages: the static stage's default for its priors, 0 for the others (as the stages)
        from animate124.config.schema import StaticConfig

        keep = StaticConfig().vae_keep_pixels if args.stages and prior in ("sd", "zero123") else 0
    guid, call = make_call(prior, comp, cn, args.tiny, device, args.vae_checkpoint, args.autocast, keep)
    flops = call_flops(guid, call.shape)  # the networks' shapes, on the meta device
    apply_vae_options(guid, args)
    reference = _reference_gradient(guid, call, args, device) if args.agreement else None
    apply_networks(guid, args)
    weights_mb = torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")
    times, _, grad_sum = time_calls(call, args.iters, args.warmup, cuda)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    if args.profile:
        profile_calls(call, Path(f"{args.profile}.{prior}.txt"), cuda)
    median = statistics.median(times)
    res = {
        "prior": prior,
        "median_ms": median,
        "min_ms": min(times),
        "iters": len(times),
        "weights_mb": weights_mb,
        "peak_mb": peak_mb,
        "build_s": build_s,
        "grad_finite": bool(torch.isfinite(torch.tensor(grad_sum))),
        "flops": flops.as_dict(),
        "tflop": flops.total / 1e12,
        "achieved_tflop_s": flops.total / 1e12 / (median / 1e3),
    }
    if reference is not None:
        from animate124.guidance.agreement import compare, sds_gradient

        images, ref = reference
        autocast = torch.float16 if args.autocast else None
        a = compare(ref, sds_gradient(guid, images, call.views, seed=0, autocast=autocast))
        res["grad_cosine"], res["grad_norm_error"] = a.cosine, a.norm_error
    if args.vae_fused_norm:
        from animate124.guidance.groupnorm import fused_norm_calls

        res["fused_norm_calls"] = fused_norm_calls(getattr(guid, "vae", None))
    res["graph_replays"] = int(getattr(guid.unet, "replays", 0))
    res["compiled_fell_back"] = bool(getattr(guid.unet, "failed", None))
    del guid, call, comp, cn
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def calls_record(meta: dict, results: list[dict], dense: float | None) -> dict:
    """issue 27's ``guidance_calls.json`` form for one variant: ``card``, ``dense_tflops`` and per prior ``ms``,
    ``tflop``, ``share_of_peak`` (achieved over dense), ``grad_cosine``."""
    rec: dict = {
        "card": meta["device"],
        "dense_tflops": dense,
        "variant": meta["variant"],
        "torch": meta["torch"],
    }
    for r in results:
        rec[r["prior"]] = {
            "ms": round(r["median_ms"], 2),
            "tflop": round(r["tflop"], 3),
            "achieved_tflop_s": round(r["achieved_tflop_s"], 1),
            "share_of_peak": round(r["achieved_tflop_s"] / dense, 4) if dense else None,
            "grad_cosine": r.get("grad_cosine"),
            "grad_norm_error": r.get("grad_norm_error"),
            "peak_mb": round(r["peak_mb"], 1),
        }
    return rec


def main(argv: list[str] | None = None) -> int:
    from guidance_variants import VARIANTS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=str(ROOT / ".." / "shared" / "data" / "hf-configs"))
    p.add_argument("--out", required=True)
    p.add_argument("--priors", default=",".join(PRIORS))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--variant", choices=tuple(VARIANTS), help="how the UNet/ControlNet run (guidance_variants.py)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the UNets / ControlNet")
    p.add_argument(
        "--compile-mode", default="default", help="Inductor mode with --compile (run.compile_mode)"
    )
    p.add_argument(
        "--channels-last", action="store_true", help="UNet/ControlNet and VAE encoder channels-last"
    )
    p.add_argument(
        "--stages", action="store_true",
        help="the stages' VAE path: --autocast --vae-checkpoint --vae-attention blocked --vae-fused-norm",
    )  # fmt: skip
    p.add_argument(
        "--autocast", action="store_true",
        help="as the stages run: the VAE in fp32, the forward under fp16 autocast (default: all fp16, no autocast)",
    )  # fmt: skip
    p.add_argument("--vae-fused-norm", action="store_true", help="fused group norm + SiLU in the VAE encoder")
    p.add_argument("--vae-channels-last", action="store_true", help="the VAE encoder in channels-last")
    p.add_argument(
        "--vae-checkpoint",
        action="store_true",
        help="recompute the VAE encoder in backward (run.vae_checkpoint)",
    )
    p.add_argument(
        "--vae-keep-pixels", type=int, default=None,
        help="with --vae-checkpoint, a call of at most this many pixels keeps its encoder activations "
        "(static.vae_keep_pixels; default: with --stages the static stage's default for sd and zero123, else 0)",
    )  # fmt: skip
    p.add_argument("--cuda-graphs", action="store_true", help="replay the UNet/ControlNet from CUDA graphs")
    p.add_argument(
        "--vae-attention", choices=("sdpa", "blocked"), default="sdpa",
        help="the VAE encoder's attention (run.vae_attention; the stages default to blocked)",
    )  # fmt: skip
    p.add_argument("--flops", action="store_true", help="also the card's fp16 matmul and copy rates")
    p.add_argument("--dense", action="store_true", help="the card's bf16 8192³ matmul rate: share of peak")
    p.add_argument("--agreement", action="store_true", help="gradient agreement with the eager networks")
    p.add_argument("--calls-json", default="", help="also write issue 27's guidance_calls.json form here")
    p.add_argument(
        "--profile", default="", help="write a torch.profiler table of 3 calls to PROFILE.<prior>.txt"
    )
    p.add_argument("--tiny", action="store_true", help="tiny factory models on the CPU (smoke test)")
    p.add_argument("--tiny-cache", default=str(Path(tempfile.gettempdir()) / "animate124_bench_tiny"))
    args = p.parse_args(argv)
    if args.stages:
        args.autocast = args.vae_checkpoint = args.vae_fused_norm = True
        args.vae_attention = "blocked"
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        p.error("full-size models need CUDA; use --tiny for a CPU smoke test")
    priors = [x.strip() for x in args.priors.split(",") if x.strip()]
    cuda = device.type == "cuda"
    rates = card_rates(device) if args.flops and cuda else None
    dense = dense_tflops(device) if args.dense and cuda else None
    if dense:
        print(f"dense bf16 8192³ matmul: {dense:.0f} TFLOP/s", flush=True)
    results = []
    for prior in priors:
        results.append(bench_prior(prior, args, device))
        r = results[-1]
        print(f"{r['prior']:<11} {r['median_ms']:>10.1f} ms  peak {r['peak_mb']:>9.0f} MB", flush=True)
    meta = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
        # a run with an explicit --vae-keep-pixels is its own record (e.g. defaults+keep0: the encoder recompute of SD
        # and Zero123 as before static.vae_keep_pixels)
        "variant": (args.variant or "flags")
        + ("" if args.vae_keep_pixels is None else f"+keep{args.vae_keep_pixels}"),
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "channels_last": args.channels_last,
        "vae_checkpoint": args.vae_checkpoint,
        "vae_keep_pixels": args.vae_keep_pixels,
        "cuda_graphs": args.cuda_graphs,
        "vae_attention": args.vae_attention,
        "autocast": args.autocast,
        "vae_fused_norm": args.vae_fused_norm,
        "vae_channels_last": args.vae_channels_last,
        "card_rates": rates,
        "dense_tflops": dense,
        "dtype": "float32" if args.tiny else "float16",
    }
    print(
        f"\n{'prior':<11} {'median ms':>10} {'min ms':>9} {'peak MB':>9} {'TFLOP':>7} {'TFLOP/s':>8} "
        f"{'of peak':>8} {'grad cos':>9}  ({meta['device']}, {meta['variant']})"
    )
    for r in results:
        share = f"{r['achieved_tflop_s'] / dense:>8.1%}" if dense else f"{'-':>8}"
        cos = f"{r['grad_cosine']:>9.6f}" if "grad_cosine" in r else f"{'-':>9}"
        print(
            f"{r['prior']:<11} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['peak_mb']:>9.0f} "
            f"{r['tflop']:>7.2f} {r['achieved_tflop_s']:>8.1f} {share} {cos}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if args.calls_json:
        Path(args.calls_json).write_text(json.dumps(calls_record(meta, results, dense), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
