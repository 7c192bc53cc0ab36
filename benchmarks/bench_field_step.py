"""The NeRF side of one dynamic-stage guidance step, without the priors (issue 12): variants A/B.

The paper's 4D field (``paper`` preset: 64 time grids, 16 levels, 128³ × 16 occupancy) renders a
16-frame 128² clip with lambertian shading and normals (checkpointed, as the stage), the regularizers
and the points-form time TV (100,000 points) are added, then backward, element-wise gradient clipping
and Adam, as a guidance step does minus the video prior. Timed with CUDA events per part, median over
``--iters`` steps after ``--warmup``. The field is fresh (the density blob: an opaque core in a faint
fog, as every run starts), so the share of samples behind early termination is the blob's; a trained
scene's is reported by ``fit_multiview.py``.

Variants (cumulative): ``base`` (every sample's normal, the per-slice time TV: the defaults measured in
BENCHMARKS.md §8.6), ``live`` (+ ``raymarch.live_normals``),
``fused_tv`` (+ the one-node time TV: the defaults before issue 26), ``seg20`` (+ normals' checkpoint segments of
2^20 samples instead of 2^18: ``raymarch.chunk``), ``ckfield`` (``fused_tv`` + the field's own evaluations
recomputed in backward: ``raymarch.checkpoint_field``), ``ckhalf`` (the same for the samples beyond the first
2^22 only), ``keepnormals`` (``fused_tv`` with the normals' activations kept: ``raymarch.checkpoint_normals``
false), ``fused_normals`` (``fused_tv`` with ``KernelOptions(fused_normals=True)``: the normals' six
evaluations in one stencil kernel, issue 26), ``z_merge`` (``fused_tv`` with ``KernelOptions(z_merge=True)``: 4
corners instead of 8 at the grid levels that ignore z, issue 26), ``fused_normals_z_merge`` (both) and
``fused_march`` (both, + the marcher's lattice walk in one Triton kernel: ``raymarch.fused_march``), ``tv_batched``
(both, + the time TV's grids 8 per encoder call: ``KernelOptions.tv_batched``), ``march_tv`` (all four) and
``tf32x3`` (``march_tv`` with the fused normals' first-layer gradients on TF32x3 tensor cores:
``KernelOptions.stencil_dot``) and ``blas`` (``march_tv`` with those gradients as cuBLAS fp32 products:
``KernelOptions.stencil_linear``) and ``skip0`` (``march_tv`` with the grid backward skipping its all-zero rows,
the samples behind early termination: ``KernelOptions.skip_zero_rows``) and ``blas_skip0`` (both), also named
``defaults``: today's ``KernelOptions()`` (both on since 2026-12-07, BENCHMARKS.md §15.14). Built on 2026-12-08,
not yet measured: ``blas_ones`` (``defaults`` with ``db₁`` inside the ``dW₁`` product,
``KernelOptions.stencil_linear="blas_ones"``), ``tv16`` (``defaults`` with the time TV 16 grids a call,
``KernelOptions.tv_grids_per_call``), ``ones_tv16`` (both) and ``tv_graph`` (``defaults`` with the time TV's one
pass replayed from a CUDA graph, ``KernelOptions.tv_cuda_graph``).

On a GPU each measured variant also records ``host_waits``: how many times one more step makes the host wait
for the GPU (``torch.cuda.set_sync_debug_mode("warn")``), by source line; and ``host_<part>_ms`` beside each part's
device time (``<part>_ms``): how long the host took to launch it, its waits included (a step starts with the GPU
idle); a part whose host time reaches its device time is launch-bound.

Every variant sets ``fused_normals``, ``z_merge``, ``fused_march`` and ``tv_batched`` itself (off unless it names them), so ``fused_tv`` stays the
path before issue 26 although ``z_merge`` is on by default now, and ``march_tv`` stays what it measured.

Issue 26's comparison (``--issue26``): ``fused_tv`` (``before``) and ``defaults`` (today's defaults) on the
fresh field, then on a trained-like scene (``--trained-steps`` Adam steps fitting the density to a moving
shape, then a fresh occupancy grid refreshed ``--trained-refreshes`` times: sharp surfaces, pruned
occupancy; its samples and live share are recorded, it is not a real 2,000-step run), and refine's NeRF side
(the training step + the frozen copy's no-grad render of the frames ControlNet reads + the occupancy refresh
/ 16). Writes ``card``, ``dynamic_ms``, ``dynamic_trained_ms``, ``refine_ms``, ``peak_gib`` and the same keys
under ``before`` at the top level of the JSON (``benchmarks/results/field_step.json``). The same call measures
``fused_normals_z_merge``, ``fused_march``, ``tv_batched``, ``march_tv``, ``tf32x3``, ``blas`` and ``skip0`` too;
every variant's keys are under ``by_variant``.

    python benchmarks/bench_field_step.py --out OUT.json                  # CUDA
    python benchmarks/bench_field_step.py --issue26 --out field_step.json   # CUDA, issue 26's table
    python benchmarks/bench_field_step.py --device cpu --quick --out /tmp/f.json   # CPU: tiny sizes, runs only

Every variant starts from the same field parameters and Adam state (a snapshot taken before the first; before
2026-12-07 each variant went on training the field its predecessors had trained, so the trained scene's live
share fell from 0.69 to 0.47 along the list and the later variants looked faster). ``--rounds 2`` runs the list
twice, the second time in reverse order, and pools the steps of both.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_MARCH_TV = dict(
    live=True,
    fused=True,
    chunk=0,
    fused_normals=True,
    z_merge=True,
    fused_march=True,
    tv_batched=True,
)
VARIANTS = {
    "base": dict(live=False, fused=False, chunk=0),
    "live": dict(live=True, fused=False, chunk=0),
    "fused_tv": dict(live=True, fused=True, chunk=0),
    "seg20": dict(live=True, fused=True, chunk=2**20),
    "ckfield": dict(live=True, fused=True, chunk=0, ckfield=1),
    "ckhalf": dict(live=True, fused=True, chunk=0, ckfield=2**22),
    "keepnormals": dict(live=True, fused=True, chunk=0, keep_normals=True),
    "fused_normals": dict(live=True, fused=True, chunk=0, fused_normals=True),
    "z_merge": dict(live=True, fused=True, chunk=0, z_merge=True),
    "fused_normals_z_merge": dict(live=True, fused=True, chunk=0, fused_normals=True, z_merge=True),
    "fused_march": dict(live=True, fused=True, chunk=0, fused_normals=True, z_merge=True, fused_march=True),
    "tv_batched": dict(live=True, fused=True, chunk=0, fused_normals=True, z_merge=True, tv_batched=True),
    "march_tv": _MARCH_TV,
    "tf32x3": {**_MARCH_TV, "stencil_dot": "tf32x3"},
    "blas": {**_MARCH_TV, "stencil_linear": "blas"},
    "skip0": {**_MARCH_TV, "skip_zero_rows": True},
    "blas_skip0": {**_MARCH_TV, "stencil_linear": "blas", "skip_zero_rows": True},
}
#: today's kernel defaults (``KernelOptions()``, since 2026-12-07: ``blas_skip0``; a test holds them equal)
VARIANTS["defaults"] = VARIANTS["blas_skip0"]
# built on 2026-12-08 without a GPU: db₁ inside the dW₁ product; the time TV 16 grids a call (§15.17)
VARIANTS["blas_ones"] = {**VARIANTS["defaults"], "stencil_linear": "blas_ones"}
VARIANTS["tv16"] = {**VARIANTS["defaults"], "tv_grids_per_call": 16}
VARIANTS["ones_tv16"] = {**VARIANTS["blas_ones"], "tv_grids_per_call": 16}
VARIANTS["tv_graph"] = {**VARIANTS["defaults"], "tv_cuda_graph": True}
# before (the path before issue 26), after (today's defaults: the fused normals, z-merge, the fused marcher, the
# batched time TV, the first layer's gradients on cuBLAS and the grid backward's zero-row skip)
ISSUE26 = ("fused_tv", "defaults")
ISSUE26_EXTRA = (
    "fused_normals_z_merge",
    "fused_march",
    "tv_batched",
    "march_tv",
    "tf32x3",
    "blas",
    "skip0",
)  # measured in the same --issue26 call


def _ops_by_origin(prof: Any, cuda: bool, top: int = 40) -> list[str]:
    """The profiled torch operators' own time grouped by operator and origin: the nearest frames of ours
    (``animate124/``, ``benchmarks/``) above the call, or the autograd node that ran it in backward. Says which
    lines make a step's many small element-wise kernels (the per-operator table cannot)."""
    tally: dict[tuple[str, str], list[float]] = {}
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        own = e.self_device_time_total if cuda else e.self_cpu_time_total
        if own <= 0:
            continue
        frames, p = [], e.cpu_parent
        while p is not None and len(frames) < 3:
            if "animate124/" in p.name or "benchmarks/" in p.name or p.name.startswith("autograd::engine"):
                frames.append(
                    p.name.split("animate124/")[-1].replace("autograd::engine::evaluate_function: ", "")
                )
            p = p.cpu_parent
        t = tally.setdefault((e.name, " <- ".join(frames) or "(none of ours)"), [0, 0.0])
        t[0] += 1
        t[1] += own
    rows = sorted(tally.items(), key=lambda kv: -kv[1][1])[:top]
    return [f"{ms / 1e3:8.2f} ms {n:5d}x {op}: {where}" for (op, where), (n, ms) in rows]


