"""Triton grid kernels vs the torch reference (values and table gradients).

CPU: the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) in a subprocess, because the
variable must be set before Triton decorates the kernels. GPU: gpu-marked tests at 2^18 points.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers_triton import compile_for_sm90, inline_asm_replication, needs_cuda, needs_triton, run_interpreted


def _compare(enc_ref, enc_tr, x, t=None, max_level=None) -> dict:
    """Max abs forward error and relative table-gradient error of two encoders sharing a table."""
    args = (x,) if t is None else (x, t)
    g = torch.randn(x.shape[0], enc_ref.output_dim, generator=torch.Generator().manual_seed(7)).to(x.device)
    out_ref = enc_ref(*args, max_level=max_level)
    (out_ref * g).sum().backward()
    out_tr = enc_tr(*args, max_level=max_level)
    (out_tr * g).sum().backward()
    gr, gt = enc_ref.embeddings.grad, enc_tr.embeddings.grad
    return {
        "fwd": (out_tr - out_ref).abs().max().item(),
        "grad_rel": ((gt - gr).norm() / gr.norm().clamp_min(1e-30)).item(),
        "grad_abs": (gt - gr).abs().max().item(),
        "grad_norm": gr.norm().item(),
        "zero_cols_ok": bool(max_level is None or torch.all(out_tr[:, max_level * enc_ref.level_dim :] == 0)),
    }


def _fwd_error_vs_fp64(enc_ref, enc_tr, *args, max_level=None) -> tuple[float, float]:
    """Max forward error of the fp32 torch reference and of Triton against a float64 evaluation.

    At the finest level the grid position ``u*scale + 0.5`` (scale ~2047) has an fp32 ulp of 2.4e-4, so
    every fp32 implementation is off exact maths by up to ~ulp x |feature difference|; the GPU contracts
    the multiply-add into an FMA and rounds differently from torch, so fp32-vs-fp32 differences of ~2e-4
    (features in [-1, 1]) are expected. The meaningful check is that Triton is as close to the exact
    value as the fp32 reference is.
    """
    import copy

    enc64 = copy.deepcopy(enc_ref).double()
    with torch.no_grad():
        exact = enc64(*[a.double() for a in args], max_level=max_level)
        e_ref = (enc_ref(*args, max_level=max_level).double() - exact).abs().max().item()
        e_tr = (enc_tr(*args, max_level=max_level).double() - exact).abs().max().item()
    return e_ref, e_tr


def _pair(cls, cfg, device, options=None, **kw):
    """A torch encoder and a Triton encoder (with ``options``) sharing a random table."""
    torch.manual_seed(0)
    ref = cls(cfg, backend="torch", **kw).to(device)
    with torch.no_grad():
        ref.embeddings.uniform_(-1, 1)
    tr = cls(cfg, backend="triton", kernel_options=options, **kw).to(device)
    with torch.no_grad():
        tr.embeddings.copy_(ref.embeddings)
    return ref, tr


def _counts(r: dict, tr) -> dict:
    r["pair_builds"] = tr.launch_state.gather_builds
    r["slot_builds"] = tr.launch_state.slot_builds
    return r


def _interp_checks() -> dict:
    """Run inside ``TRITON_INTERPRET=1``; returns error statistics per case."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding, KernelOptions, TimeGridEncoding

    small = dict(num_levels=6, base_resolution=4, desired_resolution=64, log2_table_size=8)
    cases = {
        "tiled": paper_grid_config(**small),
        "hash": paper_grid_config(**small, grid_type="hash"),
        "noguard": paper_grid_config(**small, stride_guard=False),
        "smooth": paper_grid_config(**small, interpolation="smoothstep"),
        "paper": paper_grid_config(),
    }
    g = torch.Generator().manual_seed(1)
    x = torch.rand(300, 3, generator=g) * 2.2 - 1.1  # some points outside the box
    res = {}
    for name, cfg in cases.items():
        ref, tr = _pair(GridEncoding, cfg, "cpu")
        res[name] = _counts(_compare(ref, tr, x), tr)
    # the plain kernels (no pair layout), chosen by options
    plain = KernelOptions(pair_layout=False)
    for name in ("tiled", "hash"):
        ref, tr = _pair(GridEncoding, cases[name], "cpu", plain)
        res[f"{name}_plain"] = _counts(_compare(ref, tr, x), tr)
    tg = torch.rand(300, 1, generator=g)
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", plain, time_grid_size=5)
    res["time_plain"] = _counts(_compare(ref, tr, x, tg), tr)
    # launches split into chunks of point blocks (CUDA caps grid axis 1 at 65,535 blocks)
    chunked = KernelOptions(max_launch_blocks=1, pair_fwd_block=64, pair_bwd_block=128, bwd_block=64)
    ref, tr = _pair(GridEncoding, cases["tiled"], "cpu", chunked)
    res["tiled_chunked"] = _counts(_compare(ref, tr, x), tr)
    res["gather_tables"] = _gather_tables_check(cases["tiled"], x)
    # a clip's frame-major points: one blended pair table per time (TimeGridEncoding._encode_slots)
    slots = KernelOptions(slot_min_points_per_time=8)
    t_clip = ((torch.arange(300) * 6 // 300) * 37 + 8).float().div(256).reshape(-1, 1)
    t_clip[:50] = 0.0
    for name, cfg in (("time_slots", "tiled"), ("time_slots_smooth", "smooth"), ("noguard_slots", "noguard")):
        ref, tr = _pair(TimeGridEncoding, cases[cfg], "cpu", slots, time_grid_size=5)
        res[name] = _counts(_compare(ref, tr, x, t_clip), tr)
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", KernelOptions(slot_min_points_per_time=8, max_launch_blocks=1, pair_fwd_block=64, pair_bwd_block=128), time_grid_size=5)  # fmt: skip
    res["time_slots_chunked"] = _counts(_compare(ref, tr, x, t_clip), tr)
    # hashed grids never take the pair layout; forced on (slot path: pair forward and pair backward),
    # its single-corner fallback for x-neighbours that are not adjacent rows must still be exact
    ref, tr = _pair(TimeGridEncoding, cases["hash"], "cpu", slots, time_grid_size=5)
    tr.bufs.any_hashed = False
    res["hash_pairs_forced"] = _counts(_compare(ref, tr, x, t_clip), tr)
    # the slot path switched off by options: two grids read per point, pair backward
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", KernelOptions(slot_blend=False, slot_min_points_per_time=8), time_grid_size=5)  # fmt: skip
    res["time_clip_no_slots"] = _counts(_compare(ref, tr, x, t_clip), tr)
    # the blended tables follow optimizer steps (rebuilt in every call)
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", slots, time_grid_size=5)
    opt = torch.optim.Adam(tr.parameters(), lr=0.1, fused=True)
    errs = []
    for _ in range(3):
        opt.zero_grad()
        tr(x, t_clip).square().sum().backward()
        opt.step()
        with torch.no_grad():
            ref.embeddings.copy_(tr.embeddings)
        errs.append((tr(x, t_clip) - ref(x, t_clip)).abs().max().item())
    res["slot_cache"] = {"max_err": max(errs), "builds": tr.launch_state.slot_builds}
    ref, tr = _pair(GridEncoding, cases["tiled"], "cpu")
    res["max_level3"] = _compare(ref, tr, x, max_level=3)
    t = torch.rand(300, 1, generator=g)
    t[:30] = 0.0
    t[30:60] = 0.5  # g = 2.0 for T = 5: exact grid time
    t[60:80] = 1.0
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", time_grid_size=5)
    res["time"] = _compare(ref, tr, x, t)
    ref, tr = _pair(TimeGridEncoding, cases["hash"], "cpu", time_grid_size=5)
    res["time_hash_ml2"] = _compare(ref, tr, x, t, max_level=2)
    # t = 0 must not read grid 1 at all: poison it
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", time_grid_size=5)
    with torch.no_grad():
        tr.embeddings[1:] = float("nan")
    out = tr(x, torch.zeros(300, 1))
    res["t0_finite"] = bool(torch.isfinite(out).all())
    # the points-form time TV through the Triton encoder
    ref, tr = _pair(TimeGridEncoding, cases["tiled"], "cpu", time_grid_size=4)
    losses = [
        e.time_tv_loss("points", n_points=200, generator=torch.Generator().manual_seed(4)) for e in (ref, tr)
    ]
    for loss in losses:
        loss.backward()
    res["time_tv_points"] = {
        "loss_rel": abs(losses[1].item() - losses[0].item()) / losses[0].item(),
        "grad_rel": ((tr.embeddings.grad - ref.embeddings.grad).norm() / ref.embeddings.grad.norm()).item(),
    }
    res["field"] = _field_check()
    res["time_runs"] = _time_runs_check()
    return res


def _zero_rows_check(device: str = "cpu") -> dict:
    """``KernelOptions.skip_zero_rows`` against the kernels without it: the same table gradient bit for bit, for
    a gradient whose rows are all zero for half the points (a dynamic step's samples behind early termination),
    zero in one channel only for others (those must still be added), on the pair, plain, slot and two-grid
    paths. Returns, per path, whether the gradients are equal and their relative error against the reference."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding, KernelOptions, TimeGridEncoding

    cfg = paper_grid_config(num_levels=6, base_resolution=4, desired_resolution=64, log2_table_size=8)
    n = 300 if device == "cpu" else 2**18
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(n, 3, generator=gen) * 2.2 - 1.1).to(device)
    t_clip = ((torch.arange(n) * 6 // n) * 37 + 8).float().div(256).reshape(-1, 1)
    t_clip[: n // 6] = 0.0  # an exact grid time: the high grid's weight is 0
    t_clip = t_clip.to(device)
    paths = {
        "pairs": (GridEncoding, {}, {}),
        "plain": (GridEncoding, {"pair_layout": False}, {}),
        "slots": (TimeGridEncoding, {"slot_min_points_per_time": 8}, {"time_grid_size": 5}),
        "two_grids": (
            TimeGridEncoding,
            {"slot_blend": False, "slot_min_points_per_time": 8},
            {"time_grid_size": 5},
        ),
        "time_plain": (TimeGridEncoding, {"pair_layout": False}, {"time_grid_size": 5}),
    }
    out = {}
    for name, (cls, opts, kw) in paths.items():
        args = (x,) if cls is GridEncoding else (x, t_clip)
        grads = []
        for skip in (True, False):
            ref, tr = _pair(cls, cfg, device, KernelOptions(skip_zero_rows=skip, **opts), **kw)
            g = torch.randn(n, tr.output_dim, generator=torch.Generator().manual_seed(3)).to(device)
            g[::2] = 0.0  # all-zero rows
            g[1::4, 0::2] = 0.0  # channel 0 of every level zero
            g[3::8, 1::2] = 0.0  # channel 1 zero
            (tr(*args) * g).sum().backward()
            grads.append(tr.embeddings.grad.clone())
        (ref(*args) * g).sum().backward()
        gr = ref.embeddings.grad
        out[name] = {
            "equal": bool(torch.equal(grads[0], grads[1])),
            "grad_rel": ((grads[0] - gr).norm() / gr.norm()).item(),
        }
    return out


def _time_runs_check() -> dict:
    """A 2-frame clip render through the Triton 4D field (slot path) with the renderer's host-side time runs
    and without them: the same images, the same table gradient up to fp32 order, and no time read back."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.render.cameras import orbit_cameras
    from animate124.render.renderer import render
    from animate124.scene.fields import DynamicField
    from animate124.scene.grid import KernelOptions

    cfg = paper_grid_config(num_levels=4, base_resolution=4, desired_resolution=32, log2_table_size=9)
    torch.manual_seed(0)
    opts = KernelOptions(slot_min_points_per_time=8)
    field = DynamicField(cfg, time_grid_size=4, backend="triton", kernel_options=opts, **field_kwargs())
    with torch.no_grad():
        field.encoder.embeddings.uniform_(-1, 1)
    cams, times = orbit_cameras(2, height=4, width=4), torch.tensor([[0.2, 0.7]])
    orig, calls, out = torch.unique_consecutive, [], {}

    def spy(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    for use_runs in (True, False):
        field.accepts_time_runs = use_runs
        field.zero_grad(set_to_none=True)
        calls.clear()
        builds = field.encoder.launch_state.slot_builds
        torch.unique_consecutive = spy
        try:
            r = render(
                field, cams, times, shading="lambertian", compute_normals=True, max_steps=16, perturb=True,
                generator=torch.Generator().manual_seed(0), checkpoint_normals=True, live_normals=True,
            )  # fmt: skip
            (r.rgb.mean() + r.orientation.mean() + r.normal.mean()).backward()
        finally:
            torch.unique_consecutive = orig
        out[use_runs] = (r.rgb.detach(), r.normal.detach(), field.encoder.embeddings.grad.clone(), len(calls),
                         field.encoder.launch_state.slot_builds - builds)  # fmt: skip
    a, b = out[True], out[False]
    return {
        "rgb_max": (a[0] - b[0]).abs().max().item(),
        "normal_max": (a[1] - b[1]).abs().max().item(),
        "grad_rel": ((a[2] - b[2]).norm() / b[2].norm()).item(),
        "reads_with_runs": a[3],
        "reads_without": b[3],
        "slot_builds": [a[4], b[4]],
    }


def _gather_tables_check(cfg, x) -> dict:
    """The forward follows optimizer steps, including fused Adam (which does not bump ``_version``)."""
    from animate124.scene.grid import GridEncoding

    out = {}
    for name, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        ref, tr = _pair(GridEncoding, cfg, "cpu")
        opt = torch.optim.Adam(tr.parameters(), lr=0.1, **kw)
        errs = []
        for _ in range(3):
            opt.zero_grad()
            tr(x).square().sum().backward()
            opt.step()
            with torch.no_grad():
                ref.embeddings.copy_(tr.embeddings)
            errs.append((tr(x) - ref(x)).abs().max().item())
        out[name] = {"max_err": max(errs), "builds": tr.launch_state.gather_builds}
    return out


def _field_check() -> dict:
    """StaticField/DynamicField through the Triton encoder vs the torch encoder (sigma, normals, grads)."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.scene.fields import DynamicField, StaticField

    cfg = paper_grid_config(num_levels=4, base_resolution=4, desired_resolution=32, log2_table_size=9)
    torch.manual_seed(0)
    ref = StaticField(cfg, backend="torch", **field_kwargs())
    with torch.no_grad():
        ref.encoder.embeddings.uniform_(-1, 1)
    tr = StaticField(cfg, backend="triton", **field_kwargs())
    tr.load_state_dict(ref.state_dict())
    x = torch.rand(100, 3) * 2 - 1
    errs = {}
    for f in (ref, tr):
        out = f(x)
        (out.sigma.mean() + out.albedo.mean() + f.normals(x).mean()).backward()
    errs["sigma_rel"] = ((tr(x).sigma - ref(x).sigma).abs() / ref(x).sigma).max().item()
    errs["normals"] = (tr.normals(x) - ref.normals(x)).abs().max().item()
    errs["grad_table_rel"] = (
        (tr.encoder.embeddings.grad - ref.encoder.embeddings.grad).norm() / ref.encoder.embeddings.grad.norm()
    ).item()
    dyn_tr = DynamicField.from_static(tr, time_grid_size=4)
    errs["dyn_vs_static_rel"] = (
        ((dyn_tr(x, torch.rand(100, 1)).sigma - tr(x).sigma).abs() / tr(x).sigma).max().item()
    )
    return errs


@pytest.fixture(scope="module")
def interp_results() -> dict:
    return run_interpreted("test_scene_triton")


@needs_triton
@pytest.mark.parametrize(
    "case", ["tiled", "hash", "noguard", "smooth", "paper", "max_level3", "time", "time_hash_ml2"]
)
def test_triton_interpreter_matches_reference(interp_results, case):
    r = interp_results[case]
    assert r["fwd"] <= 1e-6, r
    assert r["grad_norm"] > 0
    assert r["grad_rel"] <= 1e-6 and r["grad_abs"] <= 1e-5, r
    assert r["zero_cols_ok"]


@needs_triton
@pytest.mark.parametrize(
    "case",
    [
        "tiled_plain",
        "hash_plain",
        "time_plain",
        "tiled_chunked",
        "time_slots",
        "time_slots_smooth",
        "noguard_slots",
        "time_slots_chunked",
        "hash_pairs_forced",
        "time_clip_no_slots",
    ],
)
def test_triton_interpreter_other_paths_match_reference(interp_results, case):
    r = interp_results[case]
    assert r["fwd"] <= 1e-6, r
    assert r["grad_rel"] <= 1e-6 and r["grad_abs"] <= 1e-5, r
    assert r["grad_norm"] > 0
    # which path ran: the quad gather table (static, pair layout) or the blended slots
    quads = case == "tiled_chunked"
    slots = "slots" in case and "no_slots" not in case or case == "hash_pairs_forced"
    assert r["pair_builds"] == (1 if quads else 0), r
    assert r["slot_builds"] == (1 if slots else 0), r


@needs_triton
@needs_triton
def test_triton_interpreter_skip_zero_rows_changes_no_bit():
    r = run_interpreted("test_scene_triton", "_zero_rows_check")
    assert set(r) == {"pairs", "plain", "slots", "two_grids", "time_plain"}
    for name, v in r.items():
        assert v["equal"], (name, v)
        assert v["grad_rel"] <= 1e-6, (name, v)


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_gpu_skip_zero_rows_changes_no_bit():
    """The same on the GPU at 2^18 points, where the pair and plain backward use the vector reductions' PTX
    (the interpreter runs their atomic_add fallback). Against the reference only: the GPU's atomics add in any
    order, so two runs need not agree bit for bit with or without the skip."""
    r = _zero_rows_check("cuda")
    for name, v in r.items():
        assert v["grad_rel"] <= 1e-5, (name, v)


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("levels", [2, 4, 6, 16])
@pytest.mark.parametrize("pair_layout", [True, False])
def test_triton_gpu_table_gradient_at_any_level_count(levels, pair_layout):
    """The vector reductions' table gradient against the torch encoder at level counts whose output row
    (``2·levels`` floats) is and is not a multiple of 16 floats: until 2026-12-07 every count but 16 came out
    exactly 2× on an H100 (BENCHMARKS.md §15.14). The sums' order differs (atomics), so ≤ 1e-5 relative."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding, KernelOptions

    cfg = paper_grid_config(num_levels=levels, base_resolution=4, desired_resolution=64, log2_table_size=12)
    ref, tr = _pair(GridEncoding, cfg, "cuda", KernelOptions(pair_layout=pair_layout))
    n = 2**16
    x = (torch.rand(n, 3, generator=torch.Generator().manual_seed(2)) * 2.2 - 1.1).cuda()
    g = torch.randn(n, tr.output_dim, generator=torch.Generator().manual_seed(3)).cuda()
    (tr(x) * g).sum().backward()
    (ref(x) * g).sum().backward()
    a, b = tr.embeddings.grad, ref.embeddings.grad
    assert ((a - b).norm() / b.norm()).item() <= 1e-5, (a.norm().item(), b.norm().item())


def test_triton_interpreter_used_pair_layout(interp_results):
    assert interp_results["tiled"]["pair_builds"] == 1
    assert interp_results["paper"]["pair_builds"] == 1
    assert interp_results["hash"]["pair_builds"] == 0  # hashed levels: plain kernels
    assert interp_results["tiled_plain"]["pair_builds"] == 0  # KernelOptions(pair_layout=False)


@needs_triton
def test_triton_interpreter_gather_tables_follows_updates(interp_results):
    for r in interp_results["gather_tables"].values():
        assert r["max_err"] <= 1e-6, r
        assert r["builds"] == 6, r  # one gather table per call: nothing is reused across calls


@needs_triton
def test_triton_interpreter_t0_reads_grid0_only(interp_results):
    assert interp_results["t0_finite"]


@needs_triton
def test_triton_interpreter_time_tv_points(interp_results):
    r = interp_results["time_tv_points"]
    assert r["loss_rel"] <= 1e-5 and r["grad_rel"] <= 1e-5, r


@needs_triton
@needs_triton
def test_triton_interpreter_render_with_host_time_runs(interp_results):
    """TimeRuns (scene/timeruns.py): the renderer's host-side runs give the slot path the same images and
    table gradient without reading the times back from the device (no unique_consecutive)."""
    r = interp_results["time_runs"]
    assert r["rgb_max"] == 0.0 and r["normal_max"] == 0.0, r
    assert r["grad_rel"] < 1e-5, r  # distinct times merged into one slot: another fp32 summation order
    assert r["reads_with_runs"] == 0 and r["reads_without"] > 0, r
    assert min(r["slot_builds"]) >= 3, r  # the samples, the normals and their recompute took the slot path


def test_triton_interpreter_fields(interp_results):
    r = interp_results["field"]
    assert r["sigma_rel"] <= 1e-6 and r["normals"] <= 1e-4, r
    # the loss includes finite-difference normals, which amplify ~1-ulp differences in summation order
    assert r["grad_table_rel"] <= 5e-5, r
    assert r["dyn_vs_static_rel"] <= 1e-6, r


def test_backend_resolution_on_cpu():
    from helpers_grid import small_grid_config

    from animate124.errors import ConfigError
    from animate124.scene.grid import GridEncoding, resolve_backend

    if os.environ.get("TRITON_INTERPRET") != "1":
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
        enc = GridEncoding(small_grid_config(), backend="triton")
        with pytest.raises(ConfigError):
            enc(torch.zeros(4, 3))


def test_kernel_options_are_frozen_validated_and_per_encoder():
    import dataclasses

    from helpers_grid import small_grid_config

    from animate124.errors import ConfigError
    from animate124.scene.grid import GridEncoding, KernelOptions, TimeGridEncoding

    opts = KernelOptions(pair_layout=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.pair_layout = True  # type: ignore[misc]
    bad_chunks = ({"fused_normals_chunk": 0}, {"fused_normals_chunk": 2**20 + 1})
    for bad in (
        {"atomics": "fp16"},
        {"fwd_block": 48},
        {"pair_fwd_warps": 3},
        {"max_launch_blocks": 70000},
        *bad_chunks,
    ):
        with pytest.raises(ConfigError):
            KernelOptions(**bad)  # type: ignore[arg-type]
    a = GridEncoding(small_grid_config(), backend="torch", kernel_options=opts)
    b = GridEncoding(small_grid_config(), backend="torch")
    assert a.kernel_options is opts and b.kernel_options == KernelOptions()
    assert a.launch_state is not b.launch_state  # the vec2 capability probe is per encoder
    t = TimeGridEncoding.from_static(a, time_grid_size=3)
    assert t.kernel_options is opts and t.launch_state is not a.launch_state


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("grid_type", ["tiled", "hash"])
def test_triton_gpu_matches_reference_2e18(grid_type):
    from helpers_grid import hash_grid_config, paper_grid_config

    from animate124.scene.grid import GridEncoding

    cfg = paper_grid_config() if grid_type == "tiled" else hash_grid_config()
    ref, tr = _pair(GridEncoding, cfg, "cuda")
    x = torch.rand(2**18, 3, device="cuda") * 2.1 - 1.05
    r = _compare(ref, tr, x)
    assert r["fwd"] <= 1e-3, r  # fp32 position rounding, see _fwd_error_vs_fp64
    assert r["grad_rel"] <= 1e-5, r
    e_ref, e_tr = _fwd_error_vs_fp64(ref, tr, x)
    assert e_tr <= 1.5 * e_ref + 1e-6, (e_ref, e_tr)
    r = _compare(ref, tr, x, max_level=8)
    assert r["fwd"] <= 1e-3 and r["zero_cols_ok"], r


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_gpu_time_grid_matches_reference():
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import TimeGridEncoding

    ref, tr = _pair(TimeGridEncoding, paper_grid_config(), "cuda", time_grid_size=64)
    x = torch.rand(2**18, 3, device="cuda") * 2 - 1
    t = torch.rand(2**18, 1, device="cuda")
    t[:1000] = 0
    r = _compare(ref, tr, x, t)
    assert r["fwd"] <= 1e-3, r  # fp32 position rounding, see _fwd_error_vs_fp64
    assert r["grad_rel"] <= 1e-5, r
    e_ref, e_tr = _fwd_error_vs_fp64(ref, tr, x, t)
    assert e_tr <= 1.5 * e_ref + 1e-6, (e_ref, e_tr)


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_gpu_autocast_outputs_float32():
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding

    ref, tr = _pair(GridEncoding, paper_grid_config(), "cuda")
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    with torch.autocast("cuda", dtype=torch.float16):
        out = tr(x)
        out.float().sum().backward()
    assert out.dtype == torch.float32
    assert tr.embeddings.grad is not None and tr.embeddings.grad.dtype == torch.float32
    e_ref, e_tr = _fwd_error_vs_fp64(ref, tr, x)
    assert e_tr <= 1.5 * e_ref + 1e-6, (e_ref, e_tr)
    torch.testing.assert_close(out, ref(x), atol=1e-3, rtol=0)


@pytest.mark.gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("launch", [(64, 4), (64, 8), (128, 8), (512, 8)])
def test_triton_gpu_backward_any_launch(pairs, launch):
    """Inline-asm reductions must not double-count when a launch has fewer points than threads."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import GridEncoding, KernelOptions

    block, warps = launch
    opts = KernelOptions(
        pair_layout=pairs, bwd_block=block, bwd_warps=warps, pair_bwd_block=block, pair_bwd_warps=warps
    )
    ref, tr = _pair(GridEncoding, paper_grid_config(), "cuda", opts)
    x = torch.rand(2**16, 3, device="cuda") * 2 - 1
    g = torch.randn(2**16, 32, device="cuda")
    (ref(x) * g).sum().backward()
    (grad,) = torch.autograd.grad(tr(x), tr.embeddings, g)
    rel = ((grad - ref.embeddings.grad).norm() / ref.embeddings.grad.norm()).item()
    assert rel <= 1e-5, rel


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_gpu_clip_times_use_slots_and_match_reference():
    """Frame-major points of a 16-frame clip take the blended-slot path; values and grads match torch."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import TimeGridEncoding

    ref, tr = _pair(TimeGridEncoding, paper_grid_config(), "cuda", time_grid_size=64)
    n = 2**18
    x = torch.rand(n, 3, device="cuda") * 2 - 1
    t = ((torch.arange(n, device="cuda") * 16 // n) * 15 + 8).float().div(256).reshape(-1, 1)
    t[: n // 16] = 0.0
    r = _compare(ref, tr, x, t)
    assert tr.launch_state.gather_builds == 0  # the slot path builds blended pairs, not the quad table
    assert tr.launch_state.slot_builds == 1  # one forward call of the Triton encoder in _compare
    assert r["fwd"] <= 1e-3, r
    assert r["grad_rel"] <= 1e-5, r
    e_ref, e_tr = _fwd_error_vs_fp64(ref, tr, x, t)
    assert e_tr <= 1.5 * e_ref + 1e-6, (e_ref, e_tr)


@needs_triton
def test_triton_interpreter_slot_path_follows_updates(interp_results):
    r = interp_results["slot_cache"]
    assert r["max_err"] <= 1e-6, r
    assert r["builds"] == 6, r  # the slot path ran for every call and built its tables each time


@pytest.mark.parametrize("kw", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_optimizer_steps_bump_the_version_counter(kw):
    """Why the gather tables are rebuilt in every call: fused Adam does not bump the version counter."""
    p = torch.nn.Parameter(torch.randn(64))
    try:
        opt = torch.optim.Adam([p], lr=0.1, **kw)
        p.grad = torch.randn(64)
        v = p._version
        opt.step()
    except RuntimeError as err:  # pragma: no cover - fused unsupported on this build
        pytest.skip(f"optimizer variant unavailable: {err}")
    if kw.get("fused"):
        assert p._version == v, (
            "fused Adam now bumps _version: a version-keyed gather-table cache is possible"
        )
    else:
        assert p._version > v


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_triton_gpu_fused_time_tv_matches_per_slice_form():
    """The paper's 64-grid table: PointsTimeTV (timetv.py) gives the per-slice form's loss bit for bit and
    its table gradient up to fp32 summation order (the atomics' order)."""
    from helpers_grid import paper_grid_config

    from animate124.scene.grid import TimeGridEncoding

    _, tr = _pair(TimeGridEncoding, paper_grid_config(), "cuda", time_grid_size=64)
    losses, grads = [], []
    for fused in (False, True):
        tr.embeddings.grad = None
        loss = tr.time_tv_loss(
            "points", n_points=100_000, generator=torch.Generator().manual_seed(3), fused=fused
        )
        loss.backward()
        losses.append(loss.item())
        grads.append(tr.embeddings.grad.clone())
    assert losses[0] == losses[1]
    rel = ((grads[1] - grads[0]).norm() / grads[0].norm()).item()
    assert rel <= 1e-5, rel


@needs_triton
@pytest.mark.parametrize("smooth", [False, True])
def test_grid_kernels_compile_for_sm90_without_a_gpu(smooth):
    """The grid encoder's forward and backward kernels, as the launches set them up for a clip (time grids,
    pair tables, the 8- and 16-byte reductions' inline PTX), lower to sm_90 cubins."""
    from animate124.scene.grid import KernelOptions
    from animate124.scene.grid import kernels as K

    o = KernelOptions()
    types = {
        "time_max": "fp32",
        **{p: "*i32" for p in ("stride_ptr", "wmask_ptr", "start_ptr", "hashed_ptr")},
    }
    time = {"HAS_TIME": True, "SMOOTH": smooth}
    pair_bwd = {
        "C": 2, "BLOCK": o.pair_bwd_block, "VEC2": True, "ASM": K.VEC2_ASM, "PAIR": True, "ASM4": K.PAIR_ASM,
        "ZMERGE": o.z_merge, "SKIP0": True, **time,
    }  # fmt: skip
    built = [
        compile_for_sm90(K._grid_fwd_kernel, {"C": 2, "BLOCK": o.fwd_block, **time}, types, o.fwd_warps),
        compile_for_sm90(
            K._grid_fwd_pair_kernel,
            {"BLOCK": o.pair_fwd_block, "QUAD": False, **time},
            types,
            o.pair_fwd_warps,
        ),
        compile_for_sm90(K._grid_bwd_kernel, pair_bwd, types, o.pair_bwd_warps),
        compile_for_sm90(  # the plain (no pair layout) backward with the zero-row skip, 8-byte reductions
            K._grid_bwd_kernel,
            {
                "C": 2,
                "BLOCK": o.bwd_block,
                "VEC2": True,
                "ASM": K.VEC2_ASM,
                "PAIR": False,
                "ASM4": K.PAIR_ASM,
                "SKIP0": True,
                **time,
            },
            types,
            o.bwd_warps,
        ),  # fmt: skip
    ]
    # the pair backward again as a launch at 16 levels specialises it: pointers and the row stride (32) known
    # to be multiples of 16
    aligned = tuple(a for a in K._grid_bwd_kernel.arg_names if a.endswith("_ptr")) + ("gout_stride",)
    built.append(compile_for_sm90(K._grid_bwd_kernel, pair_bwd, types, o.pair_bwd_warps, divisible=aligned))
    assert all("cubin" in k.asm for k in built)
    # The reductions' inline PTX runs once per thread holding an element: every element on one thread, or each
    # table addition is issued twice. Compiled as above (no argument known to be a multiple of 16, as a launch
    # with 6 levels' row stride of 12) the old [BLOCK, 2] load summed over channels put each row on two threads,
    # and the GPU's table gradient came out doubled (BENCHMARKS.md §15.14).
    replication = [inline_asm_replication(k.asm["ttgir"]) for k in built]
    assert [len(r) > 0 for r in replication] == [False, False, True, True, True]
    assert all(f == 1 for r in replication for f in r), replication
