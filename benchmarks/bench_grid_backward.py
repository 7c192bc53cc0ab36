"""Grid-encoder backward variants on the GPU: program order (block- or level-fastest) x atomics
(scalar or 8-byte vector). 2^20 points, 16 levels x 2 features, 2^16 tiled tables (SPEC 3.1).

Usage: python benchmarks/bench_grid_backward.py --out grid_backward.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton.testing

from animate124.scene import encoding_triton as et
from animate124.scene.encoding import GridEncoding, GridEncodingConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("grid_backward.json"))
    ap.add_argument("--n", type=int, default=2**20)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    cfg = GridEncodingConfig()
    ref = GridEncoding(cfg, backend="torch").to(dev)
    with torch.no_grad():
        ref.embeddings.uniform_(-1, 1)
    enc = GridEncoding(cfg, backend="triton").to(dev)
    with torch.no_grad():
        enc.embeddings.copy_(ref.embeddings)
    x = torch.rand(args.n, 3, device=dev) * 2 - 1
    g = torch.randn(args.n, cfg.output_dim, device=dev)
    (ref(x) * g).sum().backward()
    g_ref = ref.embeddings.grad.clone()
    rows = []
    for order in ("block", "level"):
        for atomics in ("scalar", "auto"):
            et.BWD_LEVEL_FAST = order == "level"
            et.ATOMICS = atomics
            enc.embeddings.grad = None
            (enc(x) * g).sum().backward()
            err = ((enc.embeddings.grad - g_ref).norm() / g_ref.norm()).item()
            out = enc(x)

            def bwd(out=out):
                enc.embeddings.grad = None
                out.backward(g, retain_graph=True)

            def fwd_bwd():
                enc.embeddings.grad = None
                (enc(x) * g).sum().backward()

            b = triton.testing.do_bench(bwd, warmup=50, rep=300, return_mode="median")
            fb = triton.testing.do_bench(fwd_bwd, warmup=50, rep=300, return_mode="median")
            rows.append({"order": order, "atomics": atomics, "bwd_ms": b, "fwd_bwd_ms": fb, "grad_rel": err})
            print(
                f"order={order:5s} atomics={atomics:6s} bwd {b:7.3f} ms  fwd+bwd {fb:7.3f} ms  grad_rel {err:.2e}"
            )
    meta = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "n": args.n,
            "vec2_broken": et._VEC2_BROKEN}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
