"""Resident bytes of each training stage before any activation: weights, fields, optimizer state, grids.

Exact counts, no GPU needed: every prior component is built on the ``meta`` device from the real configs
(``--configs``, the ``hf-configs`` folder) in the dtype the stages load it with on CUDA at ``paper`` settings
(fp16; the VAEs in fp32, the loaders' ``vae_dtype`` default; textual inversion trains through an fp32 text
encoder), and the NeRF fields, occupancy grids and Adam moments come from the resolved ``paper`` config.
This is the floor under each stage's peak (issue 12's 24 GB / 12 GB targets): what is left above it is
activations, graph pools and caching.

    python benchmarks/weights.py --configs .device/hf-configs --out benchmarks/results/weights.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD = "stable-diffusion-v1-5--stable-diffusion-v1-5"
Z123 = "bennyguo--zero123-xl-diffusers"
MS = "ali-vilab--text-to-video-ms-1.7b"
CN = "lllyasviel--control_v11f1e_sd15_tile"
FP16, FP32 = 2, 4


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def _diffusers(cls_name: str, folder: Path) -> int:
    import diffusers

    cls = getattr(diffusers, cls_name)
    with torch.device("meta"):
        return _count(cls.from_config(cls.load_config(str(folder))))


def _transformers(cls_name: str, cfg_name: str, folder: Path) -> int:
    import transformers

    cfg = getattr(transformers, cfg_name).from_pretrained(str(folder))
    with torch.device("meta"):
        return _count(getattr(transformers, cls_name)(cfg))


def component_bytes(configs: Path) -> dict[str, dict[str, int]]:
    """{component: {"params": n, "bytes": as loaded}} for every prior component the stages load."""
    n = {
        "sd.unet": (_diffusers("UNet2DConditionModel", configs / SD / "unet"), FP16),
        "sd.vae": (_diffusers("AutoencoderKL", configs / SD / "vae"), FP32),
        "sd.text_encoder": (
            _transformers("CLIPTextModel", "CLIPTextConfig", configs / SD / "text_encoder"),
            FP16,
        ),
        "zero123.unet": (_diffusers("UNet2DConditionModel", configs / Z123 / "unet"), FP16),
        "zero123.vae": (_diffusers("AutoencoderKL", configs / Z123 / "vae"), FP32),
        "zero123.image_encoder": (
            _transformers(
                "CLIPVisionModelWithProjection", "CLIPVisionConfig", configs / Z123 / "image_encoder"
            ),
            FP16,
        ),
        "video.unet": (_diffusers("UNet3DConditionModel", configs / MS / "unet"), FP16),
        "video.vae": (_diffusers("AutoencoderKL", configs / MS / "vae"), FP32),
        "video.text_encoder": (
            _transformers("CLIPTextModel", "CLIPTextConfig", configs / MS / "text_encoder"),
            FP16,
        ),
        "controlnet": (_diffusers("ControlNetModel", configs / CN), FP16),
    }
    out = {k: {"params": p, "bytes": p * b} for k, (p, b) in n.items()}
    te = out["sd.text_encoder"]["params"]
    out["invert.text_encoder_fp32"] = {"params": te, "bytes": te * FP32}
    return out


def scene_bytes() -> dict[str, dict[str, int]]:
    """The paper config's fields (fp32 parameters, Adam's two moments) and occupancy grids."""
    from animate124.config import resolve_config
    from animate124.stages.build import build_field, build_occupancy

    cfg = resolve_config("paper")
    out: dict[str, dict[str, int]] = {}
    for kind in ("static", "dynamic"):
        field = build_field(cfg.field, kind, "cpu")
        params = sum(p.numel() for p in field.parameters())
        out[f"{kind}.field"] = {"params": params, "bytes": params * FP32}
        out[f"{kind}.adam"] = {"params": 2 * params, "bytes": 2 * params * FP32}
        occ = build_occupancy(cfg, dynamic=kind == "dynamic", device="cpu")
        grid_bytes = sum(t.numel() * t.element_size() for t in occ.state_dict().values())
        out[f"{kind}.occupancy"] = {"params": 0, "bytes": grid_bytes}
        del field
    return out


STAGES = {
    "invert": ["sd.unet", "sd.vae", "invert.text_encoder_fp32"],
    "static": ["sd.unet", "sd.vae", "sd.text_encoder", "zero123.unet", "zero123.vae", "zero123.image_encoder",
               "static.field", "static.adam", "static.occupancy"],
    "dynamic": ["video.unet", "video.vae", "video.text_encoder", "zero123.unet", "zero123.vae",
                "zero123.image_encoder", "dynamic.field", "dynamic.adam", "dynamic.occupancy"],
    "refine": ["video.unet", "video.vae", "video.text_encoder", "zero123.unet", "zero123.vae",
               "zero123.image_encoder", "dynamic.field", "dynamic.adam", "dynamic.occupancy",
               "sd.unet", "sd.vae", "sd.text_encoder", "controlnet", "frozen.field", "frozen.occupancy"],
}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=Path, default=ROOT.parent / "shared" / "data" / "hf-configs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    items = {**component_bytes(args.configs), **scene_bytes()}
    items["frozen.field"] = items["dynamic.field"]
    items["frozen.occupancy"] = items["dynamic.occupancy"]
    gib = 2.0**30
    stages = {
        s: {"gib": round(sum(items[k]["bytes"] for k in keys) / gib, 3), "parts": keys}
        for s, keys in STAGES.items()
    }
    for name, v in items.items():
        print(f"{name:26s} {v['params'] / 1e6:9.1f} M  {v['bytes'] / gib:7.3f} GiB")
    for s, v in stages.items():
        print(f"stage {s:8s} resident before activations: {v['gib']:.2f} GiB")
    res = {
        "items": items,
        "stages": stages,
        "dtypes": "CUDA paper settings: fp16 networks, fp32 VAEs, fp32 fields/Adam",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
