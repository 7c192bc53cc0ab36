"""The fused marcher (``animate124/render/march_kernels.py``) against the torch marcher (SPEC §3.2).

The two paths compute ``t_k = near + (k + u)·dt`` and ``x_k = clamp(o + t_k·d)`` with the same operations, but a
GPU compiler may contract them into fused multiply-adds, so a position can differ in its last bit or two, and a
candidate that close to an occupancy-cell face can fall into the neighbouring cell. The contract checked here:

* every sample that one path keeps and the other does not lies within ``FACE_TOL`` cells of a cell face. Error
  analysis: the positions are within 2 fp32 ulps of |x| ≤ 1 (2.4e-7) and ``t`` within 2 ulps of ≤ 4 (9.5e-7)
  times |d| ≤ 1.5, i.e. ≤ 1.7e-6 in world units, which is 1.1e-4 cells at the paper's 128 cells over 2 units;
  ``u·R`` itself rounds at 1.5e-5 (ulp of 128). ``FACE_TOL`` = 3e-4 cells bounds both with a margin, and a
  wrong step, slot or cell index moves samples by whole cells, far beyond it;
* the samples both keep have the same ``t`` and position within 2e-6 (the same bound, in world units);
* the output is in the torch path's order: by ray, then by step.

CPU: the kernel in Triton's interpreter (subprocess, ``helpers_triton.run_interpreted``); GPU (``-m gpu``): the
paper clip's 161 M candidates on CUDA.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers_triton import needs_cuda, needs_triton, run_interpreted

FACE_TOL = 3e-4  # cells (module docstring)
POS_TOL = 2e-6  # world units


def _scene(device: str, res: int, slots: int, views: int, side: int, seed: int):
    """A random-occupancy grid (blobs, so that there are long runs of occupied and empty cells and many faces
    between them) and orbit rays with per-ray jitter."""
    from animate124.render.cameras import generate_rays, orbit_cameras
    from animate124.scene.occupancy import OccupancyGrid

    g = torch.Generator().manual_seed(seed)
    occ = OccupancyGrid(resolution=res, num_slots=slots)
    centres = occ.cell_centers()
    bits = torch.zeros(slots, res**3, dtype=torch.bool)
    for s in range(slots):
        c = torch.rand(6, 3, generator=g) * 1.4 - 0.7
        rad = torch.rand(6, generator=g) * 0.3 + 0.15
        inside = ((centres[:, None] - c[None]) ** 2).sum(-1) < rad[None] ** 2
        noise = torch.rand(res**3, generator=g) < 0.02  # isolated cells too
        bits[s] = inside.any(1) | noise
    occ.bitfield.copy_(bits)
    occ = occ.to(device)
    cams = orbit_cameras(views, height=side, width=side)
    o, d = generate_rays(cams)
    o, d = o.reshape(-1, 3).to(device), d.reshape(-1, 3).to(device)
    slot = torch.arange(views).repeat_interleave(side * side) % slots
    offsets = torch.rand(o.shape[0], generator=g).to(device)
    return occ, o, d, (slot.to(device) if slots > 1 else None), offsets


def _compare(occ, o, d, slots, offsets, max_steps: int, fused_kw: dict | None = None) -> dict:
    """March both ways and measure the contract of the module docstring (float64 on the host)."""
    from animate124.render.marcher import march_rays
    from animate124.render.rays import near_far_from_aabb

    kw = dict(bound=1.0, occupancy=occ, slots=slots, max_steps=max_steps, perturb=True, offsets=offsets)
    ref = march_rays(o, d, fused=False, **kw)
    new = march_rays(o, d, fused=True, **kw, **(fused_kw or {}))
    dt = ref.dt
    near, _, _ = near_far_from_aabb(o.float(), d.float(), 1.0, 0.2)
    near64, off64 = near.double().cpu(), offsets.double().cpu()

    def keys(pk):
        ray = pk.ray_indices.cpu()
        k = torch.round((pk.t.double().cpu() - near64[ray]) / dt - off64[ray]).long()
        return ray * (max_steps + 1) + k, ray, k

    kr, rr, _ = keys(ref)
    kn, rn, knn = keys(new)
    order_ok = bool((kn[1:] > kn[:-1]).all()) if kn.numel() > 1 else True
    common_r = torch.isin(kr, kn)
    common_n = torch.isin(kn, kr)
    only = torch.cat([kr[~common_r], kn[~common_n]])
    # distance to the nearest cell face (in cells) of each candidate only one path kept, in float64
    ray = only // (max_steps + 1)
    k = only % (max_steps + 1)
    t = near64[ray] + (k.double() + off64[ray]) * dt
    x = (o.double().cpu()[ray] + t[:, None] * d.double().cpu()[ray]).clamp(-1, 1)
    u = (x + 1) / 2 * occ.resolution
    face = (u - u.round()).abs().amin(1) if only.numel() else torch.zeros(0)
    # the samples both kept: same t and position
    idx_r = torch.nonzero(common_r).squeeze(1)
    idx_n = torch.nonzero(common_n).squeeze(1)
    # both are sorted by key (checked below for the fused path; the torch path is the reference), so the common
    # samples pair up in order
    assert torch.equal(kr[idx_r], kn[idx_n])
    pos_err = (
        (ref.positions.cpu()[idx_r] - new.positions.cpu()[idx_n]).abs().max().item() if idx_r.numel() else 0.0
    )
    t_err = (ref.t.cpu()[idx_r] - new.t.cpu()[idx_n]).abs().max().item() if idx_r.numel() else 0.0
    delta_err = (
        (ref.deltas.cpu()[idx_r] - new.deltas.cpu()[idx_n]).abs().max().item() if idx_r.numel() else 0.0
    )
    return {
        "samples_ref": int(kr.numel()),
        "samples_new": int(kn.numel()),
        "only_one": int(only.numel()),
        "max_face_distance": float(face.max()) if face.numel() else 0.0,
        "pos_err": pos_err,
        "t_err": t_err,
        "delta_err": delta_err,
        "order_ok": order_ok,
        "ray_sorted": bool((rn[1:] >= rn[:-1]).all()) if rn.numel() > 1 else True,
        "num_rays_ok": new.num_rays == ref.num_rays and new.dt == ref.dt,
    }


def _interp_checks() -> dict:
    torch.manual_seed(0)
    out = {}
    out["slots"] = _compare(*_scene("cpu", res=16, slots=4, views=4, side=12, seed=1), max_steps=96)
    out["static"] = _compare(*_scene("cpu", res=32, slots=1, views=2, side=14, seed=2), max_steps=160)
    # a ray count that is not a multiple of the block, rays that miss the box, and an empty grid
    occ, o, d, _, off = _scene("cpu", res=8, slots=1, views=1, side=9, seed=3)
    d[:5] = torch.tensor([0.0, 0.0, 1.0])  # from the camera at 1.8 away from the box: these miss it
    o[:5] = torch.tensor([0.0, 1.8, 1.5])
    out["ragged"] = _compare(occ, o, d, None, off, max_steps=64)
    occ.bitfield.zero_()
    out["empty"] = _compare(occ, o, d, None, off, max_steps=64)
    return out


def _check(r: dict, name: str) -> None:
    assert r["order_ok"] and r["ray_sorted"] and r["num_rays_ok"], (name, r)
    assert r["max_face_distance"] <= FACE_TOL, (name, r)
    assert r["pos_err"] <= POS_TOL and r["t_err"] <= 4 * POS_TOL, (name, r)
    assert r["delta_err"] == 0.0, (name, r)


@needs_triton
def test_fused_marcher_keeps_the_torch_marchers_samples_in_the_interpreter():
    res = run_interpreted("test_render_march_kernel")
    for name in ("slots", "static", "ragged"):
        _check(res[name], name)
        assert res[name]["samples_ref"] > 300, res[name]  # the scene has samples to compare
        # at most a handful flip, all at faces (the interpreter rounds as torch's CPU kernels do, so mostly none)
        assert res[name]["only_one"] <= max(2, res[name]["samples_ref"] // 10_000), res[name]
    assert res["empty"]["samples_ref"] == res["empty"]["samples_new"] == 0


def test_march_rays_picks_the_torch_path_on_the_cpu_and_rejects_fused_without_triton(monkeypatch):
    """``fused=None`` is the torch path off CUDA (the CPU tests compare against it); ``fused=True`` needs Triton."""
    import animate124.render.march_kernels as mk
    from animate124.render import marcher

    occ, o, d, slots, off = _scene("cpu", res=8, slots=2, views=2, side=4, seed=4)
    called = []
    monkeypatch.setattr(mk, "march_lattice", lambda *a, **k: called.append(1))
    marcher.march_rays(o, d, occupancy=occ, slots=slots, max_steps=32, fused=None)
    assert not called
    monkeypatch.setattr(mk, "HAS_TRITON", False)
    with pytest.raises(marcher.MarchError):
        marcher.march_rays(o, d, occupancy=occ, slots=slots, max_steps=32, fused=True)
    # no occupancy grid: nothing to skip, the torch path whatever ``fused`` says
    assert marcher.march_rays(o, d, max_steps=32, fused=True).num_samples > 0


@needs_triton
def test_march_kernel_compiles_for_sm90_without_a_gpu():
    from helpers_triton import compile_for_sm90, ptxas_report

    from animate124.render.march_kernels import MARCH_BLOCK, _march_kernel

    types = {
        "n_ptr": "*i32", "slot_ptr": "*i32", "bits_ptr": "*u8", "start_ptr": "*i64", "count_ptr": "*i32",
        "ray_ptr": "*i64", "bound": "fp32", "dt": "fp32",
    }  # fmt: skip
    for write in (False, True):
        k = compile_for_sm90(_march_kernel, dict(HAS_SLOTS=True, WRITE=write, BLOCK=MARCH_BLOCK), types, 4)
        rep = ptxas_report(k.asm["ptx"])
        assert rep["spill_store_bytes"] == 0, rep


@pytest.mark.gpu
@needs_cuda
@needs_triton
def test_fused_marcher_on_the_gpu_at_the_paper_clip():
    """4 × 128² rays of the paper clip's orbit, 128³ × 16 slots, 1,024 steps: about 40 M candidates."""
    res = _compare(*_scene("cuda", res=128, slots=16, views=4, side=128, seed=5), max_steps=1024)
    _check(res, "paper")
    assert res["samples_ref"] > 10**6
    assert res["only_one"] <= max(2, math.ceil(res["samples_ref"] * 1e-4)), res


