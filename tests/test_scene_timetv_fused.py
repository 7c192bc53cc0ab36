"""Fused points-form time TV (``KernelOptions(fused_time_tv=True)``, issue 26) against today's path.

The kernels run in Triton's CPU interpreter in a subprocess (``helpers_triton.run_interpreted``); the field's
``time_tv_loss("points")`` (what the stage calls) runs with the option on (``FusedPointsTimeTV``) and off
(today's ``PointsTimeTV``, and the plain per-slice form ``fused=False``) on the same random points.

Error analysis (``_bounds``; ``u = 2⁻²⁴``). Both paths are fp32 evaluations of the same formula. The cell and
fractions come from the same fp32 operations (``kernels._cell``), so they agree bit for bit in the
interpreter. A feature ``f = Σ_k w_k v_k`` differs from its exact value (for those fractions) by at most
``16u·S`` per path, ``S = Σ_k w_k |v_k|`` (three weight products, one product and up to seven additions; the
levels that ignore z: 4 corners with ``w_x·w_y`` in the fused path, 8 with ``w_x·w_y·(1 − f_z)`` and
``w_x·w_y·f_z`` in today's), so the two paths' features differ by ``e = 32u·S``. Then:

* loss ``k/N·Σ d²`` (``d = f_i − f_{i+1}``): ``|ΔL| ≤ k/N·Σ (2|d|·e_d + e_d²) + γ_L·L`` with ``e_d`` the two
  features' ``e`` and ``γ_L = (N + 2L + T + P + 16)·u`` the worst case of the two summation orders (N points,
  2L features, T grids, P partial sums; every term is ≥ 0);
* table gradient, entry by entry: ``Σ_x w·(δg + γ_G·|g|)`` over the points and corners that reach the entry,
  with ``g = 2k/N·((f_i − f_{i−1}) + (f_i − f_{i+1}))``, ``δg`` from the features' ``e`` plus ``4u`` per term,
  and ``γ_G = (m + 16)·u`` for the ``m`` reductions into that entry (any order) and the products.

The bounds are computed in float64 from the table (``_features64``: the kernels' fp32 per-axis weights, whose
products and sums are then exact enough), which also gives a float64 loss and gradient that the fused path must
be as close to. The fused results must lie within the bounds (measured: the loss equal bit for bit to today's
in these cases, the gradient within 8 % of its bound), and broken copies of the kernels (``_MUTANTS``: the
z-merge weight dropped, a wrong sign in the backward's window, the forward not sliding) must not (they miss by
10³–10⁵ times the bound). On the GPU the compiler may contract ``u·s + 0.5`` into one FMA (one rounding,
not two): the bounds are taken over both roundings of the grid coordinate (a point within an ulp of a cell face
changes cell), and in case the two kernels round differently they allow the fractions an ulp ``δ_l =
2u·(s_l + 1.5)`` of the grid coordinate: ``9·δ_l·max|v|`` per feature (3 axes × 2 corners × weight slope
≤ 1.5) and ``4.5·δ_l·max|g|`` per reduction into an entry (3 axes × slope 1.5).
"""

from __future__ import annotations

import pytest
import torch
from helpers_triton import compile_for_sm90, needs_cuda, needs_triton, run_interpreted

U32 = 2.0**-24
N_POINTS = 100  # one program block of 128, partly masked
T_GRIDS = 3  # grid 1 has both neighbours in the backward's window, grids 0 and 2 one each


def _cfg(**kw):
    """3 levels of 128-row tables (sides 5, 9, 17): dense; wrapped, keeping z; wrapped, ignoring z."""
    from helpers_grid import small_grid_config

    return small_grid_config(num_levels=3, desired_resolution=16, log2_table_size=7, **kw)


