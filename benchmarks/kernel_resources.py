"""Registers and spills of the NeRF side's Triton kernels on sm_90, without a GPU (issue 26).

Each kernel is lowered by Triton's own compiler for an H100/H200 (``tests/helpers_triton.compile_for_sm90``)
and its PTX assembled by the ``ptxas`` Triton ships, whose ``-v`` report gives registers per thread and spill
bytes. Registers bound occupancy (65,536 per SM: a 128-thread program at 255 registers leaves room for two
programs per SM); spills are local-memory traffic inside the kernel. This is what can be known before a GPU
runs the kernel: it says where a kernel will struggle, not how fast it is.

    python benchmarks/kernel_resources.py [--json benchmarks/results/kernel_resources.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

FLOATS = ("eps", "bound", "two_bound", "blob_a", "blob_k", "time_max")
INTS = ("stride_ptr", "wmask_ptr", "start_ptr", "hashed_ptr")


def kernels() -> list[tuple[str, object, dict, int]]:
    """(name, kernel, constexprs, warps) at the paper field's shapes and the launches' settings."""
    from animate124.scene.grid import KernelOptions, stencil
    from animate124.scene.grid import kernels as K

    o = KernelOptions()
    grid = [
        ("grid forward (plain)", K._grid_fwd_kernel, {"C": 2, "BLOCK": o.fwd_block, "HAS_TIME": True,
                                                      "SMOOTH": False}, o.fwd_warps),
        ("grid forward (static, quad table)", K._grid_fwd_pair_kernel, {
            "BLOCK": o.pair_fwd_block, "HAS_TIME": False, "SMOOTH": False, "QUAD": True}, o.pair_fwd_warps),
        ("grid forward (clip slots, pair table)", K._grid_fwd_pair_kernel, {
            "BLOCK": o.pair_fwd_block, "HAS_TIME": True, "SMOOTH": False, "QUAD": False}, o.pair_fwd_warps),
        ("grid backward (pairs, 16-byte reductions)", K._grid_bwd_kernel, {
            "C": 2, "BLOCK": o.pair_bwd_block, "HAS_TIME": True, "SMOOTH": False, "VEC2": True, "ASM": K.VEC2_ASM,
            "PAIR": True, "ASM4": K.PAIR_ASM}, o.pair_bwd_warps),
        ("grid backward (plain, 8-byte reductions)", K._grid_bwd_kernel, {
            "C": 2, "BLOCK": o.bwd_block, "HAS_TIME": True, "SMOOTH": False, "VEC2": True, "ASM": K.VEC2_ASM,
            "PAIR": False, "ASM4": K.PAIR_ASM}, o.bwd_warps),
    ]  # fmt: skip
    # each grid kernel again with KernelOptions(z_merge=True) (issue 26: 4 corners at the levels ignoring z)
    zmerged = [(f"{name} + z-merge", fn, {**ce, "ZMERGE": True}, w) for name, fn, ce, w in grid]
    return [
        *(row for pair in zip(grid, zmerged, strict=True) for row in pair),
        *((f"fused normals {name} (stencil)", fn, ce, w) for name, fn, ce, w in stencil.kernel_settings()),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the table here")
    a = ap.parse_args(argv)
    from helpers_triton import compile_for_sm90, ptxas_report

    types = {
        **{f: "fp32" for f in FLOATS},
        **{i: "*i32" for i in INTS},
        "slot_ptr": "*i32",
        "relu_ptr": "*i32",
    }
    rows = []
    for name, fn, ce, warps in kernels():
        k = compile_for_sm90(fn, ce, types, warps)
        rep = ptxas_report(k.asm["ptx"])
        threads = 32 * warps
        programs_per_sm = min(32, 65536 // (threads * max(rep["registers"], 1)))  # the register file alone
        rows.append({"kernel": name, "warps": warps, **rep, "programs_per_sm_by_registers": programs_per_sm})
        print(
            f"{name:54s} {warps} warps  {rep['registers']:3d} registers  spills {rep['spill_store_bytes']:4d} B "
            f"stored / {rep['spill_load_bytes']:4d} B loaded  {programs_per_sm} programs/SM by registers"
        )
    out = {"target": "sm_90a (H100/H200)", "triton": __import__("triton").__version__, "kernels": rows}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
