"""Launch sweep of the pair-layout grid kernels on the GPU (tiled 2^16, 16 levels x 2, 2^20 points).

Forward: program order (``block``: blocks fastest, ``level``: levels fastest, ``all``: one program per
block looping over levels) x BLOCK x warps, with the number of 16-byte loads in the PTX (to check that
Triton vectorised the pair loads). Backward: order x BLOCK x warps. Then forward+backward of the best
pair and the defaults, uniform and ray-ordered points (see ``bench_grid_variants.py``).

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

from animate124.scene import encoding_triton as et
from animate124.scene.encoding import GridEncoding, GridEncodingConfig


def bench(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=20, rep=120, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("grid_sweep.json"))
    ap.add_argument("--n", type=int, default=2**20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    cfg = GridEncodingConfig()
    enc = GridEncoding(cfg, backend="triton").to(dev)
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    x = torch.rand(args.n, 3, generator=gen, device=dev) * 2 - 1
    u = ((x + 1) / 2).contiguous()
    g = torch.randn(args.n, 32, generator=gen, device=dev)
    pairs = enc.gather_tables.get(enc.embeddings, enc.bufs, 1, 0)
    out = torch.empty(args.n, 32, device=dev)
    rows = []
    n = args.n
    for order_name, order in (("level", 1), ("all", 2)):
        for block in (32, 64, 128, 256):
            for warps in (1, 2, 4, 8):
                nb = triton.cdiv(n, block)
                grid = {0: (nb, 16), 1: (16, nb), 2: (nb,)}[order]
                if order == 1 and nb > 65535:
                    continue

                def fwd(grid=grid, block=block, warps=warps, order=order):
                    return et._grid_fwd_pair_kernel[grid](
                        u, u, pairs, out, *et._launch_args(enc.bufs), n, out.stride(0), 0.0, 0, 16,
                        BLOCK=block, HAS_TIME=False, SMOOTH=False, ORDER=order, QUAD=pairs.shape[1] == 8,
                        num_warps=warps,
                    )  # fmt: skip

                try:
                    k = fwd()
                    ptx = k.asm.get("ptx", "") if hasattr(k, "asm") else ""
                    v4 = len(re.findall(r"ld\.global[^\n]*\.v4", ptx))
                    v2 = len(re.findall(r"ld\.global[^\n]*\.v2", ptx))
                    ms = bench(fwd)
                except Exception as err:  # keep sweeping
                    print(f"fwd {order_name} {block} {warps} failed: {err}", flush=True)
                    continue
                rows.append({"kind": "fwd", "order": order_name, "block": block, "warps": warps, "ms": ms,
                             "ptx_ld_v4": v4, "ptx_ld_v2": v2})  # fmt: skip
                print(
                    f"fwd {order_name:5s} B={block:3d} w={warps}  {ms:6.3f} ms  ld.v4={v4} ld.v2={v2}",
                    flush=True,
                )
    ref = torch.zeros(1)
    for lf in (True,):
        for block in (64, 128, 256, 512):
            for warps in (2, 4, 8):
                et.BWD_LEVEL_FAST = lf
                o = et.grid_encode(u, enc.embeddings, enc.bufs, 16, 16, 2, bwd_block=block, bwd_warps=warps,
                                   gather_tables=enc.gather_tables)  # fmt: skip

                def bwd(o=o):
                    return torch.autograd.grad(o, enc.embeddings, g, retain_graph=True)[0]

                gr = bwd()
                if ref.numel() == 1:
                    ref = gr
                err = ((gr - ref).norm() / ref.norm()).item()
                ms = bench(bwd)
                order_name = "level" if lf else "block"
                rows.append({"kind": "bwd", "order": order_name, "block": block, "warps": warps, "ms": ms,
                             "rel_vs_first": err})  # fmt: skip
                print(f"bwd {order_name:5s} B={block:3d} w={warps}  {ms:6.3f} ms  rel {err:.1e}", flush=True)
    et.BWD_LEVEL_FAST = True
    best_f = min((r for r in rows if r["kind"] == "fwd"), key=lambda r: r["ms"])
    best_b = min((r for r in rows if r["kind"] == "bwd"), key=lambda r: r["ms"])
    print("best fwd", best_f, "\nbest bwd", best_b, flush=True)
    et.FWD_ORDER = best_f["order"]
    et.BWD_LEVEL_FAST = best_b["order"] == "level"
    for name, pts in (("uniform", u),):

        def fb(pts=pts):
            o = et.grid_encode(pts, enc.embeddings, enc.bufs, 16, 16, 2, block=best_f["block"],
                               warps=best_f["warps"], bwd_block=best_b["block"], bwd_warps=best_b["warps"],
                               gather_tables=enc.gather_tables)  # fmt: skip
            torch.autograd.grad(o, enc.embeddings, g)

        ms = bench(fb)
        rows.append({"kind": "fwd+bwd best", "points": name, "ms": ms})
        print(f"fwd+bwd best launch, {name}: {ms:.3f} ms", flush=True)
    meta = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
            "n": n, "best_fwd": best_f, "best_bwd": best_b}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
