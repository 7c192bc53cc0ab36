"""Memory kept for backward by the priors' VAE encoder (``run.vae_checkpoint``) and by the renderer's
normals (``raymarch.checkpoint_normals``), each with and without its checkpointing (issue 12).

VAE cases: the full-size VAE of each prior from its real config (random weights; ``--configs``, the
``hf-configs`` folder) encodes a batch of images with grad, as the stages do (dynamic: 16 frames at
ModelScope's 256²; refine: ControlNet's 2 frames at 1024²; static: SD's 1 image at 512²).
Render case (``render:FRAMES:SIDE``): the paper's 4D field (``paper`` preset, fresh, grid backend ``auto``)
renders a clip with normals and lambertian shading, as a dynamic-stage step does; reported per sample.
Reports:

* ``saved_mib``: bytes autograd keeps for backward after the forward (``saved_tensors_hooks``; parameters
  excluded). Device-independent; on the CPU it is the float32 count, half of it in fp16.
* on CUDA also the peak allocated memory (VAE weights in float32 as the stages load them, ``--vae-dtype``,
  under fp16 autocast as in a training step) and the time of forward + backward (CUDA events).

    python benchmarks/backward_memory.py --configs .device/hf-configs --out /tmp/mem.json         # CPU: counts
    python benchmarks/backward_memory.py --configs .device/hf-configs --device cuda --out OUT.json  # + peak
    python benchmarks/backward_memory.py --cases sd:1:64,render:2:32 --out /tmp/m.json             # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from animate124.engine.timing import kept_for_backward  # noqa: E402
from animate124.guidance.common import encoder_moments  # noqa: E402

#: case name -> (config folder, images, side)
CASES = {
    "video": ("ali-vilab--text-to-video-ms-1.7b/vae", 16, 256),  # dynamic/refine: ModelScope, 16 × 256²
    "controlnet": ("stable-diffusion-v1-5--stable-diffusion-v1-5/vae", 2, 1024),  # refine: 2 × 1024²
    "sd": ("stable-diffusion-v1-5--stable-diffusion-v1-5/vae", 1, 512),  # static: SD 1.5, 1 × 512²
    "render": ("", 16, 128),  # dynamic: the paper's 4D field, 16 × 128² clip with normals
}


def measure(vae, n: int, side: int, checkpoint: bool, device: torch.device, dtype: torch.dtype) -> dict:
    x = torch.rand(n, 3, side, side, device=device, dtype=dtype).requires_grad_(True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):  # as in a training step
        m, saved = kept_for_backward(lambda: encoder_moments(vae, x * 2 - 1, checkpoint=checkpoint))
    m.float().square().mean().backward()
    out = {"checkpoint": checkpoint, "images": n, "side": side, "saved_mib": saved / 2**20}
    if cuda:
        end.record()
        torch.cuda.synchronize()
        out["ms"] = start.elapsed_time(end)
        out["peak_over_base_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["seconds"] = time.perf_counter() - t0
    return out


def measure_render(frames: int, side: int, checkpoint: bool, device: torch.device) -> dict:
    """One dynamic-stage-like render (fresh paper field, blob-seeded occupancy; 32³ on the CPU) and its
    backward."""
    from animate124.config import resolve_config
    from animate124.render.cameras import orbit_cameras
    from animate124.render.renderer import render
    from animate124.stages.build import build_field, build_occupancy

    # the CPU's torch grid backend would take minutes over the 128³ × 16 occupancy refresh; the bytes kept
    # per sample do not depend on the occupancy resolution
    over = {} if device.type == "cuda" else {"raymarch": {"occupancy_resolution": 32}}
    cfg = resolve_config("paper", None, over, [])
    torch.manual_seed(0)
    field = build_field(cfg.field, "dynamic", device)
    occ = build_occupancy(cfg, dynamic=True, device=device)
    with torch.no_grad():
        occ.update(field.density, generator=torch.Generator(device=device).manual_seed(0))
    cams = orbit_cameras(frames, height=side, width=side, device=device)
    times = torch.linspace(0, 1, frames, device=device)[None]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    amp = torch.autocast(device.type, dtype=torch.float16, enabled=cuda)
    with amp:
        out, saved = kept_for_backward(
            lambda: render(
                field, cams, times, shading="lambertian", compute_normals=True, occupancy=occ, perturb=True,
                max_steps=cfg.raymarch.max_steps, checkpoint_normals=checkpoint,
                generator=torch.Generator(device=device).manual_seed(1),
            )
        )  # fmt: skip
    (out.rgb.float().mean() + out.orientation.float().mean()).backward()
    res = {
        "checkpoint": checkpoint, "frames": frames, "side": side, "samples": out.num_samples,
        "saved_mib": saved / 2**20, "saved_bytes_per_sample": saved / max(out.num_samples, 1),
    }  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
        res["peak_over_base_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    res["seconds"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=Path, default=REPO.parent / "shared" / "data" / "hf-configs")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--cases", default="video,controlnet,sd,render", help="names from CASES, or NAME:N:SIDE to override"
    )
    p.add_argument("--repeats", type=int, default=2, help="CUDA: timed repeats (the first is a warm-up)")
    p.add_argument(
        "--vae-dtype", choices=("float32", "float16"), default="float32",
        help="the VAE's dtype (the stages load it in float32: the loaders' vae_dtype)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from diffusers import AutoencoderKL

    device = torch.device(args.device)
    dtype = getattr(torch, args.vae_dtype)
    results = []
    for spec in args.cases.split(","):
        name, *over = spec.split(":")
        folder, n, side = CASES[name]
        if over:
            n, side = int(over[0]), int(over[1])
        if name == "render":
            for ck in (False, True):
                reps = [
                    measure_render(n, side, ck, device)
                    for _ in range(args.repeats if device.type == "cuda" else 1)
                ]
                r = {"case": name, **reps[-1]}
                results.append(r)
                print(json.dumps(r), flush=True)
            continue
        cfg = json.loads((args.configs / folder / "config.json").read_text())
        vae = AutoencoderKL.from_config(cfg).to(device, dtype).requires_grad_(False)
        for ck in (False, True):
            reps = [
                measure(vae, n, side, ck, device, dtype)
                for _ in range(args.repeats if device.type == "cuda" else 1)
            ]
            r = {"case": name, **reps[-1]}
            results.append(r)
            print(json.dumps(r), flush=True)
        del vae
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return {"meta": meta, "results": results}


if __name__ == "__main__":
    main()
