"""Grid-encoder kernel variants on the GPU (SPEC 3.1; the "Neural field core" issue's 2 ms target).

2^20 points, 16 levels x 2 features. For each point set and table it times forward, backward and
forward+backward (medians of ``triton.testing.do_bench``) of:

* ``plain``: one load / one 8-byte reduction per corner (``KernelOptions(pair_layout=False)``);
* ``pairs-fwd``: the quad gather table in the forward (static tables), plain reductions in the backward
  (``KernelOptions(bwd_pairs_max_rows=0)``);
* ``pairs``: quad table forward and pair-layout backward (the default before the z-merge);
* ``plain-zm``, ``pairs-zm``, ``pairs+slots-zm``: the same with ``KernelOptions(z_merge=True)`` (4 corners
  instead of 8 at the levels that ignore z, issue 26; ``pairs-zm`` and ``pairs+slots-zm`` are the
  defaults now);
* ``pairs+slots`` (time-stacked table only; the default before the z-merge): one blended table per distinct
  time of a frame-major clip (``TimeGridEncoding._encode_slots``), then one grid read per point (the other
  variants run with ``slot_blend=False``; those without ``-zm`` with ``z_merge=False``, on by default now)

(gather tables are built inside every call, as in training) and checks every variant against the torch
reference (relative table-gradient error, max forward difference). Point sets: ``uniform`` (random in the cube: the worst case) and ``rays`` (2^14 rays x 64
samples through the cube in ray order, as the marcher emits them). Tables: tiled 2^16 (the paper's
grid), hashed 2^19, and the 64-grid time-stacked table with a training clip's 16 frame times and with a
random time per point. Also: the quad-table build, the blended slot-table build (16 times), and the torch
reference for the speed-up.

Usage: python benchmarks/bench_grid_variants.py --out grid_variants.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import triton.testing

from animate124.scene.grid import GridEncoding, GridEncodingConfig, KernelOptions, TimeGridEncoding, launch

VARIANTS = {  # z_merge is on by default: the 8-corner variants say so
    "plain": KernelOptions(pair_layout=False, z_merge=False),
    "pairs-fwd": KernelOptions(bwd_pairs_max_rows=0, z_merge=False),
    "pairs": KernelOptions(bwd_pairs_max_rows=2**30, z_merge=False),
    "plain-zm": KernelOptions(pair_layout=False, z_merge=True),
    "pairs-zm": KernelOptions(bwd_pairs_max_rows=2**30, z_merge=True),
}
# SPEC 3.1: the paper's tiled grid (the library has no defaults for it)
PAPER_GRID = dict(
    grid_type="tiled",
    num_levels=16,
    level_dim=2,
    base_resolution=16,
    desired_resolution=2048,
    log2_table_size=16,
)


def ray_points(n_rays: int, samples: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """``n_rays * samples`` points in [-1, 1]^3, ray-major, stratified along each ray's box segment."""
    o = torch.randn(n_rays, 3, generator=gen, device=dev)
    o = o / o.norm(dim=-1, keepdim=True) * 1.8
    target = (torch.rand(n_rays, 3, generator=gen, device=dev) - 0.5) * 1.0
    d = target - o
    d = d / d.norm(dim=-1, keepdim=True)
    inv = 1.0 / d
    t0 = (-1.0 - o) * inv
    t1 = (1.0 - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)
    far = torch.maximum(t0, t1).amin(-1)
    k = torch.arange(samples, device=dev).float()
    s = (k + torch.rand(n_rays, samples, generator=gen, device=dev)) / samples
    s = near[:, None] + s * (far - near)[:, None]
    x = o[:, None, :] + s[..., None] * d[:, None, :]
    return x.reshape(-1, 3).clamp(-1, 1).contiguous()


def bench(fn) -> float:
    if not torch.cuda.is_available():  # CPU smoke test under TRITON_INTERPRET=1: one timed call
        import time

        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(triton.testing.do_bench(fn, warmup=30, rep=200, return_mode="median"))


def measure(enc, args, g, ref_grad, ref_out) -> dict:
    enc.embeddings.grad = None
    out = enc(*args)
    out.backward(g)
    grad_rel = ((enc.embeddings.grad - ref_grad).norm() / ref_grad.norm()).item()
    fwd_err = (out.detach() - ref_out).abs().max().item()

    def fwd():
        with torch.no_grad():
            enc(*args)

    kept = enc(*args)

    def bwd():
        torch.autograd.grad(kept, enc.embeddings, g, retain_graph=True)

    def fwd_bwd():
        enc.embeddings.grad = None
        enc(*args).backward(g)

    return {
        "fwd_ms": bench(fwd),
        "bwd_ms": bench(bwd),
        "fwd_bwd_ms": bench(fwd_bwd),
        "grad_rel": grad_rel,
        "fwd_max_abs": fwd_err,
    }