def _field(cfg, opts: dict, device: str = "cpu", t_size: int = T_GRIDS, seed: int = 0):
    from helpers_grid import field_kwargs

    from animate124.scene.fields import DynamicField
    from animate124.scene.grid import KernelOptions

    torch.manual_seed(seed)
    f = DynamicField(cfg, time_grid_size=t_size, backend="triton", kernel_options=KernelOptions(**opts),
                     **field_kwargs()).to(device)  # fmt: skip
    with torch.no_grad():  # independent grids: |f_i − f_{i+1}| ~ |f|, the loss far from zero
        f.encoder.embeddings.uniform_(-1, 1)
    return f


def _unit_points(enc, n: int, seed: int, device: str) -> torch.Tensor:
    """The points ``time_tv_loss`` draws from a generator seeded ``seed`` (its own arithmetic)."""
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(n, 3, generator=g).to(device)) * 2 - 1) * enc.bound
    return (x.float() + enc.bound) / (2 * enc.bound)


def _grid_pos(enc, u: torch.Tensor, fma: bool) -> torch.Tensor:
    """``[N, L, 3]`` grid coordinates ``u·s + 0.5`` in fp32 as ``kernels._cell`` computes them: two roundings,
    or one (``fma``: what the GPU compiler makes of it when it contracts the two operations)."""
    scales = enc.bufs.scales[None, :, None]
    if fma:
        return (u.double()[:, None, :] * scales.double() + 0.5).float()
    return u[:, None, :] * scales + 0.5


def _features64(enc, u: torch.Tensor, table: torch.Tensor, fma: bool = False) -> torch.Tensor:
    """``[N, L, 2]`` features of one grid ``table [E, 2]``: the kernels' fp32 per-axis weights (fractions,
    smoothstep and ``1 − f`` by the same fp32 operations), their products and the sum in float64."""
    from animate124.scene.grid.reference import CORNER_BITS, corner_index, interp_weights

    bufs, n_l = enc.bufs, enc.num_levels
    pos = _grid_pos(enc, u, fma)
    pgf = torch.floor(pos)
    frac = interp_weights(pos - pgf, enc.cfg.interpolation)
    axis = {1: frac.double(), 0: (1.0 - frac).double()}
    pg = pgf.long()
    out = torch.zeros(u.shape[0], n_l, 2, dtype=torch.float64, device=u.device)
    for bits in CORNER_BITS:
        w = axis[bits[0]][..., 0] * axis[bits[1]][..., 1] * axis[bits[2]][..., 2]
        out = out + w[..., None] * table[corner_index(pg, bits, bufs, n_l)]
    return out


def _hits(enc, u: torch.Tensor, fma: bool = False) -> torch.Tensor:
    """``[E]``: how many (point, corner) pairs reach each row of a grid (8 corners a level, as today's path)."""
    from animate124.scene.grid.reference import CORNER_BITS, corner_index

    pg = torch.floor(_grid_pos(enc, u, fma)).long()
    hits = torch.zeros(enc.entries_per_grid, dtype=torch.float64, device=u.device)
    for bits in CORNER_BITS:
        idx = corner_index(pg, bits, enc.bufs, enc.num_levels).reshape(-1)
        hits.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    return hits


def _bounds(enc, u: torch.Tensor, gpu: bool = False) -> dict:
    """Float64 loss and gradient and the bounds of the module docstring for ``enc``'s table at points ``u``.

    ``gpu``: the kernels' grid coordinates may be rounded once or twice (``_grid_pos``), which moves a point
    that sits within an ulp of a cell face into the next cell; the bounds are taken over both, entry by entry,
    with the fractions' allowance of the module docstring."""
    if not gpu:
        return _bounds_one(enc, u, 0.0, False)
    a, b = _bounds_one(enc, u, 1.0, False), _bounds_one(enc, u, 1.0, True)
    return {
        **a,
        "bound_l": max(a["bound_l"], b["bound_l"]),
        "bound_g": torch.maximum(a["bound_g"], b["bound_g"]),
    }


