"""The NeRF side of one dynamic-stage guidance step, without the priors (issue 12): variants A/B.

The paper's 4D field (``paper`` preset: 64 time grids, 16 levels, 128³ × 16 occupancy) renders a
16-frame 128² clip with lambertian shading and normals (checkpointed, as the stage), the regularizers
and the points-form time TV (100,000 points) are added, then backward, element-wise gradient clipping
and Adam, as a guidance step does minus the video prior. Timed with CUDA events per part, median over
``--iters`` steps after ``--warmup``. The field is fresh (the density blob: an opaque core in a faint
fog, as every run starts), so the share of samples behind early termination is the blob's; a trained
scene's is reported by ``fit_multiview.py``.

Variants (cumulative): ``base`` (every sample's normal, the per-slice time TV: the defaults measured in
BENCHMARKS.md §8.6), ``live`` (+ ``raymarch.live_normals``),
``fused_tv`` (+ the one-node time TV: the defaults now), ``seg20`` (+ normals' checkpoint segments of
2^20 samples instead of 2^18: ``raymarch.chunk``), ``ckfield`` (``fused_tv`` + the field's own evaluations
recomputed in backward: ``raymarch.checkpoint_field``), ``ckhalf`` (the same for the samples beyond the first
2^22 only), ``keepnormals`` (``fused_tv`` with the normals' activations kept: ``raymarch.checkpoint_normals``
false).

    python benchmarks/bench_field_step.py --out OUT.json                  # CUDA
    python benchmarks/bench_field_step.py --device cpu --quick --out /tmp/f.json   # CPU: tiny sizes, runs only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "base": dict(live=False, fused=False, chunk=0),
    "live": dict(live=True, fused=False, chunk=0),
    "fused_tv": dict(live=True, fused=True, chunk=0),
    "seg20": dict(live=True, fused=True, chunk=2**20),
    "ckfield": dict(live=True, fused=True, chunk=0, ckfield=1),
    "ckhalf": dict(live=True, fused=True, chunk=0, ckfield=2**22),
    "keepnormals": dict(live=True, fused=True, chunk=0, keep_normals=True),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--smoke", "--quick", action="store_true", help="tiny sizes on the CPU (checks that it runs)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)

    from animate124 import losses as L
    from animate124.config import resolve_config
    from animate124.render.cameras import orbit_cameras
    from animate124.render.renderer import render
    from animate124.stages.build import build_field, build_occupancy, build_optimizer

    cuda = torch.cuda.is_available() and not args.smoke and args.device != "cpu"
    dev = torch.device("cuda" if cuda else "cpu")
    over: dict = {}
    frames, side, tv_points = 16, 128, 100_000
    if args.smoke:
        over = {"raymarch": {"occupancy_resolution": 16}, "field": {"time_grid_size": 4, "num_levels": 4}}
        frames, side, tv_points = 2, 16, 500
    cfg = resolve_config("paper", None, over, [])
    torch.manual_seed(0)
    field = build_field(cfg.field, "dynamic", dev)
    occ = build_occupancy(cfg, dynamic=True, device=dev)
    gen_occ = torch.Generator(device=dev).manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        occ.update(field.density, generator=gen_occ)
    if cuda:
        torch.cuda.synchronize()
    occ_s = time.perf_counter() - t0
    opt = build_optimizer(cfg, field, "dynamic")
    params = [q for g in opt.param_groups for q in g["params"]]
    cams = orbit_cameras(frames, height=side, width=side, device=dev)
    times = torch.linspace(0, 1, frames, device=dev)[None]
    r = cfg.raymarch

    def event():
        return torch.cuda.Event(enable_timing=True) if cuda else None

    def run(v: dict, gen: torch.Generator) -> dict:
        ev = [event() for _ in range(5)]

        def mark(i: int) -> None:
            if cuda:
                ev[i].record()

        mark(0)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
            out = render(
                field, cams, times, shading="lambertian", ambient=0.5, light_dir=torch.tensor([0.0, 1.0, 0.0]),
                bg_color=torch.rand(3, generator=gen), occupancy=occ, perturb=True, generator=gen,
                compute_normals=True, normal_eps=r.normal_eps, max_steps=r.max_steps, min_near=r.min_near,
                t_thresh=r.transmittance_thresh, chunk=v["chunk"] or None,
                checkpoint_normals=not v.get("keep_normals", False),
                live_normals=v["live"], checkpoint_field=v.get("ckfield", 0),
            )  # fmt: skip
            loss = out.rgb.float().mean() + 1e-3 * L.entropy_loss(out.weights)
            loss = loss + 1e-2 * L.orientation_loss(out.orientation) + 0.5 * L.normal_tv_loss(out.normal[0])
            mark(1)
            tv = field.time_tv_loss("points", n_points=tv_points, generator=gen, fused=v["fused"])
            mark(2)
        (loss + 0.1 * tv).backward()
        mark(3)
        torch.nn.utils.clip_grad_value_(params, 1.0)
        opt.step()
        mark(4)
        res = {"samples": out.num_samples, "live": int((out.weights > 0).sum())}
        if cuda:
            torch.cuda.synchronize()
            names = ("render", "time_tv", "backward", "optimizer")
            res.update({n: ev[i].elapsed_time(ev[i + 1]) for i, n in enumerate(names)})
            res["total"] = ev[0].elapsed_time(ev[4])
        return res

    results: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "occupancy_refresh_s_first": occ_s,
        "variants": {},
    }
    if cuda:  # one more refresh, warm
        torch.cuda.synchronize()
        e0, e1 = event(), event()
        e0.record()
        with torch.no_grad():
            occ.update(field.density, generator=gen_occ)
        e1.record()
        torch.cuda.synchronize()
        results["occupancy_refresh_ms"] = e0.elapsed_time(e1)
    for name in args.variants.split(","):
        v = VARIANTS[name]
        gen = torch.Generator().manual_seed(1)
        for _ in range(args.warmup):
            run(v, gen)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        runs = [run(v, gen) for _ in range(args.iters)]
        summary = {
            "settings": v,
            "samples": runs[-1]["samples"],
            "live_share": runs[-1]["live"] / max(1, runs[-1]["samples"]),
        }
        for k in ("render", "time_tv", "backward", "optimizer", "total"):
            if k in runs[0]:
                summary[f"{k}_ms"] = statistics.median(x[k] for x in runs)
        if cuda:
            summary["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        key = name if name not in results["variants"] else f"{name}#{len(results['variants'])}"
        results["variants"][key] = summary  # a repeated name (alternating A/B runs) keeps every run
        print(
            name,
            json.dumps(
                {
                    k: (round(x, 2) if isinstance(x, float) else x)
                    for k, x in summary.items()
                    if k != "settings"
                }
            ),
            flush=True,
        )
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