def reference(ref, args, g):
    ref.embeddings.grad = None
    out = ref(*args)
    out.backward(g)
    return ref.embeddings.grad.clone(), out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("grid_variants.json"))
    ap.add_argument("--n", type=int, default=2**20)
    ap.add_argument("--small", action="store_true", help="small grids and T=4 (CPU smoke test)")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_size = 4 if args.small else 64
    gen = torch.Generator(device=dev).manual_seed(0)
    n = args.n
    points = {
        "uniform": torch.rand(n, 3, generator=gen, device=dev) * 2 - 1,
        "rays": ray_points(n // 64, 64, gen, dev),
    }
    rows: list[dict] = []

    def report(**row):
        rows.append(row)
        keys = ("fwd_ms", "bwd_ms", "fwd_bwd_ms")
        nums = "  ".join(f"{k[:-3]} {row[k]:7.3f}" for k in keys if k in row)
        extra = {k: (f"{v:.1e}" if isinstance(v, float) else v) for k, v in row.items() if k not in keys}
        print(f"{nums}  {extra}", flush=True)

    small = (
        dict(num_levels=6, base_resolution=4, desired_resolution=64, log2_table_size=8) if args.small else {}
    )
    grids = {
        "tiled16": GridEncodingConfig(**{**PAPER_GRID, **small}),
        "hash19": GridEncodingConfig(**{**PAPER_GRID, "grid_type": "hash", "log2_table_size": 19, **small}),
    }
    vec2_errors: list[str] = []

    def variant(cls, cfg, table, options, **kw):
        """A Triton encoder with ``options`` holding a copy of ``table``."""
        enc = cls(cfg, backend="triton", kernel_options=options, **kw).to(dev)
        with torch.no_grad():
            enc.embeddings.copy_(table)
        return enc

    static_best: dict[str, float] = {}
    for gname, cfg in grids.items():
        torch.manual_seed(0)
        ref = GridEncoding(cfg, backend="torch").to(dev)
        with torch.no_grad():
            ref.embeddings.uniform_(-1, 1)
        for pname, x in points.items():
            g = torch.randn(x.shape[0], cfg.output_dim, generator=gen, device=dev)
            ref_grad, ref_out = reference(ref, (x,), g)
            if gname == "tiled16" and pname == "uniform":

                def torch_fwd_bwd(x=x, g=g, ref=ref):
                    ref.embeddings.grad = None
                    ref(x).backward(g)

                report(table=gname, points=pname, variant="torch reference", fwd_bwd_ms=bench(torch_fwd_bwd))
            for vname, options in VARIANTS.items():
                enc = variant(GridEncoding, cfg, ref.embeddings.detach(), options)
                r = measure(enc, (x,), g, ref_grad, ref_out)
                vec2_errors += [enc.launch_state.vec2_error] if enc.launch_state.vec2_error else []
                report(table=gname, points=pname, variant=vname, **r)
                if pname == "uniform":
                    static_best[f"{gname}/{vname}"] = r["fwd_bwd_ms"]
                del enc
        build = bench(lambda ref=ref: launch.build_quad_table(ref.embeddings.detach(), ref.bufs))
        report(table=gname, variant="quad table build", fwd_bwd_ms=build)
        del ref
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    # 64-grid time-stacked table (the 4D field), uniform points
    cfg = grids["tiled16"]
    x = points["uniform"]
    g = torch.randn(n, cfg.output_dim, generator=gen, device=dev)
    frames = 16
    t_clip = ((torch.arange(n, device=dev) * frames // n) * 15 + 8).float().div(256).reshape(-1, 1)
    times = {"16 frame times": t_clip, "random t": torch.rand(n, 1, generator=gen, device=dev)}
    torch.manual_seed(0)
    ref = TimeGridEncoding(cfg, time_grid_size=t_size, backend="torch").to(dev)
    with torch.no_grad():
        ref.embeddings.uniform_(-1, 1)
    time_variants = {k: dataclasses.replace(v, slot_blend=False) for k, v in VARIANTS.items()}
    time_variants["pairs+slots"] = VARIANTS["pairs"]
    time_variants["pairs+slots-zm"] = VARIANTS["pairs-zm"]
    for tname, t in times.items():
        ref_grad, ref_out = reference(ref, (x, t), g)
        for vname, options in time_variants.items():
            enc = variant(TimeGridEncoding, cfg, ref.embeddings.detach(), options, time_grid_size=t_size)
            try:
                r = measure(enc, (x, t), g, ref_grad, ref_out)
            except torch.OutOfMemoryError as err:
                report(table="time64", points=tname, variant=vname, error=str(err)[:200])
                continue
            finally:
                vec2_errors += [enc.launch_state.vec2_error] if enc.launch_state.vec2_error else []
                del enc
            r["ratio_vs_static_same_variant"] = (
                r["fwd_bwd_ms"] / static_best[f"tiled16/{vname.replace('+slots', '')}"]
            )
            r["ratio_vs_static_pairs"] = r["fwd_bwd_ms"] / static_best["tiled16/pairs"]
            report(table="time64", points=tname, variant=vname, **r)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    g32 = (torch.arange(frames, device=dev) * 15 + 8).float().div(256) * float(t_size - 1)
    lo, hi, a = torch.floor(g32).long(), torch.ceil(g32).long(), g32 - torch.floor(g32)
    flat = ref.embeddings.detach().view(-1, 2)
    build = bench(lambda: launch.build_slot_pairs(flat, lo, hi, a, ref.bufs, ref.entries_per_grid))
    report(table="time64", variant=f"slot table build ({frames} times)", fwd_bwd_ms=build)
    meta = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "n": n,
        "vec2_broken": vec2_errors,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
