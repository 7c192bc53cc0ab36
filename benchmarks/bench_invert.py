"""Textual inversion speed and memory at the paper's settings (SPEC 2): batch 16 at 512², fp16 autocast
with GradScaler, SD 1.5 UNet/VAE in fp16 weights... as the `invert` stage loads them (UNet fp16, VAE and
text encoder fp32). Full-size SD 1.5 built from the real configs with random weights.

    python benchmarks/bench_invert.py --configs .device/hf-configs --steps 12 --out invert.json
    python benchmarks/bench_invert.py ... --fused-norm --compile --channels-last --fused-adamw \
        --calls-json guidance_calls.json          # issue 27: adds invert_minutes (3000 steps) to that record

Also reports the step's exact FLOPs (``guidance/flops.py``: VAE encode, text encoder and UNet forward + backward)
and the achieved TFLOP/s; with ``--dense`` the share of the card's bf16 8192³ matmul rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def step_gradient(comp, photo: torch.Tensor, cfg, dev: torch.device) -> torch.Tensor:
    """The learned vector's gradient after one step as the stage makes it, from a fresh system: fp16 autocast and
    the GradScaler's loss scale (its first, 2^16: ``engine/schedules.py``), unscaled after the backward. Without
    the scale an fp16 backward flushes the per-element gradients of the mean-squared error (about 1e-5 at batch
    16) into fp16's subnormal range, which the stage never does."""
    from animate124.engine.schedules import GRAD_SCALER
    from animate124.guidance.textual_inversion import TextualInversionSystem

    scale = float(GRAD_SCALER["init_scale"]) if cfg.mixed_precision else 1.0
    system = TextualInversionSystem(comp, photo, cfg, dev)
    with torch.autocast("cuda", dtype=torch.float16, enabled=cfg.mixed_precision):
        loss = system.training_step(1, scale).losses["mse"]
    (loss * scale).backward()
    grad = system.vec.grad.detach().double() / scale
    system.finish()
    return grad


def main() -> None:
    from bench_guidance import build_full, dense_tflops

    from animate124.guidance.flops import invert_step_flops
    from animate124.guidance.textual_inversion import TIConfig, train_textual_inversion

    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=ROOT / ".." / "shared" / "data" / "hf-configs")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("bench_invert.json"))
    ap.add_argument(
        "--fused-norm", action="store_true", help="fused VAE group norms (run.vae_fused_norm, on)"
    )
    ap.add_argument("--compile", action="store_true", help="the UNet compiled (run.compile_priors=invert)")
    ap.add_argument("--compile-mode", default="default", help="run.compile_mode")
    ap.add_argument("--channels-last", action="store_true", help="UNet and VAE encoder channels-last")
    ap.add_argument("--fused-adamw", action="store_true", help="one fused AdamW kernel (run.fused_adamw)")
    ap.add_argument(
        "--fused-unet-norm", action="store_true", help="the UNet's group norms fused (run.unet_fused_norm)"
    )
    ap.add_argument(
        "--native-fp16",
        action="store_true",
        help="the fp16 UNet outside autocast, as upstream (run.native_fp16)",
    )
    ap.add_argument("--dense", action="store_true", help="the card's bf16 8192³ matmul rate (share of peak)")
    ap.add_argument("--calls-json", type=Path, help="add invert_minutes to this guidance_calls.json")
    ap.add_argument(
        "--agreement", action="store_true",
        help="gradient agreement of the options' step with the plain step (the vector's gradient, one step)",
    )  # fmt: skip
    args = ap.parse_args()
    dev = torch.device("cuda")
    comp, _ = build_full("sd", args.configs, dev, torch.float16)
    comp.vae.float()  # the stage's loaders keep the VAE in fp32
    comp.text_encoder.float()  # and the invert stage trains through an fp32 text encoder (as upstream)
    if args.fused_norm:
        from animate124.guidance.groupnorm import use_fused_vae_norms

        use_fused_vae_norms(comp.vae)
    step_flops = invert_step_flops(comp, args.batch_size, args.resolution)
    dense = dense_tflops(dev) if args.dense else None
    photo = torch.rand(3, 600, 800)
    cfg = TIConfig(
        placeholder="<bench>", initializer="cat", steps=args.steps, lr=1e-4, batch_size=args.batch_size,
        resolution=args.resolution, augment=True, upstream_aug_range_bug=False, seed=0,
        checkpoint_every=10**9, mixed_precision=True, compile_unet=args.compile, compile_mode=args.compile_mode,
        channels_last=args.channels_last, fused_adamw=args.fused_adamw, native_fp16=args.native_fp16,
    )  # fmt: skip

    def patch_unet() -> None:  # in place: after the agreement's plain step, which must run the plain norms
        if args.fused_unet_norm:
            from animate124.guidance.groupnorm import use_fused_unet_norms

            use_fused_unet_norms(comp.unet)

    agreement = None
    if not args.agreement:
        patch_unet()
    else:  # the plain step first: channels-last converts the weights in place
        from dataclasses import replace

        from animate124.guidance.agreement import compare

        plain = replace(cfg, placeholder="<ref>", compile_unet=False, channels_last=False, fused_adamw=False,
                        native_fp16=False)  # fmt: skip
        reference = step_gradient(comp, photo, plain, dev)
        patch_unet()
        agreement = compare(reference, step_gradient(comp, photo, replace(cfg, placeholder="<fast>"), dev))
        print(
            f"step gradient agreement: cosine {agreement.cosine:.6f}, norm error {agreement.norm_error:.2e}"
        )
    stamps: list[float] = []

    def progress(step: int, total: int, metrics: dict) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        vec = train_textual_inversion(
            comp, photo, cfg, checkpoint_dir=Path(tmp), device=dev, progress=progress
        )
    steady = stamps[args.warmup :]
    s_per_step = (steady[-1] - steady[0]) / max(len(steady) - 1, 1)
    res = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "steps_timed": len(steady) - 1,
        "s_per_step": s_per_step,
        "paper_3000_steps_min": s_per_step * 3000 / 60,
        "options": {
            k: getattr(args, k)
            for k in (
                "fused_norm",
                "fused_unet_norm",
                "compile",
                "compile_mode",
                "channels_last",
                "fused_adamw",
                "native_fp16",
            )  # fmt: skip
        },
        "tflop_per_step": step_flops["total"] / 1e12,
        "flops": step_flops,
        "achieved_tflop_s": step_flops["total"] / 1e12 / s_per_step,
        "dense_tflops": dense,
        "peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
        "vec_finite": bool(torch.isfinite(vec).all()),
        "vec_norm": float(vec.norm()),
    }
    if dense:
        res["share_of_peak"] = res["achieved_tflop_s"] / dense
    if agreement is not None:
        res["grad_cosine"], res["grad_norm_error"] = agreement.cosine, agreement.norm_error
    print(json.dumps(res, indent=1))
    args.out.write_text(json.dumps(res, indent=1))
    if args.calls_json:
        rec = (
            json.loads(args.calls_json.read_text()) if args.calls_json.is_file() else {"card": res["device"]}
        )
        rec["invert_minutes"] = round(res["paper_3000_steps_min"], 2)
        rec["invert"] = {
            k: res[k] for k in ("s_per_step", "tflop_per_step", "achieved_tflop_s", "peak_gib", "options")
        }
        args.calls_json.write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
