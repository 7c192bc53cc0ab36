"""Full-size priors with RANDOM weights, written as local model folders in the real Hub layouts.

No pretrained weights can be downloaded on the machines we measure on, so speed and memory are measured
with models built from the real configs (``../shared/data/hf-configs``) and random weights: the compute
is the same. The folders are shaped like the Hub repos (configs, tokenizer files, fp16 safetensors), so
the pipeline loads them through its normal loaders when the roles are overridden with local paths:

    python benchmarks/make_random_models.py --configs ../shared/data/hf-configs --out /tmp/random-models
    animate124 run-all image.png "a panda is dancing" \\
        --set models.sd=/tmp/random-models/sd --set models.zero123=/tmp/random-models/zero123 \\
        --set models.video=/tmp/random-models/video --set models.controlnet=/tmp/random-models/controlnet

Weights are initialised on ``--device`` (a GPU makes this take seconds) and saved in fp16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = {
    "sd": "stable-diffusion-v1-5--stable-diffusion-v1-5",
    "zero123": "bennyguo--zero123-xl-diffusers",
    "video": "ali-vilab--text-to-video-ms-1.7b",
    "controlnet": "lllyasviel--control_v11f1e_sd15_tile",
    "clip": "openai--clip-vit-large-patch14",
}


def _save(model: torch.nn.Module, folder: Path, name: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / name))


def _save_vae_unet(unet_cls: type, src: Path, dst: Path, device: str) -> None:
    """The ``vae`` and ``unet`` folders of a diffusers pipeline, random weights, fp16 variant files."""
    from diffusers import AutoencoderKL

    name = "diffusion_pytorch_model.fp16.safetensors"
    _save(_diffusers_model(AutoencoderKL, src / "vae", device), dst / "vae", name)
    _save(_diffusers_model(unet_cls, src / "unet", device), dst / "unet", name)


def _copy_configs(src: Path, dst: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file() and p.name != "_file_manifest.json" and p.suffix in (".json", ".txt", ".yaml"):
            q = dst / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, q)


def _diffusers_model(cls, folder: Path, device: str) -> torch.nn.Module:
    with torch.device(device):
        return cls.from_config(cls.load_config(str(folder)))


def _clip_text(folder: Path, device: str) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder)))


def build(role: str, configs: Path, out: Path, device: str) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel, UNet3DConditionModel

    src = configs / SOURCES[role]
    dst = out / role
    if dst.exists():
        shutil.rmtree(dst)
    _copy_configs(src, dst)
    if role == "sd":
        _save_vae_unet(UNet2DConditionModel, src, dst, device)
        _save(_clip_text(src / "text_encoder", device), dst / "text_encoder", "model.fp16.safetensors")
        for extra in ("safety_checker", "feature_extractor"):
            shutil.rmtree(dst / extra, ignore_errors=True)
    elif role == "video":
        _save_vae_unet(UNet3DConditionModel, src, dst, device)
        _save(_clip_text(src / "text_encoder", device), dst / "text_encoder", "model.fp16.safetensors")
    elif role == "zero123":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        _save_vae_unet(UNet2DConditionModel, src, dst, device)
        with torch.device(device):
            enc = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(str(src / "image_encoder")))
        _save(enc, dst / "image_encoder", "model.fp16.safetensors")
        cfg = json.loads((src / "clip_camera_projection" / "config.json").read_text())
        d = int(cfg.get("embedding_dim", 768))
        extra = int(cfg.get("additional_embeddings", 4))
        proj = torch.nn.Linear(d + extra, d)
        from safetensors.torch import save_file

        save_file(
            {"proj.weight": proj.weight.detach().half(), "proj.bias": proj.bias.detach().half()},
            str(dst / "clip_camera_projection" / "diffusion_pytorch_model.fp16.safetensors"),
        )
    elif role == "clip":  # evaluate's CLIP ViT-L/14 (one model.safetensors at the repo root, as on the Hub)
        from transformers import CLIPConfig, CLIPModel

        with torch.device(device):
            clip = CLIPModel(CLIPConfig.from_pretrained(str(src)))
        _save(clip, dst, "model.safetensors")
    elif role == "controlnet":
        _save(_diffusers_model(ControlNetModel, src, device), dst, "diffusion_pytorch_model.fp16.safetensors")
    else:  # pragma: no cover - argparse restricts the choice
        raise SystemExit(f"unknown role {role}")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=Path, default=ROOT / ".." / "shared" / "data" / "hf-configs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--roles", nargs="+", default=[r for r in SOURCES if r != "clip"], choices=list(SOURCES))
    args = ap.parse_args()
    torch.manual_seed(0)
    for role in args.roles:
        t0 = time.perf_counter()
        path = build(role, args.configs, args.out, args.device)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{role}: {path} ({size / 1e9:.2f} GB, {time.perf_counter() - t0:.1f} s)", flush=True)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    overrides = " ".join(f"--set models.{r}={args.out / r}" for r in args.roles)
    print(f"overrides: {overrides}")


if __name__ == "__main__":
    main()
