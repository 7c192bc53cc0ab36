"""z-merge in the grid kernels (``KernelOptions(z_merge=True)``, issue 26) against the reference and today's kernels.

A tiled level whose index ignores z (``strides[2] == 0``, the stride guard) has the same rows at its z and z+1
corners, so with ``z_merge`` the kernels gather and reduce the 4 corners of the z face with weights ``w_x·w_y``
(``f₂`` set to 0, so ``w·(1 − 0)`` is exactly ``w_x·w_y``) instead of 8 corners with ``w_x·w_y·w_z``.

Error analysis (``u = 2⁻²⁴``; ``p_c = fl(w_x·w_y)`` and the corner values ``v_c`` (time-blended where the table is
stacked) are computed by the same instructions in every path, so take them as exact inputs and compare each
path with ``S = Σ_c p_c·v_c`` over the 4 face corners):

* forward, per output: today ``Σ_{c,z} fl(fl(p_c·w_z)·v_c)`` over 8 terms, with ``w_{z0} = fl(1 − f₂)`` and
  ``w_{z1} = f₂ ∈ [0, 1]``; each term has ≤ 3 roundings and the 8-term sum ≤ 7, so
  ``|today − S| ≤ γ₁₀·Σ_c p_c|v_c|·((1 − f₂) + f₂) = γ₁₀·A`` (``γ_n = nu/(1 − nu)``). The merged path sums 4 terms
  of one product each: ``|merged − S| ≤ γ₄·A``. The torch reference is another 8-term fp32 sum (``≤ γ₁₀·A``).
  Hence ``|merged − today|, |merged − reference| ≤ (γ₁₀ + γ₄)·A < 16u·A`` with ``A`` the reference encoding of
  ``|table|`` (weights are non-negative, so it is ``Σ_c w_c|v_c|``, the same sum to ``O(u)``).
* table gradient, per row ``r`` receiving ``M_r`` corner contributions today (points × corners × time grids):
  every path adds terms ``p·w_z·g`` (today, 2 per merged pair) or ``p·g`` (merged) of ≤ 3 roundings in some
  order (atomics), plus the pair fold (1 addition) and, on the slot path, the scatter (≤ 3 operations per slot):
  ``|path − exact| ≤ γ_{M_r+6}·B_r`` with ``B_r = Σ p·w_z·|g|`` = the reference's table gradient for ``|table|``
  and ``|g|``. Hence ``|merged − today|, |merged − reference| ≤ 2γ_{M+6}·B_r ≤ 2.1·(M + 6)·u·B_r`` with
  ``M = max_r M_r`` (counted from the corner rows).

The checks compare each difference with its bound elementwise (``ratio ≤ 1``; zero bound, zero difference).
A wrong merge is far outside: a z weight not dropped errs by ``f₂·|v|`` (``~10⁶`` times the bound), merged
hashed levels or wrong rows by ``O(|v|)``. Beyond the bounds: with ``z_merge`` the features of a merged level do
not depend on z at all (bitwise), the levels that keep z give today's bits, and the kernels' masked loads and
reductions (counted in the interpreter) drop by exactly half at the merged levels.

Small grids (6 levels, 2^8 tables: levels 3–5 ignore z) and 200 points keep the interpreter fast.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers_triton import compile_for_sm90, needs_cuda, needs_triton, run_interpreted

U = 2.0**-24
SMALL = dict(num_levels=6, base_resolution=4, desired_resolution=64, log2_table_size=8)
N_POINTS = 200


def _merged_levels(enc, n_active: int) -> list[int]:
    return [lv.level for lv in enc.layout.levels[:n_active] if lv.strides[2] == 0 and not lv.hashed]


def _max_row_count(enc, x: torch.Tensor, t: torch.Tensor | None, n_active: int) -> int:
    """``M``: the most corner contributions (points × 8 corners × time grids) any table row gets today."""
    from animate124.scene.grid.reference import CORNER_BITS, corner_index

    u = ((x + enc.bound) / (2 * enc.bound)).to(enc.bufs.scales.device)
    inside = ((u >= 0) & (u <= 1)).all(-1)
    pg = torch.floor(u[inside, None, :] * enc.bufs.scales[:n_active][None, :, None] + 0.5).long()
    offsets = [0]
    if t is not None:
        g = t.to(u.device)[inside].reshape(-1, 1).float().clamp(0, 1) * (enc.time_grid_size - 1)
        offsets = [torch.floor(g).long() * enc.entries_per_grid, torch.ceil(g).long() * enc.entries_per_grid]
    rows = enc.embeddings.numel() // enc.level_dim
    counts = torch.zeros(rows, dtype=torch.long, device=u.device)
    for bits in CORNER_BITS:
        idx = corner_index(pg, bits, enc.bufs, n_active)
        for off in offsets:
            counts += torch.bincount((idx + off).reshape(-1), minlength=rows)
    return int(counts.max())


@contextlib.contextmanager
def _lanes():
    """Count the active lanes of the grid forward kernels' table loads (the gather table or the parameter the
    kernel reads, its third argument) and of the grid backward's atomic adds (interpreter only)."""
    import numpy as np
    from triton.runtime import interpreter as I  # noqa: N812

    from animate124.scene.grid import kernels as K

    counts = {"loads": 0, "atomics": 0}
    running: dict = {}
    load, rmw = I.InterpreterBuilder.create_masked_load, I.InterpreterBuilder.create_atomic_rmw

    def counted_load(self, ptrs, mask, other, *a):
        if "table" in running:
            lo, hi = running["table"]
            p, m = ptrs.data, np.broadcast_to(mask.data, ptrs.data.shape)
            counts["loads"] += int(np.count_nonzero(m & (p >= lo) & (p < hi)))
        return load(self, ptrs, mask, other, *a)

    def counted_rmw(self, op, ptr, val, mask, *a):
        if "bwd" in running:
            counts["atomics"] += int(np.count_nonzero(np.broadcast_to(mask.data, ptr.data.shape)))
        return rmw(self, op, ptr, val, mask, *a)

    def wrap(kernel, key: str):
        run = kernel.run

        def counted(*a, **kw):
            t = a[2]
            running[key] = (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
            try:
                return run(*a, **kw)
            finally:
                running.clear()

        kernel.run = counted

    I.InterpreterBuilder.create_masked_load = counted_load
    I.InterpreterBuilder.create_atomic_rmw = counted_rmw
    kernels = {"table": (K._grid_fwd_kernel, K._grid_fwd_pair_kernel), "bwd": (K._grid_bwd_kernel,)}
    for key, ks in kernels.items():
        for k in ks:
            wrap(k, key)
    try:
        yield counts
    finally:
        I.InterpreterBuilder.create_masked_load, I.InterpreterBuilder.create_atomic_rmw = load, rmw
        for ks in kernels.values():
            for k in ks:
                del k.run  # the class's method again


def _ratio(diff: torch.Tensor, bound: torch.Tensor) -> float:
    """``max(|diff| / bound)``, 0/0 = 0 (a zero bound needs a zero difference)."""
    d = diff.abs().double()
    r = torch.where(d == 0, torch.zeros_like(d), d / bound.double())
    return float(r.max())


def _case(cls, cfg, opts: dict, x, t=None, max_level=None, interp=True, **kw) -> dict:
    """Torch reference, today's kernels (``off``) and ``z_merge`` (``on``) on one table: the differences as
    ratios of their bounds (module docstring), the exact checks, and (``interp``) the lane counts."""
    import copy

    from animate124.scene.grid import KernelOptions

    dev = x.device
    torch.manual_seed(0)
    ref = cls(cfg, backend="torch", **kw).to(dev)
    with torch.no_grad():
        ref.embeddings.uniform_(-1, 1)
    encs = {"ref": ref}
    for name, zm in (("off", False), ("on", True)):
        encs[name] = cls(cfg, backend="triton", kernel_options=KernelOptions(**opts, z_merge=zm), **kw).to(
            dev
        )
        with torch.no_grad():
            encs[name].embeddings.copy_(ref.embeddings)
    args = (x,) if t is None else (x, t)
    g = torch.randn(x.shape[0], ref.output_dim, generator=torch.Generator().manual_seed(7)).to(dev)
    n_active = ref._active_levels(max_level)
    merged = _merged_levels(ref, n_active)
    absref = copy.deepcopy(ref)
    with torch.no_grad():
        absref.embeddings.abs_()
    a_bound = absref(*args, max_level=max_level)
    (a_bound * g.abs()).sum().backward()
    a_bound, b_bound = a_bound.detach(), absref.embeddings.grad
    m = _max_row_count(ref, x, t, n_active)
    fwd_tol = 16 * U * a_bound
    grad_tol = 2.1 * (m + 6) * U * b_bound
    out, grad, lanes = {}, {}, {}
    for name, enc in encs.items():
        ctx = _lanes() if interp and name != "ref" else contextlib.nullcontext()
        with ctx as counts:
            o = enc(*args, max_level=max_level)
            (o * g).sum().backward()
        out[name], grad[name] = o.detach(), enc.embeddings.grad
        lanes[name] = dict(counts) if counts is not None else None
    c = ref.level_dim
    cols = lambda levels: [lv * c + j for lv in levels for j in range(c)]  # noqa: E731
    kept = cols([lv for lv in range(n_active) if lv not in merged])
    res = {
        "merged": merged,
        "n_active": n_active,
        "max_row_count": m,
        "fwd_on_ref": _ratio(out["on"] - out["ref"], fwd_tol),
        "fwd_on_off": _ratio(out["on"] - out["off"], fwd_tol),
        "fwd_off_ref": _ratio(out["off"] - out["ref"], fwd_tol),
        "grad_on_ref": _ratio(grad["on"] - grad["ref"], grad_tol),
        "grad_on_off": _ratio(grad["on"] - grad["off"], grad_tol),
        "grad_off_ref": _ratio(grad["off"] - grad["ref"], grad_tol),
        "grad_norm": grad["ref"].norm().item(),
        "fwd_on_ref_abs": (out["on"] - out["ref"]).abs().max().item(),
        "grad_on_ref_rel": ((grad["on"] - grad["ref"]).norm() / grad["ref"].norm()).item(),
        "kept_levels_bitwise": bool(torch.equal(out["on"][:, kept], out["off"][:, kept])),
        "fwd_on_off_max": (out["on"] - out["off"]).abs().max().item(),
        "lanes": {k: v for k, v in lanes.items() if k != "ref"},
        "slot_builds": encs["on"].launch_state.slot_builds,
        "quad_builds": encs["on"].launch_state.gather_builds,
    }
    # at a merged level the features do not depend on z at all (with z_merge), bit for bit
    x2 = x.clone()
    x2[:, 2] = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(11)).to(dev) * 2 - 1
    x2[:, 2] = torch.where(x[:, 2].abs() <= 1, x2[:, 2], x[:, 2])  # points outside stay outside
    args2 = (x2,) if t is None else (x2, t)
    zc = cols(merged)
    with torch.no_grad():
        for name in ("on", "off"):
            res[f"z_invariant_{name}"] = bool(
                torch.equal(
                    encs[name](*args, max_level=max_level)[:, zc],
                    encs[name](*args2, max_level=max_level)[:, zc],
                )
            )
    return res