def test_the_stages_pass_raymarch_fused_march_to_the_renderer(monkeypatch):
    """``raymarch.fused_march`` reaches the training render as ``fused_march=None`` (the kernel on CUDA), and
    ``false`` as ``False`` (the torch marcher everywhere)."""
    from animate124.config import resolve_config
    from animate124.render.cameras import orbit_cameras
    from animate124.stages import system as system_mod
    from animate124.stages.static import build_static_system
    from animate124.stages.system import ReferenceData

    monkeypatch.setattr("animate124.models.tiny.ensure_tiny_cache", lambda cache: None)
    seen = []
    monkeypatch.setattr(
        system_mod, "render", lambda *a, **k: seen.append(k["fused_march"]) or SimpleNamespace(num_samples=0)
    )
    reference = ReferenceData(torch.ones(1, 1, 3, 8, 8), torch.ones(1, 1, 1, 8, 8, dtype=torch.bool), None)
    for on in (True, False):
        cfg = resolve_config("tiny", None, {"raymarch": {"fused_march": on}}, [])
        system, _ = build_static_system(cfg, torch.device("cpu"), reference=reference, priors={})
        system.render(
            system.field, system.occupancy, orbit_cameras(1, height=4, width=4), None, shading="albedo",
            ambient=1.0, light_dir=None, bg_color=torch.ones(3), generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    assert seen == [None, False]


def test_the_output_commands_pass_raymarch_fused_march_to_the_renderer(monkeypatch):
    """``render`` and ``export`` frames (``render_frame``) take ``raymarch.fused_march`` through ``render_settings``."""
    from animate124.config import resolve_config
    from animate124.render import outputs
    from animate124.render.cameras import orbit_cameras
    from animate124.stages.render import render_settings

    seen = []

    def fake(*a, **k):
        seen.append(k["fused_march"])
        raise StopIteration

    monkeypatch.setattr(outputs, "render", fake)
    for on in (True, False):
        s = render_settings(resolve_config("tiny", None, {"raymarch": {"fused_march": on}}, []))
        with pytest.raises(StopIteration):
            outputs.render_frame(None, None, orbit_cameras(1, height=4, width=4), None, s, normals=False)
    assert seen == [None, False]
