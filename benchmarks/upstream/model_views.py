"""Upstream's ``checkpoints/`` folder, made from the project's full-size random-weight models.

Upstream Animate124 loads its four priors from fixed relative paths (SPEC 11.9): ``checkpoints/
stable-diffusion-v1-5``, ``checkpoints/zero123-xl``, ``checkpoints/text-to-video-ms-1.7b`` and
``checkpoints/controlnet-v11/control_v11f1e_sd15_tile``. ``benchmarks/make_random_models.py`` writes the same
models (real configs, random weights) for the project, in the Hub layouts the project downloads. This script
lays those files out as upstream expects them, so that upstream's code loads them unchanged:

* every weight file is a symbolic link to the project's file (no copy); a variant file
  ``X.fp16.safetensors`` is also linked as ``X.safetensors``, the name diffusers 0.20.2 and transformers load
  when no ``variant`` is asked for (upstream asks for none; the tensors are fp16 either way);
* ``model_index.json`` names ``null`` for a component whose folder is absent;
* Stable Diffusion gets a random-weight ``safety_checker`` and its ``feature_extractor`` (with ``--configs``):
  upstream's ``DiffusionPipeline.from_pretrained`` loads them and moves them to the GPU with the rest, so they
  count in its memory (the project's random models leave them out: the project never loads them);
* Zero123 gets upstream's layout (``Yuyang-z/zero123-xl``, SPEC 10): ``cc_projection/`` holding a
  ``ProjectionModel`` (config ``in_channels 772, out_channels 768``, parameter ``cc_projection``), made from the
  same random Linear as the project's ``clip_camera_projection`` (parameter ``proj``).

Usage (the GPU machine, after ``make_random_models.py``):
``python3 benchmarks/upstream/model_views.py --models /tmp/a124/models --configs .device/hf-configs --out DIR``
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

SD_CONFIGS = "stable-diffusion-v1-5--stable-diffusion-v1-5"
VIEWS = {  # upstream's path under checkpoints/ -> the project's random-model folder
    "stable-diffusion-v1-5": "sd",
    "zero123-xl": "zero123",
    "text-to-video-ms-1.7b": "video",
    "controlnet-v11/control_v11f1e_sd15_tile": "controlnet",
}
# Yuyang-z/zero123-xl's own model_index.json was never seen (hf-configs/SOURCES.md). Upstream passes
# image_encoder, cc_projection, safety_checker and scheduler to Zero1to3StableDiffusionPipeline.from_pretrained
# and loads the rest from the folder: this index names those (kxic/zero123-xl's entries) and leaves out
# cc_projection, whose class diffusers would otherwise try to import from a module of that name.
ZERO123_INDEX = {
    "_class_name": "Zero1to3StableDiffusionPipeline",
    "_diffusers_version": "0.18.2",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.resolve(), link)


def mirror(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Link every file of ``src`` into ``dst`` (top-level entries in ``skip`` left out); a variant weight
    file ``X.fp16.safetensors`` is also linked as ``X.safetensors`` unless ``src`` has that file.
    ``model_index.json`` is not linked: :func:`write_index` writes it."""
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if not p.is_file() or rel.parts[0] in skip or rel.as_posix() == "model_index.json":
            continue
        _link(p, dst / rel)
        if p.name.endswith(".fp16.safetensors"):
            plain = p.with_name(p.name.replace(".fp16.safetensors", ".safetensors"))
            if not plain.exists():
                _link(p, dst / rel.with_name(plain.name))


def write_index(index: dict[str, Any], dst: Path) -> dict[str, Any]:
    """Write ``index`` as ``dst/model_index.json``, with ``[null, null]`` for components absent from ``dst``."""
    out = dict(index)
    for key, value in index.items():
        if isinstance(value, list) and len(value) == 2 and value[0] is not None and not (dst / key).is_dir():
            out[key] = [None, None]
    (dst / "model_index.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def safety_checker(configs: Path, dst: Path, device: str) -> None:
    """SD 1.5's ``safety_checker`` (random weights, fp16) and ``feature_extractor`` folders in ``dst``."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from safetensors.torch import save_file
    from transformers import CLIPConfig

    src = configs / SD_CONFIGS
    (dst / "safety_checker").mkdir(parents=True, exist_ok=True)
    (dst / "feature_extractor").mkdir(parents=True, exist_ok=True)
    cfg_text = (src / "safety_checker" / "config.json").read_text()
    (dst / "safety_checker" / "config.json").write_text(cfg_text)
    pre = (src / "feature_extractor" / "preprocessor_config.json").read_text()
    (dst / "feature_extractor" / "preprocessor_config.json").write_text(pre)
    with torch.device(device):
        model = StableDiffusionSafetyChecker(CLIPConfig.from_pretrained(str(dst / "safety_checker")))
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(dst / "safety_checker" / "model.safetensors"))


def zero123_view(src: Path, dst: Path) -> None:
    """Upstream's Zero123-XL layout: ``cc_projection/`` (``ProjectionModel``) for ``clip_camera_projection/``."""
    from safetensors.torch import load_file, save_file

    mirror(src, dst, skip=("clip_camera_projection",))
    proj = src / "clip_camera_projection"
    cfg = json.loads((proj / "config.json").read_text())
    dim = int(cfg.get("embedding_dim", 768))
    extra = int(cfg.get("additional_embeddings", 4))
    weights = next(
        p for p in (proj / f"diffusion_pytorch_model{v}.safetensors" for v in (".fp16", "")) if p.exists()
    )
    tensors = load_file(str(weights))
    (dst / "cc_projection").mkdir(parents=True, exist_ok=True)
    save_file(
        {"cc_projection.weight": tensors["proj.weight"], "cc_projection.bias": tensors["proj.bias"]},
        str(dst / "cc_projection" / "diffusion_pytorch_model.safetensors"),
    )
    config = {
        "_class_name": "ProjectionModel",
        "_diffusers_version": "0.18.2",
        "in_channels": dim + extra,
        "out_channels": dim,
    }
    (dst / "cc_projection" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_index(ZERO123_INDEX, dst)


def build(models: Path, out: Path, configs: Path | None, device: str = "cpu") -> list[Path]:
    """Every view under ``out``; returns their folders."""
    made = []
    for name, role in VIEWS.items():
        src, dst = models / role, out / name
        if not src.is_dir():
            raise SystemExit(f"{src} is missing: run benchmarks/make_random_models.py first")
        if role == "zero123":
            zero123_view(src, dst)
        else:
            mirror(src, dst)
            if role == "sd" and configs is not None:
                safety_checker(configs, dst, device)
            index = src / "model_index.json"
            if index.exists():
                write_index(json.loads(index.read_text()), dst)
        made.append(dst)
    return made


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="make_random_models.py's --out folder")
    ap.add_argument("--out", type=Path, required=True, help="becomes upstream's checkpoints/ folder")
    ap.add_argument("--configs", type=Path, default=None, help="hf-configs: adds SD's safety checker")
    ap.add_argument("--device", default="cpu", help="where the safety checker's random weights are drawn")
    args = ap.parse_args(argv)
    for path in build(args.models, args.out, args.configs, args.device):
        print(f"upstream view: {path}")


if __name__ == "__main__":
    main()