def _points(n: int = N_POINTS) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, generator=g) * 2.2 - 1.1  # some outside the box
    x[0] = torch.tensor([1.0, -1.0, 1.0])  # corners and faces of the box
    x[1] = torch.tensor([-1.0, 0.3, -1.0])
    return x


def _clip_times(n: int = N_POINTS) -> torch.Tensor:
    """Frame-major times of a clip (6 frames, between time grids), the first 30 at t = 0."""
    t = ((torch.arange(n) * 6 // n) * 37 + 8).float().div(256).reshape(-1, 1)
    t[:30] = 0.0
    return t


def _render_case() -> dict:
    """A 2-frame clip through the renderer (the 4D field's slot path, lambertian shading, normals) with
    ``z_merge`` on and off: images, normal images and every gradient, and the table loads counted."""
    import copy

    from helpers_grid import field_kwargs, paper_grid_config, render_clip_on_off

    from animate124.scene.fields import DynamicField
    from animate124.scene.grid import KernelOptions

    cfg = paper_grid_config(num_levels=4, base_resolution=4, desired_resolution=32, log2_table_size=9)
    torch.manual_seed(0)
    off = DynamicField(
        cfg, time_grid_size=4, backend="triton",
        kernel_options=KernelOptions(slot_min_points_per_time=1, z_merge=False), **field_kwargs(),
    )  # fmt: skip
    with torch.no_grad():
        off.encoder.embeddings.uniform_(-1, 1)
    on = copy.deepcopy(off)
    on.encoder.kernel_options = KernelOptions(slot_min_points_per_time=1, z_merge=True)
    res = render_clip_on_off(on, off, measure=lambda f: _lanes())
    a, b = res["on"], res["off"]
    out = {
        "rgb_max": (a[0] - b[0]).abs().max().item(),
        "normal_max": (a[1] - b[1]).abs().max().item(),
        "lanes": [dict(a[3]), dict(b[3])],
        "samples": a[4],
        "grad_names": sorted(a[2]),
        "merged": _merged_levels(on.encoder, on.encoder.num_levels),
        "n_active": on.encoder.num_levels,
    }
    for k in a[2]:
        out[f"{k}_rel"] = ((a[2][k] - b[2][k]).norm() / b[2][k].norm().clamp_min(1e-30)).item()
    return out


def _interp_checks() -> dict:
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding, TimeGridEncoding

    tiled = paper_grid_config(**SMALL)
    smooth = paper_grid_config(**SMALL, interpolation="smoothstep")
    x, t_clip = _points(), _clip_times()
    t_rand = torch.rand(N_POINTS, 1, generator=torch.Generator().manual_seed(2))
    slots = {"slot_min_points_per_time": 8}
    one_block = {"fwd_block": 256, "bwd_block": 256}  # every point in one program: the interpreter is faster
    plain = {"pair_layout": False, **one_block}
    return {
        # static: quad-table forward, pair backward (the default kernels)
        "static_pairs": _case(GridEncoding, tiled, {}, x),
        "static_pairs_smooth": _case(GridEncoding, smooth, {}, x),
        "static_pairs_ml5": _case(GridEncoding, tiled, {}, x, max_level=5),
        # the plain kernels (one load / one reduction per corner)
        "static_plain": _case(GridEncoding, tiled, plain, x),
        "static_plain_smooth": _case(GridEncoding, smooth, plain, x),
        # time-stacked tables: the clip's slot path (blended pair forward, pair backward, slot scatter) ...
        "clip_slots": _case(TimeGridEncoding, tiled, slots, x, t_clip, time_grid_size=5),
        "clip_slots_smooth": _case(TimeGridEncoding, smooth, slots, x, t_clip, time_grid_size=5),
        # ... random times: the plain forward over two time grids, the pair backward ...
        "time_pairs_bwd": _case(TimeGridEncoding, tiled, one_block, x, t_rand, time_grid_size=5),
        # ... and all plain
        "time_plain": _case(TimeGridEncoding, tiled, plain, x, t_rand, time_grid_size=5),
        # nothing to merge: hashed levels (their z stride is 0 too, but the hash uses z), no stride guard
        "hash_plain": _case(GridEncoding, paper_grid_config(**SMALL, grid_type="hash"), one_block, x),
        "noguard": _case(GridEncoding, paper_grid_config(**SMALL, stride_guard=False), {}, x),
        "render": _render_case(),
    }


@pytest.fixture(scope="module")
def interp() -> dict:
    return run_interpreted("test_scene_zmerge", timeout=600)


MERGING = [
    "static_pairs",
    "static_pairs_smooth",
    "static_pairs_ml5",
    "static_plain",
    "static_plain_smooth",
    "clip_slots",
    "clip_slots_smooth",
    "time_pairs_bwd",
    "time_plain",
]


@needs_triton
@pytest.mark.parametrize("case", MERGING)
def test_z_merge_matches_reference_and_todays_kernels(interp, case):
    """Forward values and table gradients within the fp32 bounds of the module docstring, against the torch
    reference and against today's 8-corner kernels; today's kernels are held to the same bound (a check that
    the bound is not loose where it counts)."""
    r = interp[case]
    assert r["merged"], r  # the grid has levels that ignore z
    assert r["grad_norm"] > 0
    for k in ("fwd_on_ref", "fwd_on_off", "fwd_off_ref", "grad_on_ref", "grad_on_off", "grad_off_ref"):
        assert r[k] <= 1.0, (k, r)
    assert r["fwd_on_off_max"] > 0, r  # the merged path ran: it rounds differently


@needs_triton
@pytest.mark.parametrize("case", MERGING)
def test_z_merge_reads_and_reduces_half_at_merged_levels(interp, case):
    """Exact properties of the merged path: features of a merged level independent of z (bitwise; today's
    are not, by rounding), today's bits at the levels that keep z, and the table loads and the backward's
    atomic adds (active lanes) cut by exactly half at the merged levels: ``1 − m/(2L)`` of today's."""
    r = interp[case]
    assert r["z_invariant_on"] and not r["z_invariant_off"], r
    assert r["kept_levels_bitwise"], r
    on, off = r["lanes"]["on"], r["lanes"]["off"]
    levels, merged = r["n_active"], len(r["merged"])
    assert off["loads"] > 0 and off["atomics"] > 0, r
    assert 2 * levels * on["loads"] == (2 * levels - merged) * off["loads"], r
    assert 2 * levels * on["atomics"] == (2 * levels - merged) * off["atomics"], r
    slots = case.startswith("clip")
    assert r["slot_builds"] == (1 if slots else 0) and r["quad_builds"] == (
        1 if case.startswith("static_pairs") else 0
    )


@needs_triton
@pytest.mark.parametrize("case", ["hash_plain", "noguard"])
def test_z_merge_leaves_levels_that_use_z_alone(interp, case):
    """Hashed levels (whose z stride is also 0) and grids without the stride guard have nothing to merge:
    today's bits and today's loads and reductions."""
    r = interp[case]
    assert not r["merged"], r
    assert r["fwd_on_off_max"] == 0.0 and r["grad_on_off"] == 0.0 and r["kept_levels_bitwise"], r
    assert r["fwd_on_ref"] <= 1.0 and r["grad_on_ref"] <= 1.0, r
    assert r["lanes"]["on"] == r["lanes"]["off"], r


@needs_triton
def test_z_merge_in_the_renderer(interp):
    """The assembled render of a 2-frame clip (slot path, lambertian, finite-difference normals, backward)
    with ``z_merge`` on and off: the features differ by < 16u of their scale (above), which the MLPs carry
    into the image and, divided by 2ε = 0.02, into the normals; the tolerances are those of the fused
    normals' render test (tests/test_scene_stencil.py), which has the same kind of fp32 differences. Every
    grid call of the render (samples, normals, their recompute, backward) merged: its table loads and
    reductions are 7/8 of today's (level 3 of 4 ignores z)."""
    r = interp["render"]
    assert r["samples"] > 0
    assert r["rgb_max"] <= 1e-5 and r["normal_max"] <= 1e-5, r
    assert "encoder.embeddings" in r["grad_names"], r
    for k in r["grad_names"]:
        assert r[f"{k}_rel"] <= 1e-4, (k, r)
    on, off = r["lanes"]
    levels, merged = r["n_active"], len(r["merged"])
    assert merged == 1 and off["loads"] > 0 and off["atomics"] > 0, r
    assert 2 * levels * on["loads"] == (2 * levels - merged) * off["loads"], r
    assert 2 * levels * on["atomics"] == (2 * levels - merged) * off["atomics"], r


def test_z_merge_is_on_by_default():
    """On since measured on an H100 (BENCHMARKS.md §15.6: the same function at the paper grid, 2-3 % faster)."""
    from animate124.scene.grid import KernelOptions

    assert KernelOptions().z_merge is True


@needs_triton
@pytest.mark.parametrize("pairs", [True, False])
def test_z_merge_kernels_compile_for_sm90_without_a_gpu(pairs):
    """With ``ZMERGE`` the forward kernels (quad, clip pairs, plain over time grids) and the backward (16-byte
    pair reductions, or 8-byte vector ones) lower to sm_90 cubins."""
    from animate124.scene.grid import KernelOptions
    from animate124.scene.grid import kernels as K

    o = KernelOptions()
    types = {
        "time_max": "fp32",
        **{p: "*i32" for p in ("stride_ptr", "wmask_ptr", "start_ptr", "hashed_ptr")},
    }
    z = {"ZMERGE": True, "SMOOTH": False}
    if pairs:
        fwd = [
            (K._grid_fwd_pair_kernel, {"BLOCK": o.pair_fwd_block, "QUAD": True, "HAS_TIME": False, **z}),
            (K._grid_fwd_pair_kernel, {"BLOCK": o.pair_fwd_block, "QUAD": False, "HAS_TIME": True, **z}),
        ]
    else:
        fwd = [(K._grid_fwd_kernel, {"C": 2, "BLOCK": o.fwd_block, "HAS_TIME": True, **z})]
    bwd = {"C": 2, "VEC2": True, "ASM": K.VEC2_ASM, "PAIR": pairs, "ASM4": K.PAIR_ASM, "HAS_TIME": True, **z}
    bwd["BLOCK"] = o.pair_bwd_block if pairs else o.bwd_block
    built = [compile_for_sm90(fn, ce, types, o.pair_fwd_warps if pairs else o.fwd_warps) for fn, ce in fwd]
    built.append(compile_for_sm90(K._grid_bwd_kernel, bwd, types, o.pair_bwd_warps))
    assert all("cubin" in k.asm for k in built)
    assert ("red.global.add.v4.f32" if pairs else "red.global.add.v2.f32") in built[-1].asm["ptx"]


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("path", ["static_pairs", "static_plain", "clip_slots", "time_random"])
def test_z_merge_gpu_paper_grid(path):
    """The paper grid (16 levels, 2^16 tables, levels 9–15 ignore z) on CUDA, 2^16 points: the compiled
    kernels (vector reductions on sm_90) with ``z_merge`` against today's kernels within the bound above
    (the same position arithmetic, so the same cells), against the torch reference as the other GPU tests
    (fp32 positions may differ by an FMA, see tests/test_scene_triton.py), and z-invariant at merged levels."""
    from helpers_grid import PAPER_TIME_GRIDS, paper_grid_config

    from animate124.scene.grid import GridEncoding, TimeGridEncoding

    n = 2**16
    dev = torch.device("cuda")
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)).to(dev) * 2.1 - 1.05
    cls, opts, t, kw = GridEncoding, {}, None, {}
    if path == "static_plain":
        opts = {"pair_layout": False}
    elif path != "static_pairs":
        cls, kw = TimeGridEncoding, {"time_grid_size": PAPER_TIME_GRIDS}
        if path == "clip_slots":
            opts = {"slot_min_points_per_time": 1}
            t = ((torch.arange(n) * 16 // n) * 15 + 8).float().div(256).reshape(-1, 1).to(dev)
        else:
            t = torch.rand(n, 1, generator=torch.Generator().manual_seed(1)).to(dev)
    r = _case(cls, paper_grid_config(), opts, x, t, interp=False, **kw)
    assert r["merged"] == list(range(9, 16)), r
    assert r["fwd_on_off"] <= 1.0 and r["grad_on_off"] <= 1.0, r
    assert r["fwd_on_ref_abs"] <= 1e-3 and r["grad_on_ref_rel"] <= 1e-5, r
    assert r["z_invariant_on"], r  # exact by construction; the kept levels' bits may differ by an FMA here
    assert r["slot_builds"] == (1 if path == "clip_slots" else 0), r
