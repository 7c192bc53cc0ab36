"""``benchmarks/bench_field_step.py``'s comparison is fair: every variant starts from the same field and Adam state.

Before 2026-12-07 each variant went on training the field its predecessors had trained, so on the GPU the
trained scene's live share fell from 0.69 to 0.47 along the list and the later variants looked faster
(BENCHMARKS.md §15.11). Without the restore the two variants below differ in live share on the CPU too (0.499
against 0.502 fresh, 0.560 against 0.565 trained), so this fails if the snapshot is dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_every_variant_starts_from_the_same_field(tmp_path):
    import bench_field_step

    out = bench_field_step.main(
        ["--device", "cpu", "--quick", "--trained", "--variants", "fused_tv,defaults", "--rounds", "2",
         "--iters", "2", "--warmup", "1", "--out", str(tmp_path / "f.json")]
    )  # fmt: skip
    for phase in (out["variants"], out["trained"]["variants"]):
        a, b = phase["fused_tv"], phase["defaults"]
        assert a["rounds"] == b["rounds"] == 2
        assert a["samples"] == b["samples"] and a["live_share"] == b["live_share"], (a, b)
    assert set(out["by_variant"]) == {"fused_tv", "defaults"}  # issue 26's keys, from --trained
    assert (tmp_path / "f.json").exists()


def test_the_defaults_variant_is_todays_kernel_defaults():
    """``defaults`` is issue 26's "after": the kernel options it sets must be ``KernelOptions()``'s defaults
    (an opt-in such as ``stencil_dot="tf32x3"`` belongs in its own variant)."""
    import bench_field_step

    from animate124.scene.grid import KernelOptions

    v, d = bench_field_step.VARIANTS["defaults"], KernelOptions()
    assert v.get("z_merge", False) == d.z_merge and v.get("tv_batched", False) == d.tv_batched
    assert (
        v.get("stencil_dot", "ieee") == d.stencil_dot
        and v.get("stencil_linear", "triton") == d.stencil_linear
    )
    assert v.get("skip_zero_rows", False) == d.skip_zero_rows
    assert v.get("tv_grids_per_call", 8) == d.tv_grids_per_call
    assert v.get("tv_cuda_graph", False) == d.tv_cuda_graph
    # march_tv keeps measuring what it measured before the two became defaults
    assert bench_field_step.VARIANTS["march_tv"].get("skip_zero_rows", False) != d.skip_zero_rows