def _bounds_one(enc, u: torch.Tensor, pos_ulps: float, fma: bool) -> dict:
    """:func:`_bounds` for one rounding of the grid coordinates (``fma``), with ``pos_ulps`` ulps of them
    allowed between the two kernels."""
    tab = enc.embeddings.detach().double()
    t_size, n, n_l = tab.shape[0], u.shape[0], enc.num_levels
    k = 1.0 / ((t_size - 1) * n_l)
    coef = 2 * k / n
    with torch.no_grad():
        f = [_features64(enc, u, tab[i], fma) for i in range(t_size)]
        s = [_features64(enc, u, tab[i].abs(), fma) for i in range(t_size)]
    hits = _hits(enc, u, fma)
    row_dw = torch.zeros_like(hits)  # per row: the bound of a corner weight's difference between the kernels
    if pos_ulps:  # the fractions may differ by pos_ulps ulps of the grid coordinate (ulp(p) <= 2u·p)
        dfrac = pos_ulps * 2 * U32 * (enc.bufs.scales.double() + 1.5)  # [L]
        vmax = torch.stack(
            [tab[:, lv.offset : lv.offset + lv.table_size].abs().amax() for lv in enc.layout.levels]
        )
        # a feature: Σ_k |δw_k|·|v_k| <= 3 axes × (2 corners × slope 1.5) × δf × max|v|, as a term of S
        s = [si + (9 * dfrac * vmax / (32 * U32))[None, :, None] for si in s]
        # a corner weight: 3 axes × slope 1.5 × δf (the product of the other axes' weights <= 1)
        row_dw = torch.repeat_interleave(4.5 * dfrac, enc.bufs.sizes)
    e = [32 * U32 * si for si in s]
    loss, bound_l = 0.0, 0.0
    for i in range(t_size - 1):
        d = f[i] - f[i + 1]
        ed = e[i] + e[i + 1]
        loss += float(d.square().sum()) * k / n
        bound_l += float((2 * d.abs() * ed + ed.square()).sum()) * k / n
    parts = -(-n // 128) * n_l
    bound_l += (n + 2 * n_l + t_size + parts + 16) * U32 * loss
    gamma_g = (hits + 16)[:, None] * U32  # per entry: its reductions, any order, plus the products
    grad = torch.zeros_like(tab)
    bound_g = torch.zeros_like(tab)
    for i in range(t_size):
        g = torch.zeros_like(f[i])
        dg = torch.zeros_like(f[i])
        for j in (i - 1, i + 1):
            if 0 <= j < t_size:
                term = f[i] - f[j]
                g = g + term
                dg = dg + e[i] + e[j] + 4 * U32 * term.abs()
        leaf = tab[i].clone().requires_grad_(True)
        fi = _features64(enc, u, leaf, fma)
        # Σ_x w·q scattered like the gradient: the weights are >= 0, so the bound scatters as the value does
        (grad[i],) = torch.autograd.grad((fi * (coef * g)).sum(), leaf, retain_graph=True)
        (bound_g[i],) = torch.autograd.grad((fi * (coef * dg)).sum(), leaf, retain_graph=True)
        (sum_abs,) = torch.autograd.grad((fi * (coef * g.abs())).sum(), leaf)
        bound_g[i] += gamma_g * sum_abs + (coef * float(g.abs().max()) * hits * row_dw)[:, None]
    return {"loss": loss, "bound_l": bound_l, "grad": grad, "bound_g": bound_g}


def _run(field, n: int, seed: int, fused: bool = True) -> tuple[float, torch.Tensor]:
    emb = field.encoder.embeddings
    emb.grad = None
    loss = field.time_tv_loss(
        "points", n_points=n, generator=torch.Generator().manual_seed(seed), fused=fused
    )
    (loss * 1.0).backward()
    return float(loss.detach()), emb.grad.detach().double().clone()


def _loss(field, n: int, seed: int) -> float:
    with torch.no_grad():
        return float(field.time_tv_loss("points", n_points=n, generator=torch.Generator().manual_seed(seed)))


def _compare(res: tuple[float, torch.Tensor], ref: dict, other: tuple[float, torch.Tensor]) -> dict:
    """Errors against today's result ``other``, as fractions of the bounds (<= 1 passes)."""
    dl = abs(res[0] - other[0])
    dg = (res[1] - other[1]).abs()
    ratio = torch.where(ref["bound_g"] > 0, dg / ref["bound_g"], torch.where(dg > 0, torch.inf, 0.0))
    return {"loss_ratio": dl / ref["bound_l"], "grad_ratio": float(ratio.max()), "loss_diff": dl,
            "grad_diff": float(dg.max())}  # fmt: skip


# broken copies of the kernels: (name, original text, replacement)
_MUTANTS = (
    ("zmerge_weight_dropped", "tl.zeros_like(f2)", "f2"),
    ("window_sign", "g = ((cur - prv) + (cur - nxt)) * coef", "g = ((cur - prv) - (cur - nxt)) * coef"),
    ("forward_not_sliding", "            prev = cur\n", "            prev = prev\n"),
)


def _mutant(name: str, old: str, new: str):
    """A copy of ``timetv_kernels`` with one deliberate error, imported from a temporary file."""
    import importlib.util
    import tempfile
    from pathlib import Path

    from animate124.scene.grid import timetv_kernels

    src = Path(timetv_kernels.__file__).read_text()
    assert src.count(old) >= 1, name
    path = Path(tempfile.mkdtemp()) / f"timetv_kernels_{name}.py"
    path.write_text(src.replace(old, new))
    spec = importlib.util.spec_from_file_location(f"timetv_kernels_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _case(interpolation: str, mutants: bool, opts: dict | None = None, device: str = "cpu", cfg=None,
          n: int = N_POINTS, t_size: int = T_GRIDS, plain: bool = True) -> dict:  # fmt: skip
    """Fused vs today's node vs the plain per-slice form, against the bounds; the mutants likewise."""
    import copy
    import dataclasses

    from animate124.scene.grid import modules, timetv

    on = _field(
        cfg or _cfg(interpolation=interpolation), {"fused_time_tv": True, **(opts or {})}, device, t_size
    )
    off = copy.deepcopy(on)
    off.encoder.kernel_options = dataclasses.replace(on.encoder.kernel_options, fused_time_tv=False)
    seed = 11
    calls = {"today": 0}
    today = modules.PointsTimeTV.apply

    def counted(*a):
        calls["today"] += 1
        return today(*a)

    modules.PointsTimeTV.apply = counted  # the class's own attribute, shadowing Function.apply until del
    try:
        fused = _run(on, n, seed)
        fused_calls = calls["today"]
        base = _run(off, n, seed)
        per_slice = _run(off, n, seed, fused=False) if plain else None
    finally:
        del modules.PointsTimeTV.apply
    ref = _bounds(on.encoder, _unit_points(on.encoder, n, seed, device), gpu=device != "cpu")
    out = {
        "ready": [on.encoder.fused_time_tv_ready(), off.encoder.fused_time_tv_ready()],
        "today_calls_fused_on": fused_calls,
        "vs_today": _compare(fused, ref, base),
        "vs_f64": _compare(fused, ref, (ref["loss"], ref["grad"])),
        "loss": fused[0],
        "again_equal": _loss(on, n, seed) == fused[0],  # the forward has no atomics: deterministic
    }
    if per_slice is not None:
        out["vs_plain"] = _compare(fused, ref, per_slice)
        out["today_vs_plain"] = _compare(base, ref, per_slice)
    if mutants:
        real = timetv.TK
        for name, old, new in _MUTANTS:
            timetv.TK = _mutant(name, old, new)
            try:
                out[name] = _compare(_run(on, n, seed), ref, base)
            finally:
                timetv.TK = real
    return out


def _fallbacks() -> dict:
    """``fused_time_tv_ready`` per config: the covered grid, and each reason to keep today's node."""
    from helpers_grid import hash_grid_config

    tiny = {"num_levels": 2, "base_resolution": 4, "desired_resolution": 8, "log2_table_size": 6}
    cases = {
        "tiled": (_cfg(), {}, None),
        "option_off": (_cfg(), {"fused_time_tv": False}, None),
        "hashed": (hash_grid_config(**tiny), {}, None),
        "four_features": (_cfg(level_dim=4), {}, None),
        "float64_table": (_cfg(), {}, torch.float64),
    }
    out = {}
    for name, (cfg, extra, dtype) in cases.items():
        f = _field(cfg, {"fused_time_tv": True, **extra})
        if dtype is not None:
            f.encoder.embeddings.data = f.encoder.embeddings.data.to(dtype)
        out[name] = f.encoder.fused_time_tv_ready()
    # a hashed grid with the option on: today's node runs, same loss bit for bit as with the option off
    import copy
    import dataclasses

    on = _field(hash_grid_config(**tiny), {"fused_time_tv": True})
    off = copy.deepcopy(on)
    off.encoder.kernel_options = dataclasses.replace(on.encoder.kernel_options, fused_time_tv=False)
    a, b = _run(on, 40, 3), _run(off, 40, 3)
    out["hashed_same_as_off"] = a[0] == b[0] and bool(torch.equal(a[1], b[1]))
    torch_backend = _field(_cfg(), {"fused_time_tv": True})
    torch_backend.encoder.backend = "torch"
    out["torch_backend"] = torch_backend.encoder.fused_time_tv_ready()
    return out


def _interp_checks() -> dict:
    return {
        "linear": _case("linear", mutants=True),
        # smoothstep, and two launches of one point block each (their partial sums side by side)
        "smooth_chunked": _case("smoothstep", False, {"max_launch_blocks": 1}, n=130, plain=False),
        "fallbacks": _fallbacks(),
    }


@pytest.fixture(scope="module")
def interp() -> dict:
    return run_interpreted("test_scene_timetv_fused", timeout=600)


def _assert_within(r: dict, key: str) -> None:
    c = r[key]
    assert c["loss_ratio"] <= 1.0 and c["grad_ratio"] <= 1.0, (key, r)


@needs_triton
@pytest.mark.parametrize("case", ["linear", "smooth_chunked"])
def test_fused_time_tv_matches_todays_node_and_the_plain_form(interp, case):
    """Loss and table gradient of the field's points-form time TV with the option on, within the error
    bounds of today's node and of the plain per-slice form; today's node did not run; deterministic loss."""
    r = interp[case]
    assert r["ready"] == [True, False], r
    assert r["today_calls_fused_on"] == 0, r
    for key in ("vs_today", "vs_f64", "vs_plain", "today_vs_plain"):
        if key in r:
            _assert_within(r, key)
    assert r["loss"] > 0.1, r
    assert r["again_equal"], r


@needs_triton
def test_broken_fused_kernels_fall_outside_the_bounds(interp):
    """The bounds are tight enough to catch real errors: a copy of the kernels with the z-merge's weight
    dropped (4 corners weighted ``w_x·w_y·(1 − f_z)``), one with a wrong sign in the backward's window, one
    whose forward compares every grid with grid 0 each fails by orders of magnitude."""
    r = interp["linear"]
    assert (
        r["zmerge_weight_dropped"]["loss_ratio"] > 100 and r["zmerge_weight_dropped"]["grad_ratio"] > 100
    ), r
    assert r["window_sign"]["grad_ratio"] > 100 and r["window_sign"]["loss_ratio"] <= 1.0, r
    assert r["forward_not_sliding"]["loss_ratio"] > 100, r


@needs_triton
def test_fused_time_tv_falls_back_where_it_does_not_apply(interp):
    """Hashed levels, 4 features, a float64 table, the torch backend or the option off keep today's node."""
    r = interp["fallbacks"]
    assert r["tiled"] is True, r
    for name in ("option_off", "hashed", "four_features", "float64_table", "torch_backend"):
        assert r[name] is False, (name, r)
    assert r["hashed_same_as_off"], r


def test_fused_time_tv_needs_triton_on_the_device():
    """Without the interpreter the CPU has no Triton backend: the option is accepted and today's node runs."""
    from helpers_grid import field_kwargs, small_grid_config

    from animate124.scene.fields import DynamicField
    from animate124.scene.grid import KernelOptions

    f = DynamicField(small_grid_config(), time_grid_size=3, backend="auto",
                     kernel_options=KernelOptions(fused_time_tv=True), **field_kwargs())  # fmt: skip
    assert not f.encoder.fused_time_tv_ready()
    loss = f.time_tv_loss("points", n_points=50, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert f.encoder.embeddings.grad is not None


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_fused_time_tv_gpu_paper_shapes():
    """The paper's time grid on CUDA (64 grids, 16 levels × 2, 2^16-row tiled tables, levels 9–15 ignoring z;
    100,000 points): the compiled kernels (vector reductions on sm_90) within the bounds of today's node,
    with the GPU's allowance for the fractions (module docstring); the loss the same on a second call."""
    from helpers_grid import PAPER_TIME_GRIDS, paper_grid_config

    r = _case(
        "linear", mutants=False, device="cuda", cfg=paper_grid_config(), n=100_000, t_size=PAPER_TIME_GRIDS
    )
    assert r["ready"] == [True, False] and r["today_calls_fused_on"] == 0, r
    for key in ("vs_today", "vs_plain", "today_vs_plain"):
        _assert_within(r, key)
    assert r["again_equal"], r


@needs_triton
@pytest.mark.parametrize("smooth", [False, True])
def test_fused_time_tv_kernels_compile_for_sm90_without_a_gpu(smooth):
    """Both kernels lower to sm_90 cubins (only the interpreter runs them on the CPU), the backward with its
    8-byte vector reductions (inline PTX)."""
    from animate124.scene.grid import kernels as K
    from animate124.scene.grid import timetv
    from animate124.scene.grid import timetv_kernels as TK

    types = {a: "*i32" for a in ("stride_ptr", "wmask_ptr", "start_ptr")}
    common = {"BLOCK": timetv.BLOCK, "SMOOTH": smooth}
    fwd = compile_for_sm90(TK._tv_fwd_kernel, common, types, timetv.WARPS)
    bwd = compile_for_sm90(
        TK._tv_bwd_kernel, {**common, "USE_ASM": True, "ASM": K.VEC2_ASM}, types, timetv.WARPS
    )
    assert "cubin" in fwd.asm and "cubin" in bwd.asm
    assert "red.global.add.v2.f32" in bwd.asm["ptx"]
    assert "atom." not in fwd.asm["ptx"] and "red.global" not in fwd.asm["ptx"]  # no atomics in the forward


def test_bench_time_tv_hook_runs(tmp_path):
    """``bench_field_step.py --time-tv-only`` at tiny sizes on the CPU (the kernels fall back there): both
    variants run on the same points and give the same loss; the record has the keys a GPU call reads."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_field_step.py"
    spec = importlib.util.spec_from_file_location("bench_field_step", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_field_step"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "tv.json"
    res = mod.main(["--time-tv-only", "--smoke", "--device", "cpu", "--iters", "1", "--warmup", "0",
                    "--out", str(out)])["time_tv"]  # fmt: skip
    assert out.exists()
    for name in ("before", "fused"):
        assert {"forward_ms", "backward_ms", "total_ms", "loss"} <= set(res[name]), res
    assert res["before"]["loss"] == res["fused"]["loss"] > 0, res
    assert res["time_grids"] == 4 and res["points"] == 500, res