def fit_moving_shape(field, cfg, steps: int, dev: torch.device, points: int = 2**18) -> None:
    """A trained-like field: ``steps`` Adam steps fitting the density logit ``h₀ + blob`` to +4 inside (σ ≈ 55:
    a ray terminates about 0.17 into the shape, a third of the body's width, as a trained scene keeps about a
    third of its samples live) and −8 outside a moving shape (a body ellipsoid and a sphere circling it, centre ``(0.4cos 2πt, 0.1, 0.4sin 2πt)``),
    at random points and clip times. Sharp surfaces and empty space, as a trained scene has; not a real run."""
    from animate124.stages.build import build_optimizer

    opt = build_optimizer(cfg, field, "dynamic")
    g = torch.Generator(device=dev).manual_seed(2)
    for _ in range(steps):
        x = torch.rand(points, 3, generator=g, device=dev) * 2 - 1
        t = torch.randint(0, 16, (points, 1), generator=g, device=dev).float() / 15
        ang = 2 * torch.pi * t[:, 0]
        c = torch.stack([0.4 * torch.cos(ang), torch.full_like(ang, 0.1), 0.4 * torch.sin(ang)], -1)
        body = ((x / torch.tensor([0.22, 0.5, 0.22], device=dev)) ** 2).sum(-1) < 1
        ball = ((x - c) ** 2).sum(-1) < 0.18**2
        target = torch.where(body | ball, 4.0, -8.0)
        h = field.sigma_net(field.features(x, t))[:, 0].float() + field.density_blob(x)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(h, target).backward()
        opt.step()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--smoke", "--quick", action="store_true", help="tiny sizes on the CPU (checks that it runs)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--issue26", action="store_true", help="before/after on fresh and trained scenes, refine")
    p.add_argument(
        "--trained", action="store_true",
        help="also the trained-like scene and refine for --variants (--issue26 implies it, with its variants)",
    )  # fmt: skip
    p.add_argument("--trained-steps", type=int, default=600)
    p.add_argument("--trained-refreshes", type=int, default=8)
    p.add_argument(
        "--rounds", type=int, default=1,
        help="run the variant list this many times, every other round in reverse order; each variant starts "
        "from the same field and optimizer state, and its medians pool the steps of every round",
    )  # fmt: skip
    p.add_argument(
        "--trace",
        type=Path,
        help="after each fresh variant, 3 more steps under torch.profiler: its kernel and operator tables "
        "(self device time, calls; host syncs) to TRACE/<variant>.txt",
    )
    args = p.parse_args(argv)
    if args.issue26:
        args.variants = ",".join(ISSUE26 + ISSUE26_EXTRA)
        args.trained = True

    from animate124 import losses as L
    from animate124.config import resolve_config
    from animate124.render.cameras import orbit_cameras
    from animate124.render.renderer import render
    from animate124.stages.build import build_field, build_occupancy, build_optimizer

    cuda = torch.cuda.is_available() and not args.smoke and args.device != "cpu"
    dev = torch.device("cuda" if cuda else "cpu")
    over: dict = {}
    frames, side, tv_points = 16, 128, 100_000
    if args.smoke:
        over = {"raymarch": {"occupancy_resolution": 16}, "field": {"time_grid_size": 4, "num_levels": 4}}
        frames, side, tv_points = 2, 16, 500
    cfg = resolve_config("paper", None, over, [])
    torch.manual_seed(0)
    field = build_field(cfg.field, "dynamic", dev)
    occ = build_occupancy(cfg, dynamic=True, device=dev)
    gen_occ = torch.Generator(device=dev).manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        occ.update(field.density, generator=gen_occ)
    if cuda:
        torch.cuda.synchronize()
    occ_s = time.perf_counter() - t0
    opt = build_optimizer(cfg, field, "dynamic")
    params = [q for g in opt.param_groups for q in g["params"]]
    cams = orbit_cameras(frames, height=side, width=side, device=dev)
    times = torch.linspace(0, 1, frames, device=dev)[None]
    r = cfg.raymarch

    def event():
        return torch.cuda.Event(enable_timing=True) if cuda else None

    base_opts = field.encoder.kernel_options
    st = {"field": field, "occ": occ, "opt": opt, "params": params, "frozen": None}

    def set_variant(v: dict) -> None:
        """The variant's kernel options on the trained field and its frozen copy (same tables either way)."""
        ko = dataclasses.replace(
            base_opts, fused_normals=v.get("fused_normals", False), z_merge=v.get("z_merge", False),
            tv_batched=v.get("tv_batched", False), stencil_dot=v.get("stencil_dot", "ieee"),
            stencil_linear=v.get("stencil_linear", "triton"), skip_zero_rows=v.get("skip_zero_rows", False),
            tv_grids_per_call=v.get("tv_grids_per_call", 8), tv_cuda_graph=v.get("tv_cuda_graph", False),
        )  # fmt: skip
        for f in (st["field"], st["frozen"]):
            if f is not None:
                f.encoder.kernel_options = ko

    def step(v: dict, gen: torch.Generator) -> dict:
        f, opt, params = st["field"], st["opt"], st["params"]
        ev = [event() for _ in range(5)]

        host: list[float] = []  # when the host had launched each part (its own waits on the GPU included)

        def mark(i: int) -> None:
            if cuda:
                ev[i].record()
            host.append(time.perf_counter())

        mark(0)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
            out = render(
                f, cams, times, shading="lambertian", ambient=0.5, light_dir=torch.tensor([0.0, 1.0, 0.0]),
                bg_color=torch.rand(3, generator=gen), occupancy=st["occ"], perturb=True, generator=gen,
                compute_normals=True, normal_eps=r.normal_eps, max_steps=r.max_steps, min_near=r.min_near,
                t_thresh=r.transmittance_thresh, chunk=v["chunk"] or None,
                checkpoint_normals=not v.get("keep_normals", False),
                live_normals=v["live"], checkpoint_field=v.get("ckfield", 0),
                fused_march=None if v.get("fused_march") else False,
            )  # fmt: skip
            loss = out.rgb.float().mean() + 1e-3 * L.entropy_loss(out.weights)
            loss = loss + 1e-2 * L.orientation_loss(out.orientation) + 0.5 * L.normal_tv_loss(out.normal[0])
            mark(1)
            tv = f.time_tv_loss("points", n_points=tv_points, generator=gen, fused=v["fused"])
            mark(2)
        (loss + 0.1 * tv).backward()
        mark(3)
        torch.nn.utils.clip_grad_value_(params, 1.0)
        opt.step()
        mark(4)
        res = {"samples": out.num_samples, "live": int((out.weights > 0).sum())}
        if cuda:
            torch.cuda.synchronize()
            names = ("render", "time_tv", "backward", "optimizer")
            res.update({n: ev[i].elapsed_time(ev[i + 1]) for i, n in enumerate(names)})
            res["total"] = ev[0].elapsed_time(ev[4])
            # host time per part: a part whose host time reaches its device time is launch-bound (issue 26)
            res.update({f"host_{n}": 1e3 * (host[i + 1] - host[i]) for i, n in enumerate(names)})
            res["host_total"] = 1e3 * (host[4] - host[0])
        return res

    def frozen_render(v: dict, gen: torch.Generator) -> float:
        """Refine's frozen copy: a no-grad render of the frames ControlNet reads (``refine.frames``)."""
        e0, e1 = event(), event()
        if cuda:
            e0.record()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.float16, enabled=cuda):
            render(
                st["frozen"], cams, times, shading="lambertian", ambient=0.5, light_dir=torch.tensor([0.0, 1.0, 0.0]),
                bg_color=torch.rand(3, generator=gen), occupancy=st["frozen_occ"], perturb=True, generator=gen,
                compute_normals=True, normal_eps=r.normal_eps, max_steps=r.max_steps, min_near=r.min_near,
                t_thresh=r.transmittance_thresh, checkpoint_normals=True, live_normals=True, frames=read_frames,
                fused_march=None if v.get("fused_march") else False,
            )  # fmt: skip
        if not cuda:
            return 0.0
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1)

    def host_waits(v: dict, gen: torch.Generator, refine: bool) -> dict:
        """One more step (and frozen render) with ``torch.cuda.set_sync_debug_mode("warn")``: how many times it
        makes the host wait for the GPU, by the line that asked (issue 26: "no host waits inside a step"; a wait
        empties the queue the host has built ahead, so the launches after it run on an idle GPU). ``count``
        leaves out this script's own (its timing and sample counts)."""
        import warnings

        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(v, gen)
                if refine:
                    frozen_render(v, gen)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        where: dict[str, int] = {}
        for w in caught:
            if "synchroniz" in str(w.message):
                key = f"{Path(w.filename).name}:{w.lineno}"
                where[key] = where.get(key, 0) + 1
        ours = {k: n for k, n in where.items() if not k.startswith(Path(__file__).name)}  # not the timing's
        return {"count": sum(ours.values()), "where": dict(sorted(where.items(), key=lambda kv: -kv[1]))}

    def refresh_ms() -> float:
        """One occupancy refresh of the trained field (every ``raymarch.update_interval`` steps)."""
        if not cuda:
            return 0.0
        torch.cuda.synchronize()
        e0, e1 = event(), event()
        e0.record()
        with torch.no_grad():
            st["occ"].update(st["field"].density, generator=gen_occ)
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1)

    def trace(name: str, v: dict) -> None:
        """Three steps of ``v`` under torch.profiler: where the step's device time goes, by operator and kernel."""
        from torch.profiler import ProfilerActivity, profile

        gen = torch.Generator().manual_seed(3)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts, with_stack=True) as prof:
            for _ in range(3):
                step(v, gen)
        ka = prof.key_averages()
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        lines = _ops_by_origin(prof, cuda)
        syncs = [e for e in ka if "Synchronize" in e.key or "MemcpyAsync" in e.key or e.key == "aten::item"]
        args.trace.mkdir(parents=True, exist_ok=True)
        text = (
            f"{name}: 3 steps, ms per step = the totals / 3\n\n"
            + ka.table(sort_by=sort, row_limit=60, max_name_column_width=90)
            + "\nhost syncs and copies:\n"
            + "\n".join(f"{e.key}: {e.count} calls, {e.cpu_time_total / 1e3:.1f} ms host" for e in syncs)
            + "\n\ntorch operators by origin (own device time of 3 steps, top 40):\n"
            + "\n".join(lines)
        )
        (args.trace / f"{name}.txt").write_text(text)

    def snapshot() -> dict:
        """The field's parameters and the optimizer's state: every variant starts from these (a variant's steps
        train the field, so without it a later variant would see fewer live samples than an earlier one)."""
        return {
            "field": copy.deepcopy(st["field"].state_dict()),
            "opt": copy.deepcopy(st["opt"].state_dict()),
        }

    def restore(snap: dict) -> None:
        st["field"].load_state_dict(snap["field"])
        st["opt"].load_state_dict(copy.deepcopy(snap["opt"]))

    pooled: dict = {}  # (phase, name) -> the timed steps of every round

    def measure(name: str, v: dict, snap: dict, refine: bool = False) -> dict:
        restore(snap)
        set_variant(v)
        gen = torch.Generator().manual_seed(1)
        for _ in range(args.warmup):
            step(v, gen)
            if refine:
                frozen_render(v, gen)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        runs, frozen = pooled.setdefault((refine, name), ([], []))
        for _ in range(args.iters):
            runs.append(step(v, gen))
            if refine:
                frozen.append(frozen_render(v, gen))
        summary = {
            "rounds": len(runs) // args.iters,
            "settings": v,
            "samples": runs[-1]["samples"],
            "live_share": runs[-1]["live"] / max(1, runs[-1]["samples"]),
        }
        for k in ("render", "time_tv", "backward", "optimizer", "total"):
            for key in (k, f"host_{k}"):
                if key in runs[0]:
                    summary[f"{key}_ms"] = statistics.median(x[key] for x in runs)
        if refine:
            summary["frozen_render_ms"] = statistics.median(frozen)
            if "total_ms" in summary:
                summary["step_plus_frozen_ms"] = statistics.median(
                    x["total"] + y for x, y in zip(runs, frozen, strict=True)
                )
        if cuda:
            peaks = pooled.setdefault(("peak", refine, name), [])
            peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            summary["peak_allocated_gib"] = max(peaks)
            summary["host_waits"] = host_waits(v, gen, refine)
        print(
            f"{name}{' (trained, refine)' if refine else ''}, rounds {summary['rounds']}:",
            json.dumps(
                {
                    k: (round(x, 2) if isinstance(x, float) else x)
                    for k, x in summary.items()
                    if k != "settings"
                }
            ),
            flush=True,
        )
        return summary

    results: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "occupancy_refresh_s_first": occ_s,
        "variants": {},
    }
    if cuda:  # one more refresh, warm
        results["occupancy_refresh_ms"] = refresh_ms()
    names = args.variants.split(",")
    snap = snapshot()
    for rnd in range(args.rounds):  # rounds alternate the order, so no variant always runs first or last
        for name in names if rnd % 2 == 0 else names[::-1]:
            results["variants"][name] = measure(name, VARIANTS[name], snap)  # pooled over the rounds so far
            if args.trace and rnd == 0:
                restore(snap)
                trace(name, VARIANTS[name])
    if args.trained:
        from animate124.guidance.controlnet import select_frames

        read_frames = select_frames(frames, cfg.refine.frames)
        set_variant(VARIANTS[ISSUE26[0]])
        fit_moving_shape(field, cfg, 5 if args.smoke else args.trained_steps, dev)
        st["occ"] = build_occupancy(cfg, dynamic=True, device=dev)
        for _ in range(args.trained_refreshes):
            with torch.no_grad():
                st["occ"].update(field.density, generator=gen_occ)
        st["opt"] = build_optimizer(cfg, field, "dynamic")
        st["params"] = [q for g in st["opt"].param_groups for q in g["params"]]
        st["frozen"] = copy.deepcopy(field).requires_grad_(False).eval()
        st["frozen_occ"] = copy.deepcopy(st["occ"])
        results["trained"] = {"refresh_ms": refresh_ms(), "read_frames": read_frames, "variants": {}}
        snap = snapshot()
        for rnd in range(args.rounds):
            for name in names if rnd % 2 == 0 else names[::-1]:
                results["trained"]["variants"][name] = measure(name, VARIANTS[name], snap, refine=True)
        if all(n in names for n in ISSUE26):
            results.update(issue26_summary(results, update_interval=r.update_interval))
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def issue26_summary(results: dict, update_interval: int) -> dict:
    """Issue 26's keys: ``card``, ``dynamic_ms`` (fresh field), ``dynamic_trained_ms``, ``refine_ms`` (trained:
    step + frozen render + occupancy refresh / update_interval), ``peak_gib`` (largest of the runs), for the
    ``defaults`` variant (today's defaults) at the top level and for the path before issue 26 under ``before``; every
    measured variant's under ``by_variant``."""

    def keys(name: str) -> dict:
        fresh = results["variants"][name]
        trained = results["trained"]["variants"][name]
        refresh = results["trained"]["refresh_ms"]
        out = {
            "card": results["device"],
            "dynamic_ms": fresh.get("total_ms"),
            "dynamic_trained_ms": trained.get("total_ms"),
            "refine_ms": None,
            "peak_gib": max(fresh.get("peak_allocated_gib", 0.0), trained.get("peak_allocated_gib", 0.0)),
        }
        if "step_plus_frozen_ms" in trained:
            out["refine_ms"] = trained["step_plus_frozen_ms"] + refresh / update_interval
        return out

    before, after = ISSUE26
    by_variant = {name: keys(name) for name in results["trained"]["variants"]}
    return {**keys(after), "before": keys(before), "by_variant": by_variant}


if __name__ == "__main__":
    main()
