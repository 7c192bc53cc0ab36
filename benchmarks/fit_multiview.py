"""Multi-view fitting benchmark: field + marcher quality and speed on real posed images.

Fits a ``StaticField`` to NeRF-synthetic lego (or a ``DynamicField`` to a D-NeRF scene) with a
photometric MSE only, for a wall-clock training budget, then reports test PSNR/SSIM over all test
views, iterations, samples per ray and peak CUDA memory. Prints a table and writes JSON to ``--out``.

    python benchmarks/fit_multiview.py --minutes 5 --out fit_lego.json                 # GPU, lego
    python benchmarks/fit_multiview.py --scene dnerf:standup --minutes 5 --out fit_standup.json
    python benchmarks/fit_multiview.py --device cpu --quick --out /tmp/fit.json          # smoke test

Data conventions (../shared/data/README.md): ``transforms_*.json`` c2w in OpenGL camera convention
(camera looks down −z, +y up), world z-up; images RGBA composited on white ``rgb·a + (1−a)``;
square images so fovy = ``camera_angle_x``. The renderer's ray code takes any OpenGL c2w, so the
world frame is used as is (z-up is fine: the field has no preferred axis). **Scene scale:** the
objects fit in about [−1.5, 1.5]³, so every camera position is multiplied by
``--scene-scale`` = bound/1.5 = 0.667 (bound 1); densities are then per scaled unit.

Training (SPEC §3.2, §3.9 defaults): random rays from all train images each step (``--rays``, pixel
centres), white background, the packed marcher with perturbation, Adam(β=(0.9,0.99), eps 1e−15) with
lr 1e−2 for the grids and 1e−3 for the MLP, constant. Occupancy grid (128³; 16 slots for D-NeRF) is
updated every 16 steps; during ``--occ-warmup`` steps it is updated but not used for skipping (an
untrained grid would hide space that still has to be learnt). The density blob is off by default
(``--blob-density 0``): it is meant for the object-centred Animate124 scenes.
Only the training loop is timed (occupancy updates included); evaluation is excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from animate124.render.cameras import generate_rays  # noqa: E402
from animate124.render.renderer import render, render_rays  # noqa: E402
from animate124.scene.occupancy import OccupancyGrid  # noqa: E402
from benchmarks.multiview_data import Split, load_split, psnr, scene_dir, ssim  # noqa: E402,F401


# ----------------------------------------------------------------------------- main
def build_field(args: argparse.Namespace, dynamic: bool, device: torch.device) -> torch.nn.Module:
    from animate124.scene.fields import DynamicField, StaticField
    from animate124.scene.grid import GridEncodingConfig

    log2 = args.log2_table if args.log2_table is not None else (16 if dynamic else 19)
    # SPEC 3.1 grid and MLP; the library has no defaults for them (the config schema has)
    cfg = GridEncodingConfig(
        grid_type=args.grid,
        num_levels=16,
        level_dim=2,
        base_resolution=16,
        desired_resolution=int(args.desired_res),
        log2_table_size=log2,
    )
    common = dict(
        hidden_dim=64,
        num_layers=2,
        blob_density=args.blob_density,
        blob_radius=0.2,
        bound=args.bound,
        backend=args.backend,
    )
    if dynamic:
        field = DynamicField(cfg, time_grid_size=args.time_grids, **common)
    else:
        field = StaticField(cfg, **common)
    return field.to(device)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", default="lego", help="'lego' (NeRF-synthetic) or 'dnerf:<name>' (D-NeRF)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training wall-clock budget (default 5; 0.05 with --quick)",
    )
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many steps (0 = budget only)")
    p.add_argument("--rays", type=int, default=2**14, help="rays per step")
    p.add_argument("--grid", choices=["hash", "tiled"], default="hash")
    p.add_argument("--log2-table", type=int, default=None, help="default 19 (static), 16 (dynamic)")
    p.add_argument("--desired-res", type=float, default=2048.0)
    p.add_argument("--backend", default="auto", help="grid backend: auto, torch, triton, tcnn")
    p.add_argument("--time-grids", type=int, default=64)
    p.add_argument("--time-tv", type=float, default=0.0, help="weight of the time TV loss (D-NeRF)")
    p.add_argument("--blob-density", type=float, default=0.0)
    p.add_argument("--bound", type=float, default=1.0)
    p.add_argument("--scene-scale", type=float, default=None, help="pose scale, default bound/1.5")
    p.add_argument("--lr-grid", type=float, default=1e-2)
    p.add_argument("--lr-mlp", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=1024, help="marcher steps across the box diagonal")
    p.add_argument("--occ-res", type=int, default=128)
    p.add_argument("--occ-interval", type=int, default=16)
    p.add_argument("--occ-warmup", type=int, default=256)
    p.add_argument("--delta-mode", choices=["metric", "upstream"], default="metric")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast for the field")
    p.add_argument("--compile", action="store_true", help="torch.compile the field's MLP")
    p.add_argument("--eval-views", type=int, default=0, help="0 = all test views")
    p.add_argument("--eval-chunk", type=int, default=2**16, help="rays per chunk at eval")
    p.add_argument("--downscale", type=int, default=1, help="image downscale factor (quick tests)")
    p.add_argument("--train-views", type=int, default=0, help="0 = all train views")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny budget, few views, low res")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-renders", type=Path, default=None, help="write a few test renders here")
    p.add_argument("--out", type=Path, default=Path("fit_multiview.json"))
    args = p.parse_args(argv)
    args.min_iters = 1
    if args.quick:
        args.minutes = 0.05 if args.minutes is None else args.minutes
        args.downscale = max(args.downscale, 16)
        args.train_views = args.train_views or 4
        args.eval_views = args.eval_views or 2
        args.rays = min(args.rays, 256)
        args.max_steps = min(args.max_steps, 64)
        args.min_iters = 3
        args.occ_res = min(args.occ_res, 16)
        args.occ_warmup = min(args.occ_warmup, 4)
        args.occ_interval = min(args.occ_interval, 4)
        args.log2_table = args.log2_table or 12
        args.desired_res = min(args.desired_res, 128.0)
        args.time_grids = min(args.time_grids, 4)
    if args.minutes is None:
        args.minutes = 5.0
    if args.scene_scale is None:
        args.scene_scale = args.bound / 1.5
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dynamic = args.scene.startswith("dnerf:")
    root = scene_dir(args.data_root, args.scene)
    if not root.exists():
        raise SystemExit(f"scene data not found: {root} (pass --data-root)")
    train = load_split(root, "train", args.scene_scale, args.downscale, args.train_views or None)
    test = load_split(root, "test", args.scene_scale, args.downscale, args.eval_views or None)

    # all train rays, on the device (pixel centres, OpenGL camera convention)
    origins, dirs = generate_rays(train.cameras.to(device))
    n_img, hw = origins.shape[:2]
    cam_origin = origins[:, 0].contiguous()  # [N, 3]
    dirs = dirs.reshape(-1, 3)
    pixels = train.images.reshape(-1, 3).to(device)
    ray_time = None if train.times is None else train.times.to(device).repeat_interleave(hw)

    field = build_field(args, dynamic, device)
    if args.compile:
        field.sigma_net = torch.compile(field.sigma_net, dynamic=True)
    groups = [
        {"params": list(field.encoder.parameters()), "lr": args.lr_grid},
        {"params": list(field.sigma_net.parameters()), "lr": args.lr_mlp},
    ]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    occ = OccupancyGrid(
        resolution=args.occ_res, num_slots=16 if dynamic else 1, bound=args.bound, dynamic=dynamic
    ).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    white = torch.ones(3, device=device)

    def density_fn(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
            return field.density(x, t).float()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    budget = args.minutes * 60.0
    step = 0
    samples_total = 0
    loss_hist: list[float] = []
    t0 = time.perf_counter()
    while True:
        if step % args.occ_interval == 0:
            occ.update(density_fn, generator=gen)
        idx = torch.randint(0, n_img * hw, (args.rays,), device=device, generator=gen)
        o = cam_origin[idx // hw]
        d = dirs[idx]
        times = None if ray_time is None else ray_time[idx]
        use_occ = step >= args.occ_warmup
        slots = occ.slot_for_time(times) if (use_occ and times is not None) else None
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
            out = render_rays(
                field,
                o,
                d,
                times=times,
                slots=slots,
                bg_color=white,
                occupancy=occ if use_occ else None,
                perturb=True,
                generator=gen,
                max_steps=args.max_steps,
                delta_mode=args.delta_mode,
            )
        loss = F.mse_loss(out.rgb, pixels[idx])
        if dynamic and args.time_tv > 0:
            loss = loss + args.time_tv * field.time_tv_loss("table")  # the form measured in BENCHMARKS §1
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        samples_total += out.num_samples
        step += 1
        if step % 100 == 0:
            loss_hist.append(float(loss.detach()))  # one sync per 100 steps
            if step % 1000 == 0:
                print(f"step {step} loss {loss_hist[-1]:.5f} {time.perf_counter() - t0:.0f}s", flush=True)
        if args.max_iters and step >= args.max_iters:
            break
        if step >= args.min_iters and time.perf_counter() - t0 >= budget:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t0

    # ------------------------------------------------------------------ evaluation (not timed)
    field.eval()
    ps, ss = [], []
    zero_w = eval_samples = 0
    t_eval = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
        for i in range(len(test.cameras)):
            cam = test.cameras[i].to(device)
            tt = None if test.times is None else test.times[i : i + 1].view(1, 1).to(device)
            r = render(
                field,
                cam,
                tt,
                bg_color=white,
                occupancy=occ,
                max_steps=args.max_steps,
                delta_mode=args.delta_mode,
                ray_chunk=args.eval_chunk,
            )
            pred = r.rgb[0, 0].permute(1, 2, 0).float()
            zero_w += int((r.weights == 0).sum())  # behind early termination (or zero alpha)
            eval_samples += r.num_samples
            gt = test.images[i].to(device)
            ps.append(psnr(pred, gt))
            ss.append(ssim(pred, gt))
            if args.save_renders is not None and i < 8:
                from animate124.render.video import save_image

                save_image(args.save_renders / f"test_{i:03d}.png", pred)
    eval_s = time.perf_counter() - t_eval
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "scene": args.scene,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "grid": args.grid,
        "log2_table": args.log2_table if args.log2_table is not None else (16 if dynamic else 19),
        "backend": getattr(field, "backend", args.backend),
        "amp": args.amp,
        "train_views": n_img,
        "test_views": len(ps),
        "resolution": [train.cameras.height, train.cameras.width],
        "scene_scale": args.scene_scale,
        "train_seconds": train_s,
        "iterations": step,
        "it_per_s": step / max(train_s, 1e-9),
        "rays_per_step": args.rays,
        "mean_samples_per_ray": samples_total / max(step * args.rays, 1),
        # samples of the test renders with weight exactly 0: an upper bound of what raymarch.live_normals
        # skips (it skips those behind early termination; a zero-alpha sample before it keeps its normal)
        "zero_weight_sample_fraction": zero_w / max(eval_samples, 1),
        "final_occupancy": float(occ.occupancy_ratio().mean()),
        "loss_every_100": loss_hist,
        "psnr_mean": float(np.mean(ps)),
        "ssim_mean": float(np.mean(ss)),
        "psnr_per_view": ps,
        "eval_seconds": eval_s,
        "peak_cuda_gib": peak,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    rows = [
        ("scene", result["scene"]),
        ("device", result["device"]),
        ("grid / backend", f"{result['grid']} 2^{result['log2_table']} / {result['backend']}"),
        ("train time [s]", f"{train_s:.1f}"),
        ("iterations", f"{step} ({result['it_per_s']:.1f} it/s)"),
        ("samples / ray", f"{result['mean_samples_per_ray']:.1f}"),
        ("zero-weight samples (test)", f"{result['zero_weight_sample_fraction']:.3f}"),
        ("occupied cells", f"{result['final_occupancy']:.3f}"),
        (f"test PSNR ({len(ps)} views)", f"{result['psnr_mean']:.2f} dB"),
        ("test SSIM", f"{result['ssim_mean']:.4f}"),
        ("eval time [s]", f"{eval_s:.1f}"),
        ("peak CUDA memory [GiB]", "-" if peak is None else f"{peak:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"JSON written to {args.out}")
    return result


if __name__ == "__main__":
    main()
