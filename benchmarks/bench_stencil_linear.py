"""Where the fused normals' first-layer backward kernel spends its time (issue 26; CUDA).

``_stencil_linear_bwd_kernel`` (``animate124/scene/grid/stencil_kernels.py``, backward part 2) was 29-30 ms of a
dynamic step on an H100 (BENCHMARKS.md §15.10-15.11): 28 calls of about 1.03 ms on 786,432 lanes (a chunk of
2^17 samples × 6 neighbours), about 6 TFLOP/s on its two ``[lanes, 64] × [64, 32]`` products and about
0.2 TB/s on its ~270 bytes a lane, so neither the products nor the memory bound it; ``tf32x3`` tensor-core
products took 4.5 % off. This script times the kernel on one chunk with random inputs at the paper's shapes:

* the kernel as launched today (``TILE=32``, 8 warps, 32 tiles a program) and at other tile sizes, warps and
  tiles per program, with ``ieee``, ``tf32`` and ``tf32x3`` products;
* a copy with the two products removed (``none``: the loads, the ReLU-mask unpacking, ``db₁`` and the store
  only), which says how much of the time the products are;
* the same maths in torch (``dhid`` materialised, two cuBLAS fp32 products with TF32 off), for scale;

and checks each against float64 (relative error of ``dfeat`` and ``dW₁``, to say what a precision costs).

    python benchmarks/bench_stencil_linear.py --out OUT.json          # CUDA
    python benchmarks/bench_stencil_linear.py --device cpu --quick    # the interpreter: the checks only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from animate124.scene.grid import kernels as K  # noqa: E402
from animate124.scene.grid import stencil_kernels as SK  # noqa: E402

if K.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit  # pragma: no cover - jit
    def _linear_no_dots(
        feat_ptr, dh_ptr, relu_ptr, w1_ptr, w2_ptr, dfeat_ptr, part_ptr, R, FA, lane_stride, tiles,
        H: tl.constexpr, HP: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, TILE: tl.constexpr,
    ):  # fmt: skip
        """``_stencil_linear_bwd_kernel`` without its two products: the same loads, mask unpacking, ``db₁`` and
        stores (``dfeat`` gets ``feat``, ``dW₁`` the column sums of ``feat``); its time is the kernel's overhead."""
        pid = tl.program_id(0)
        hc = tl.arange(0, HP)
        fc = tl.arange(0, FP)
        hm = hc < H
        fm = fc < FA
        NW: tl.constexpr = (H + 15) // 16
        w2 = tl.load(w2_ptr + hc, mask=hm, other=0.0)
        acc = tl.zeros([FP], dtype=tl.float32)
        db1 = tl.zeros([HP], dtype=tl.float32)
        for i in range(0, tiles):
            r = (pid * tiles + i) * TILE + tl.arange(0, TILE)
            rm = r < R
            dh = tl.load(dh_ptr + r, mask=rm, other=0.0)
            wm = rm[:, None] & hm[None, :]
            word = tl.load(relu_ptr + r[:, None] * NW + (hc // 16)[None, :], mask=wm, other=0)
            dhid = tl.where(((word >> (hc % 16)[None, :]) & 1) != 0, dh[:, None] * w2[None, :], 0.0)
            db1 += tl.sum(dhid, axis=0)
            tm = rm[:, None] & fm[None, :]
            feat = tl.load(feat_ptr + fc[None, :] * lane_stride + r[:, None], mask=tm, other=0.0)
            acc += tl.sum(feat, axis=0)
            tl.store(dfeat_ptr + fc[None, :] * lane_stride + r[:, None], feat, mask=tm)
        pw = part_ptr + pid * (HP * FP + HP)
        tl.store(pw + fc, acc)
        tl.store(pw + HP * FP + hc, db1)


def inputs(lanes: int, h: int, f: int, dev: torch.device, seed: int = 0) -> dict:
    """Random inputs at the kernel's layouts: ``feat [F, lanes]``, ``dh [lanes]``, ReLU words ``[lanes, H/16]``
    (about half the bits set, as a ReLU layer's), ``W₁ [H, F]``, ``W₂[0] [H]``; ``dh`` spans the magnitudes of
    a step's (log-uniform over 1e-6..1e2, random signs)."""
    g = torch.Generator().manual_seed(seed)
    nw = (h + 15) // 16
    dh = torch.exp(torch.empty(lanes).uniform_(-13.8, 4.6, generator=g)) * (
        torch.randint(0, 2, (lanes,), generator=g) * 2 - 1
    )
    return {
        "feat": (torch.randn(f, lanes, generator=g) * 0.1).to(dev),
        "dh": dh.float().to(dev),
        "relu": torch.randint(0, 2**16, (lanes, nw), generator=g, dtype=torch.int32).to(dev),
        "w1": (torch.randn(h, f, generator=g) / 8).to(dev),
        "w2": (torch.randn(h, generator=g) / 8).to(dev),
    }


def reference(x: dict, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dfeat [F, lanes]``, ``dW₁ [H, F]``, ``db₁ [H]`` in ``dtype`` (torch, TF32 off)."""
    h = x["w1"].shape[0]
    bits = torch.arange(h, device=x["relu"].device)
    on = ((x["relu"][:, bits // 16] >> (bits % 16)) & 1) != 0
    dhid = torch.where(on, x["dh"][:, None].to(dtype) * x["w2"][None, :].to(dtype), 0.0)
    dfeat = (dhid @ x["w1"].to(dtype)).T
    dw1 = dhid.T @ x["feat"].T.to(dtype)
    return dfeat, dw1, dhid.sum(0)


def run_kernel(x: dict, tile: int, warps: int, tiles_per_program: int, prec: str) -> tuple:
    """One launch as ``stencil._backward_chunks`` makes it (or the no-products copy for ``prec='none'``):
    ``(dfeat, dW₁, db₁)`` and a launcher for timing."""
    f, lanes = x["feat"].shape
    h = x["w1"].shape[0]
    hp, fp = max(16, h), max(16, triton.next_power_of_2(f))
    ntiles = triton.cdiv(lanes, tile)
    tiles = min(tiles_per_program, ntiles)
    pb = triton.cdiv(ntiles, tiles)
    dfeat = torch.empty_like(x["feat"])
    part = torch.empty(pb, hp * fp + hp, device=x["feat"].device, dtype=torch.float32)

    def launch() -> None:
        args = (x["feat"], x["dh"], x["relu"], x["w1"], x["w2"], dfeat, part, lanes, f, lanes, tiles)
        if prec == "none":
            _linear_no_dots[(pb,)](*args, H=h, HP=hp, F=f, FP=fp, TILE=tile, num_warps=warps)
        else:
            SK._stencil_linear_bwd_kernel[(pb,)](
                *args, H=h, HP=hp, F=f, FP=fp, TILE=tile, PREC=prec, num_warps=warps
            )

    launch()
    tot = part.sum(0)
    return dfeat, tot[: hp * fp].view(hp, fp)[:h, :f], tot[hp * fp : hp * fp + h], launch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


def timed(fn, iters: int) -> float:
    """Median ms of ``fn`` on the GPU (``bench_encoding.bench``: Triton's ``do_bench``, or CUDA events)."""
    from bench_encoding import bench

    return bench(fn, torch.device("cuda"), warmup=3, rep=10 * iters)


CONFIGS = [  # (tile, warps, tiles per program, precision); the first is today's launch
    (32, 8, 32, "ieee"), (32, 8, 32, "tf32x3"), (32, 8, 32, "tf32"), (32, 8, 32, "none"),
    (32, 4, 32, "ieee"), (64, 4, 16, "ieee"), (64, 8, 16, "ieee"), (128, 4, 8, "ieee"), (128, 8, 8, "ieee"),
    (32, 8, 8, "ieee"), (32, 8, 128, "ieee"), (64, 4, 16, "tf32"), (128, 4, 8, "tf32"), (128, 8, 8, "tf32"),
    (64, 4, 16, "tf32x3"), (128, 8, 8, "tf32x3"), (64, 4, 16, "none"), (128, 8, 8, "none"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out")
    p.add_argument("--lanes", type=int, default=6 * 2**17)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="few lanes, the first configs (the interpreter)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("without CUDA, run under TRITON_INTERPRET=1 (the checks only)")
    lanes = 6 * 50 if args.quick else args.lanes
    configs = CONFIGS[:4] if args.quick else CONFIGS
    torch.backends.cuda.matmul.allow_tf32 = False
    x = inputs(lanes, 64, 32, dev)
    ref = reference(x)
    rows = []
    for tile, warps, tpp, prec in configs:
        dfeat, dw1, db1, launch = run_kernel(x, tile, warps, tpp, prec)
        row = {"tile": tile, "warps": warps, "tiles_per_program": tpp, "precision": prec}
        if prec != "none":
            row.update(dfeat_rel=rel(dfeat, ref[0]), dw1_rel=rel(dw1, ref[1]))
        row["db1_rel"] = rel(db1, ref[2])
        if cuda:
            row["ms"] = timed(launch, args.iters)
        rows.append(row)
        print(
            json.dumps({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()}), flush=True
        )
    out = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (interpreter)",
        "lanes": lanes,
        "kernel": rows,
    }
    if cuda:
        f32 = reference(x, torch.float32)
        out["torch_fp32"] = {
            "ms": timed(lambda: reference(x, torch.float32), args.iters),
            "dfeat_rel": rel(f32[0], ref[0]), "dw1_rel": rel(f32[1], ref[1]),
        }  # fmt: skip
        from animate124.scene.grid.stencil import _first_layer_blas

        bits = torch.arange(64, device=dev)
        on = ((x["relu"][:, bits // 16] >> (bits % 16)) & 1) != 0
        dhid = torch.where(on, x["dh"][:, None] * x["w2"][None, :], 0.0).contiguous()
        dfeat, dw1, db1 = (
            torch.empty_like(x["feat"]),
            torch.zeros(64, 32, device=dev),
            torch.zeros(64, device=dev),
        )
        _first_layer_blas(dhid, x["feat"], x["w1"], dfeat, dw1, db1)
        # the errors of this one call, before the timed calls add more into dw1 and db1 (they accumulate)
        out["blas"] = {
            "dfeat_rel": rel(dfeat, ref[0]),
            "dw1_rel": rel(dw1, ref[1]),
            "db1_rel": rel(db1, ref[2]),
        }
        out["blas"]["ms"] = timed(
            lambda: _first_layer_blas(dhid, x["feat"], x["w1"], dfeat, dw1, db1), args.iters
        )
        torch.backends.cuda.matmul.allow_tf32 = True
        t32 = reference(x, torch.float32)
        out["torch_tf32"] = {
            "ms": timed(lambda: reference(x, torch.float32), args.iters),
            "dfeat_rel": rel(t32[0], ref[0]), "dw1_rel": rel(t32[1], ref[1]),
        }  # fmt: skip
        torch.backends.cuda.matmul.allow_tf32 = False
        x16 = {k: (v.half() if v.is_floating_point() else v) for k, v in x.items()}
        h16 = reference(x16, torch.float16)
        out["torch_fp16"] = {
            "ms": timed(lambda: reference(x16, torch.float16), args.iters),
            "dfeat_rel": rel(h16[0], ref[0]), "dw1_rel": rel(h16[1], ref[1]),
        }  # fmt: skip
        print({k: out[k] for k in ("blas", "torch_fp32", "torch_tf32", "torch_fp16")})
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
