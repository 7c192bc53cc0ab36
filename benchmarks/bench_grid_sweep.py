"""Launch sweep of the pair-layout grid kernels on the GPU (tiled 2^16, 16 levels x 2, 2^20 points).

Forward (quad table, levels as the fastest program id): BLOCK x warps, calling the kernel directly, with
the number of 16-byte loads in the PTX (to check that Triton vectorised the quad loads). Backward (pair
layout): BLOCK x warps through ``KernelOptions(pair_bwd_block=..., pair_bwd_warps=...)``. Then
forward+backward of the best pair and the defaults (``KernelOptions()``), uniform points.

The other program orders (blocks fastest, one program per block looping over levels) were measured
slower and removed; their numbers are in ``results/2026-11-26-h100/grid_sweep_{pairs,quads}.json``.

Usage: python benchmarks/bench_grid_sweep.py --out grid_sweep.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
import triton
import triton.testing

from animate124.scene.grid import GridEncoding, GridEncodingConfig, KernelOptions, kernels, launch

# SPEC 3.1: the paper's tiled grid (the library has no defaults for it)
PAPER_GRID = dict(
    grid_type="tiled",
    num_levels=16,
    level_dim=2,
    base_resolution=16,
    desired_resolution=2048,
    log2_table_size=16,
)


def bench(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=20, rep=120, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("grid_sweep.json"))
    ap.add_argument("--n", type=int, default=2**20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    cfg = GridEncodingConfig(**PAPER_GRID)
    enc = GridEncoding(cfg, backend="triton").to(dev)
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    table = enc.embeddings.detach()
    x = torch.rand(args.n, 3, generator=gen, device=dev) * 2 - 1
    u = ((x + 1) / 2).contiguous()
    g = torch.randn(args.n, 32, generator=gen, device=dev)
    quads = launch.build_quad_table(table, enc.bufs)
    out = torch.empty(args.n, 32, device=dev)
    rows = []
    n = args.n
    for block in (32, 64, 128, 256):
        for warps in (1, 2, 4, 8):
            nb = triton.cdiv(n, block)
            if nb > 65535:
                continue

            def fwd(block=block, warps=warps, nb=nb):
                return kernels._grid_fwd_pair_kernel[(16, nb)](
                    u, u, quads, out, *launch._launch_args(enc.bufs), n, out.stride(0), 0.0, 0,
                    BLOCK=block, HAS_TIME=False, SMOOTH=False, QUAD=True, num_warps=warps,
                )  # fmt: skip

            try:
                k = fwd()
                ptx = k.asm.get("ptx", "") if hasattr(k, "asm") else ""
                v4 = len(re.findall(r"ld\.global[^\n]*\.v4", ptx))
                v2 = len(re.findall(r"ld\.global[^\n]*\.v2", ptx))
                ms = bench(fwd)
            except Exception as err:  # keep sweeping
                print(f"fwd {block} {warps} failed: {err}", flush=True)
                continue
            rows.append({"kind": "fwd", "order": "level", "block": block, "warps": warps, "ms": ms,
                         "ptx_ld_v4": v4, "ptx_ld_v2": v2})  # fmt: skip
            print(f"fwd level B={block:3d} w={warps}  {ms:6.3f} ms  ld.v4={v4} ld.v2={v2}", flush=True)
    ref = torch.zeros(1)
    for block in (64, 128, 256, 512):
        for warps in (2, 4, 8):
            opts = KernelOptions(pair_bwd_block=block, pair_bwd_warps=warps)
            encb = GridEncoding(cfg, backend="triton", kernel_options=opts).to(dev)
            with torch.no_grad():
                encb.embeddings.copy_(table)
            o = encb(x)

            def bwd(o=o, encb=encb):
                return torch.autograd.grad(o, encb.embeddings, g, retain_graph=True)[0]

            gr = bwd()
            if ref.numel() == 1:
                ref = gr
            err = ((gr - ref).norm() / ref.norm()).item()
            ms = bench(bwd)
            rows.append({"kind": "bwd", "order": "level", "block": block, "warps": warps, "ms": ms,
                         "rel_vs_first": err})  # fmt: skip
            print(f"bwd level B={block:3d} w={warps}  {ms:6.3f} ms  rel {err:.1e}", flush=True)
            del encb, o
    best_f = min((r for r in rows if r["kind"] == "fwd"), key=lambda r: r["ms"])
    best_b = min((r for r in rows if r["kind"] == "bwd"), key=lambda r: r["ms"])
    print("best fwd", best_f, "\nbest bwd", best_b, flush=True)
    best = KernelOptions(
        pair_fwd_block=best_f["block"],
        pair_fwd_warps=best_f["warps"],
        pair_bwd_block=best_b["block"],
        pair_bwd_warps=best_b["warps"],
    )
    for name, opts in (("best launch", best), ("defaults", KernelOptions())):
        encf = GridEncoding(cfg, backend="triton", kernel_options=opts).to(dev)
        with torch.no_grad():
            encf.embeddings.copy_(table)

        def fb(encf=encf):
            torch.autograd.grad(encf(x), encf.embeddings, g)

        ms = bench(fb)
        rows.append({"kind": f"fwd+bwd {name}", "points": "uniform", "ms": ms})
        print(f"fwd+bwd {name}, uniform: {ms:.3f} ms", flush=True)
        del encf
    meta = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
            "n": n, "best_fwd": best_f, "best_bwd": best_b}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
