"""The priors' VAE encoder as the stages run it (fp32 weights under fp16 autocast): plain against fused
group norms (``run.vae_fused_norm``), NCHW against channels-last, at each stage's shapes.

Cases (SD 1.5's VAE config, random weights): ``invert`` 16 × 512² without grad (textual inversion's batch);
``sd`` 1 × 512², ``zero123`` 1 × 256², ``video`` 16 × 256² and ``refine`` 2 × 1024² with grad through the stages' recompute
(``encoder_moments(checkpoint=True)``: the no-grad pass, then backward re-runs the encoder). CUDA events,
median of ``--iters`` after ``--warmup`` (``ms``), and the host wall-clock per step with a sync (``wall_ms``:
above ``ms`` when the host's launches are the limit); also the largest difference of the moments and input gradients
from the plain NCHW variant, relative to their largest entry.

Usage: ``python benchmarks/bench_vae_norm.py --configs ../shared/data/hf-configs --out OUT.json``
(``--cases refine,video``; ``--variants``: ``plain``, ``fused`` (every norm), ``gated`` (the stages' default:
fused from ``groupnorm.MIN_FUSED_ELEMS`` elements), ``fused_cl`` (every norm, channels-last)). ``--smoke``: the tiny VAE on the CPU at 1/8
of the sizes (run it with ``TRITON_INTERPRET=1`` to take the fused path), to test this script.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from bench_guidance import SD_DIR, time_calls  # noqa: E402

SD_VAE = f"{SD_DIR}/vae"
CASES = {
    "invert": (16, 512, False),
    "sd": (1, 512, True),
    "zero123": (1, 256, True),
    "video": (16, 256, True),
    "refine": (2, 1024, True),
}
VARIANTS = ("plain", "fused", "gated", "fused_cl")


DEV = "cuda"


def build(configs: Path, variant: str, base=None):
    from diffusers import AutoencoderKL

    from animate124.guidance.attention import use_blocked_vae_attention
    from animate124.guidance.groupnorm import use_fused_vae_norms

    if base is None:
        torch.manual_seed(0)
        if DEV == "cpu":
            from animate124.models.tiny import _tiny_vae

            base = _tiny_vae()
        else:
            base = AutoencoderKL.from_config(AutoencoderKL.load_config(str(configs / SD_VAE)))
        return base.to(DEV, torch.float32).eval().requires_grad_(False)
    vae = copy.deepcopy(base)
    use_blocked_vae_attention(vae)  # the stages' default
    if variant.startswith("fused") or variant == "gated":
        use_fused_vae_norms(vae)
    if variant.endswith("_cl"):
        vae.encoder.to(memory_format=torch.channels_last)
        vae.quant_conv.to(memory_format=torch.channels_last)
    return vae


def run_case(vae, case: str, iters: int, warmup: int) -> dict:
    from animate124.guidance.common import encoder_moments

    n, size, grad = CASES[case]
    if DEV == "cpu":
        size //= 8
    gen = torch.Generator(device=DEV).manual_seed(1)
    x = torch.rand(n, 3, size, size, device=DEV, generator=gen) * 2 - 1
    go = None

    def step():
        nonlocal go
        xi = x.detach().requires_grad_(grad)
        with torch.autocast(DEV, dtype=torch.float16), torch.set_grad_enabled(grad):
            m = encoder_moments(vae, xi, checkpoint=True)
        if not grad:
            return m, None
        if go is None:
            go = torch.randn(m.shape, device=DEV, generator=gen, dtype=m.dtype)
        (g,) = torch.autograd.grad(m, xi, go)
        return m, g

    cuda = DEV == "cuda"
    for _ in range(warmup):
        step()
    base_mem = torch.cuda.memory_allocated() if cuda else 0
    times, walls, (m, g) = time_calls(step, iters, 0, cuda)
    return {
        "ms": statistics.median(times),
        "min_ms": min(times),
        "wall_ms": statistics.median(walls),
        "peak_over_base_gib": (torch.cuda.max_memory_allocated() - base_mem) / 2**30 if cuda else 0.0,
        "out": (m.float(), None if g is None else g.float()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=str(ROOT / ".." / "shared" / "data" / "hf-configs"))
    p.add_argument("--out", required=True)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="the tiny VAE on the CPU (tests this script)")
    args = p.parse_args(argv)
    global DEV
    DEV = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        p.error("needs CUDA (or --smoke)")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    import animate124.guidance.groupnorm as G
    from animate124.guidance.groupnorm import fused_norm_calls

    default_gate = G.MIN_FUSED_ELEMS
    base = build(Path(args.configs), "plain")
    results = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        ref = None
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            vae = build(Path(args.configs), variant, base)
            # fused*: every norm fused; gated: the default size gate (groupnorm.MIN_FUSED_ELEMS)
            G.MIN_FUSED_ELEMS = 0 if variant.startswith("fused") else default_gate
            r = run_case(vae, case, args.iters, args.warmup)
            r["fused_calls"] = fused_norm_calls(vae)
            m, g = r.pop("out")
            if ref is None:
                ref = (m, g)
            r["moments_diff"] = ((m - ref[0]).abs().max() / ref[0].abs().max()).item()
            if g is not None:
                r["grad_diff"] = ((g - ref[1]).abs().max() / ref[1].abs().max()).item()
            r.update(case=case, variant=variant)
            results.append(r)
            print(
                f"{case:<7} {variant:<9} {r['ms']:>8.1f} ms (wall {r['wall_ms']:.1f})  peak+{r['peak_over_base_gib']:.2f} GiB  "
                f"moments {r['moments_diff']:.1e}  grad {r.get('grad_diff', float('nan')):.1e}",
                flush=True,
            )
            del vae
            if DEV == "cuda":
                torch.cuda.empty_cache()
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)"
    meta = {"device": card, "torch": torch.__version__, "iters": args.iters}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
