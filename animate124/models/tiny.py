"""Tiny random models with the real classes, config keys, subfolders and file names.

Why: tests and the "tiny" preset must run the *same* loading code as real weights (DESIGN.md,
"Models and downloads"). Each builder writes a folder shaped like the Hub repo after our downloader
fetched it (hf-layouts.md): fp16-variant names where the real repo uses them, ``.bin`` where the
real repo only has pickles, the legacy CLIP tokenizer files, hand-written ``model_index.json``.

Configs follow ecosystem.md section 3.1 (verified there) with widths of 32: the text/image encoder
width equals the UNet cross-attention width, the Zero123 projection is Linear(32 + 4 -> 32), the VAE
has 4 blocks (8x downsampling, 64 px image -> 8x8 latent).

The tokenizer is a byte-level BPE vocabulary (GPT-2 ``bytes_to_unicode``, 256 chars + 256 ``</w>``
forms) plus merges that make a few common words single tokens (ecosystem.md 3.2), so textual
inversion initialiser words such as "panda" or "cat" are one token.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from animate124.fileio import atomic_write_text, file_lock
from animate124.models.registry import KNOWN_REPOS, ROLES, get_role
from animate124.models.store import TINY_MARKER, is_tiny_cache
from animate124.models.tiny_tokenizer import write_json, write_tiny_tokenizer

log = logging.getLogger(__name__)

BUILD_LOCK = ".animate124-tiny-build.lock"
TINY_WIDTH = 32
ZERO123_LAYOUTS = ("ashawkey", "bennyguo", "kxic", "yuyang")
_ZERO123_REPO = {
    "ashawkey": "ashawkey/zero123-xl-diffusers",
    "bennyguo": "bennyguo/zero123-xl-diffusers",
    "kxic": "kxic/zero123-xl",
    "yuyang": "Yuyang-z/zero123-xl",
}


_DDIM = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}
_SD_PNDM = {  # the SD 1.5 repo stores a PNDM config; DDIMScheduler.from_pretrained reads it fine
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


# ------------------------------------------------------------------------------------------------
# small helpers


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _state_dict(module: Any, dtype: Any) -> dict[str, Any]:
    """A detached, contiguous, non-shared copy (safetensors refuses shared storage)."""
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in module.state_dict().items()}


def _save_tensors(tensors: dict[str, Any], path: Path) -> None:
    """Write ``tensors`` as safetensors or a plain pickle ``.bin`` (by suffix)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, str(path))


def _save_diffusers(model: Any, folder: Path, weight_name: str, dtype: Any) -> None:
    """config.json via the model's own ``save_config`` plus one weight file named like the Hub's."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    _save_tensors(_state_dict(model, dtype), folder / weight_name)


def _save_transformers(model: Any, folder: Path, weight_name: str, dtype: Any) -> None:
    """config.json + weights. Keys come from ``save_pretrained`` (the checkpoint format transformers
    itself writes), then are re-saved under the Hub file name and dtype."""
    import torch
    from safetensors.torch import load_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    written = folder / "model.safetensors"
    tensors = {k: v.to(dtype) for k, v in load_file(str(written)).items()}
    written.unlink()
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = "float16" if dtype == torch.float16 else "float32"
    cfg.pop("dtype", None)
    write_json(cfg_path, cfg)
    _save_tensors(tensors, folder / weight_name)


def _tiny_text_config(vocab_size: int, hidden_act: str = "quick_gelu") -> Any:
    from transformers import CLIPTextConfig

    # bos/eos/pad ids as in the real SD/ModelScope configs (eos_token_id 2 = legacy argmax pooling)
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TINY_WIDTH, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=TINY_WIDTH,
        hidden_act=hidden_act, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip


def _tiny_vision_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=TINY_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=32, patch_size=8, projection_dim=TINY_WIDTH,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# diffusers pieces


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[16, 16, 32, 32], layers_per_block=1,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215,
    )  # fmt: skip


def _tiny_unet2d(in_channels: int = 4) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip


def _tiny_unet3d() -> Any:
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TINY_WIDTH, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip


def _model_index(class_name: str, components: dict[str, list[Any]], version: str, **extra: Any) -> dict:
    return {"_class_name": class_name, "_diffusers_version": version, **extra, **components}


def _build_sd(dest: Path) -> None:
    import torch

    te_dtype = torch.float16  # the fp16 variant files we download
    vocab_size = write_tiny_tokenizer(dest / "tokenizer")
    from transformers import CLIPTextModel

    _save_transformers(CLIPTextModel(_tiny_text_config(vocab_size)), dest / "text_encoder",
                       "model.fp16.safetensors", te_dtype)  # fmt: skip
    _save_diffusers(_tiny_unet2d(4), dest / "unet", "diffusion_pytorch_model.fp16.safetensors", te_dtype)
    _save_diffusers(_tiny_vae(), dest / "vae", "diffusion_pytorch_model.fp16.safetensors", te_dtype)
    write_json(dest / "scheduler" / "scheduler_config.json", _SD_PNDM)
    write_json(
        dest / "feature_extractor" / "preprocessor_config.json",
        {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
         "resample": 3, "size": 224},
    )  # fmt: skip
    write_json(
        dest / "model_index.json",
        _model_index(
            "StableDiffusionPipeline",
            {"feature_extractor": ["transformers", "CLIPImageProcessor"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]},
            "0.6.0",
        ),
    )  # fmt: skip


def _build_video(dest: Path, which: str = "modelscope") -> None:
    """ModelScope: variant fp16 safetensors; zeroscope: fp16 weights under default ``.bin`` names."""
    import torch
    from transformers import CLIPTextModel

    vocab_size = write_tiny_tokenizer(dest / "tokenizer", pad_token="!")  # OpenCLIP pad token
    if which == "modelscope":
        names = ("model.fp16.safetensors", "diffusion_pytorch_model.fp16.safetensors")
    else:
        names = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
    dtype = torch.float16
    _save_transformers(
        CLIPTextModel(_tiny_text_config(vocab_size, "gelu")), dest / "text_encoder", names[0], dtype
    )
    _save_diffusers(_tiny_unet3d(), dest / "unet", names[1], dtype)
    _save_diffusers(_tiny_vae(), dest / "vae", names[1], dtype)
    write_json(dest / "scheduler" / "scheduler_config.json", {**_DDIM, "_diffusers_version": "0.15.0.dev0"})
    write_json(
        dest / "model_index.json",
        _model_index(
            "TextToVideoSDPipeline",
            {"scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]},
            "0.15.0.dev0" if which == "modelscope" else "0.17.0.dev0",
        ),
    )  # fmt: skip


def _build_controlnet(dest: Path) -> None:
    """Only ``config.json`` + fp32 pickle ``diffusion_pytorch_model.bin``, like the tile repo's main."""
    import torch
    from diffusers import ControlNetModel

    cn = ControlNetModel(
        in_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=TINY_WIDTH,
        attention_head_dim=8, norm_num_groups=32, conditioning_embedding_out_channels=(8, 8, 16, 16),
    )  # fmt: skip
    _save_diffusers(cn, dest, "diffusion_pytorch_model.bin", torch.float32)


def tiny_projection_tensors(layout: str, seed: int = 0) -> dict[str, Any]:
    """The raw state dict of the tiny Zero123 camera projection for ``layout`` (Linear 36 -> 32).

    Keys by layout (hf-layouts.md section 3): bennyguo/ashawkey ``proj.*``, kxic ``projection.*``,
    Yuyang-z ``cc_projection.*``. Deterministic in ``seed`` so tests can compare exact values."""
    import torch

    g = torch.Generator().manual_seed(seed + 1234)
    d = TINY_WIDTH
    weight = torch.randn(d, d + 4, generator=g) * 0.1
    bias = torch.randn(d, generator=g) * 0.1
    prefix = {"ashawkey": "proj", "bennyguo": "proj", "kxic": "projection", "yuyang": "cc_projection"}[layout]
    return {f"{prefix}.weight": weight, f"{prefix}.bias": bias}


def _build_zero123(dest: Path, layout: str, seed: int) -> None:
    import torch
    from transformers import CLIPVisionModelWithProjection

    if layout not in ZERO123_LAYOUTS:
        raise ValueError(f"unknown zero123 layout {layout!r}; one of {ZERO123_LAYOUTS}")
    if layout == "ashawkey":  # fp16 tensors under the default names, safetensors only
        dtype, dname, tname = torch.float16, "diffusion_pytorch_model.safetensors", "model.safetensors"
    elif layout == "bennyguo":  # variant fp16 (the files our downloader fetches)
        dtype, dname, tname = (
            torch.float16,
            "diffusion_pytorch_model.fp16.safetensors",
            "model.fp16.safetensors",
        )
    else:  # kxic (and, unverified, Yuyang-z): fp32 pickles
        dtype, dname, tname = torch.float32, "diffusion_pytorch_model.bin", "pytorch_model.bin"
    _save_diffusers(_tiny_unet2d(8), dest / "unet", dname, dtype)
    _save_diffusers(_tiny_vae(), dest / "vae", dname, dtype)
    _save_transformers(
        CLIPVisionModelWithProjection(_tiny_vision_config()), dest / "image_encoder", tname, dtype
    )
    version = {"ashawkey": "0.22.2", "bennyguo": "0.18.2", "kxic": "0.18.2", "yuyang": "0.18.2"}[layout]
    write_json(dest / "scheduler" / "scheduler_config.json", {**_DDIM, "_diffusers_version": version})
    write_json(
        dest / "feature_extractor" / "preprocessor_config.json",
        {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
         "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
         "image_mean": _CLIP_MEAN, "image_processor_type": "CLIPImageProcessor", "image_std": _CLIP_STD,
         "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 32}},
    )  # fmt: skip
    proj = {k: v.to(dtype) for k, v in tiny_projection_tensors(layout, seed).items()}
    common = {"feature_extractor": ["transformers", "CLIPImageProcessor"],
              "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
              "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip
    if layout in ("ashawkey", "bennyguo"):
        folder = dest / "clip_camera_projection"
        write_json(folder / "config.json", {"_class_name": "CLIPCameraProjection", "_diffusers_version": version,
                                             "additional_embeddings": 4, "embedding_dim": TINY_WIDTH})  # fmt: skip
        _save_tensors(proj, folder / dname)
        index = _model_index("Zero123Pipeline", {**common, "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
                             "safety_checker": [None, None]}, version, requires_safety_checker=False)  # fmt: skip
    elif layout == "kxic":
        folder = dest / "cc_projection"
        write_json(folder / "config.json", {"_class_name": "CCProjection", "_diffusers_version": version})
        _save_tensors(proj, folder / dname)
        index = _model_index("Zero1to3StableDiffusionPipeline", {**common, "cc_projection": ["pipeline_zero1to3",
                             "CCProjection"], "safety_checker": [None, None]}, version, requires_safety_checker=False)  # fmt: skip
    else:
        folder = dest / "cc_projection"
        write_json(folder / "config.json", {"_class_name": "ProjectionModel", "_diffusers_version": version,
                                             "in_channels": TINY_WIDTH + 4, "out_channels": TINY_WIDTH})  # fmt: skip
        _save_tensors(proj, folder / dname)
        # Yuyang-z's model_index.json was not seen; hf-layouts.md says it is tagged StableDiffusionPipeline.
        index = _model_index("StableDiffusionPipeline", common, version)
    write_json(dest / "model_index.json", index)


def _build_depth(dest: Path, kind: str = "dpt") -> None:
    import torch

    if kind == "dpt":
        from transformers import BeitConfig, DPTConfig, DPTForDepthEstimation

        cfg = DPTConfig(
            backbone_config=BeitConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                use_relative_position_bias=True, reshape_hidden_states=False,
            ),
            neck_hidden_sizes=[16, 16, 32, 32], reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=16,
            hidden_size=32, is_hybrid=False, image_size=32, patch_size=8, add_projection=False,
            use_bias_in_fusion_residual=False, readout_type="project", head_in_index=-1,
        )  # fmt: skip
        model = DPTForDepthEstimation(cfg)
        pre = {"do_normalize": True, "do_pad": False, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 32,
               "image_mean": [0.5] * 3, "image_processor_type": "DPTImageProcessor", "image_std": [0.5] * 3,
               "keep_aspect_ratio": False, "resample": 2, "rescale_factor": 1 / 255,
               "size": {"height": 32, "width": 32}, "size_divisor": None}  # fmt: skip
    else:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

        cfg = DepthAnythingConfig(
            backbone_config=Dinov2Config(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                reshape_hidden_states=False,
            ),
            patch_size=8, reassemble_hidden_size=32, neck_hidden_sizes=[16, 16, 32, 32],
            reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=16, head_hidden_size=8,
        )  # fmt: skip
        model = DepthAnythingForDepthEstimation(cfg)
        pre = {"do_normalize": True, "do_pad": False, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 8,
               "image_mean": _IMAGENET_MEAN, "image_processor_type": "DPTImageProcessor", "image_std": _IMAGENET_STD,
               "keep_aspect_ratio": True, "resample": 3, "rescale_factor": 1 / 255,
               "size": {"height": 32, "width": 32}, "size_divisor": None}  # fmt: skip
    _save_transformers(model, dest, "model.safetensors", torch.float32)
    write_json(dest / "preprocessor_config.json", pre)


def _build_segment(dest: Path) -> None:
    """CLIPSeg: the real repo's main had ``pytorch_model.bin`` (a safetensors copy may exist now)."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    vocab_size = write_tiny_tokenizer(dest)
    cfg = CLIPSegConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=TINY_WIDTH, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=TINY_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=4,
                           image_size=32, patch_size=16),  # patch 16 as real: decoder upsamples x16
        projection_dim=TINY_WIDTH, extract_layers=(1, 2, 3), reduce_dim=16, decoder_num_attention_heads=4,
        decoder_intermediate_size=37, use_complex_transposed_convolution=True,
    )  # fmt: skip
    _save_transformers(CLIPSegForImageSegmentation(cfg), dest, "pytorch_model.bin", torch.float32)
    write_json(
        dest / "preprocessor_config.json",
        {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": _IMAGENET_MEAN,
         "image_processor_type": "ViTImageProcessor", "image_std": _IMAGENET_STD, "processor_class": "CLIPSegProcessor",
         "resample": 2, "rescale_factor": 1 / 255, "size": {"height": 32, "width": 32}},
    )  # fmt: skip


def _build_matting(dest: Path) -> None:
    """VitMatte with a tiny VitDet backbone (4 input channels: RGB + trimap, patch 16 as real)."""
    import torch
    from transformers import VitDetConfig, VitMatteConfig, VitMatteForImageMatting

    backbone = VitDetConfig(
        hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=32,
        pretrain_image_size=32, patch_size=16, num_channels=4, window_block_indices=[0], residual_block_indices=[1],
        use_absolute_position_embeddings=True, use_relative_position_embeddings=True, window_size=2,
        out_features=["stage2"],
    )  # fmt: skip
    cfg = VitMatteConfig(backbone_config=backbone, hidden_size=TINY_WIDTH, convstream_hidden_sizes=[8, 16, 16],
                         fusion_hidden_sizes=[16, 16, 8, 8])  # fmt: skip
    _save_transformers(VitMatteForImageMatting(cfg), dest, "model.safetensors", torch.float32)
    write_json(
        dest / "preprocessor_config.json",
        {"do_normalize": True, "do_pad": True, "do_rescale": True, "image_mean": [0.5] * 3,
         "image_processor_type": "VitMatteImageProcessor", "image_std": [0.5] * 3, "rescale_factor": 1 / 255,
         "size_divisibility": 32},
    )  # fmt: skip


def _build_clip(dest: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    vocab_size = write_tiny_tokenizer(dest, tokenizer_json=True)
    cfg = CLIPConfig(text_config=_tiny_text_config(vocab_size).to_dict(),
                     vision_config=_tiny_vision_config().to_dict(), projection_dim=TINY_WIDTH)  # fmt: skip
    _save_transformers(CLIPModel(cfg), dest, "model.safetensors", torch.float32)
    write_json(
        dest / "preprocessor_config.json",
        {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
         "resample": 3, "size": 32},
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# public API

# role (or "role:alternative") -> builder(dest, layout, seed)
_BUILDERS = {
    "sd": lambda d, layout, seed: _build_sd(d),
    "zero123": lambda d, layout, seed: _build_zero123(d, layout or "ashawkey", seed),
    "video": lambda d, layout, seed: _build_video(d, layout or "modelscope"),
    "controlnet": lambda d, layout, seed: _build_controlnet(d),
    "depth": lambda d, layout, seed: _build_depth(d, layout or "dpt"),
    "segment": lambda d, layout, seed: _build_segment(d),
    "matting": lambda d, layout, seed: _build_matting(d),
    "clip": lambda d, layout, seed: _build_clip(d),
}


def build_tiny_repo(role: str, dest: Path, *, layout: str | None = None, seed: int = 0) -> Path:
    """Write a tiny random model for ``role`` into ``dest`` (a plain folder shaped like the Hub repo).

    ``layout`` picks a flavour: zero123 ``"ashawkey"|"bennyguo"|"kxic"|"yuyang"``, video
    ``"modelscope"|"zeroscope"``, depth ``"dpt"|"depth_anything"``. Weights are random with ``seed``.
    Returns ``dest``.
    """
    get_role(role)  # validates the role name
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    from animate124.models.loaders import quiet_libraries

    _seeded(seed)
    with quiet_libraries():
        _BUILDERS[role](dest, layout, seed)
    return dest


def _fake_commit(repo_id: str, seed: int) -> str:
    import hashlib

    return hashlib.sha1(f"animate124-tiny:{repo_id}:{seed}".encode()).hexdigest()


def _install_in_cache(src_build: Any, hub: Path, repo_id: str, revision: str, seed: int) -> Path:
    """Create ``models--org--name/{refs/main, snapshots/<commit>/}`` and build the repo there.

    The snapshot is built in a temporary sibling folder and renamed into place, so no reader ever
    sees a half-written snapshot under its final name; the refs are written atomically after it.
    """
    import re

    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else _fake_commit(repo_id, seed)
    snap = repo_dir / "snapshots" / commit
    tmp = snap.with_name(f".{commit}.tmp-{os.getpid()}")
    try:
        src_build(tmp)
        if snap.exists():
            shutil.rmtree(snap)
        os.replace(tmp, snap)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(repo_dir / "refs" / "main", commit)
    if revision != "main" and not re.fullmatch(r"[0-9a-f]{40}", revision):
        atomic_write_text(repo_dir / "refs" / revision, commit)
    return snap


def build_tiny_cache(
    cache_dir: Path,
    roles: Iterable[str] | None = None,
    *,
    zero123_layout: str = "ashawkey",
    seed: int = 0,
    alternatives: bool = True,
) -> Path:
    """Write tiny repos for ``roles`` (default: all) into an HF cache under ``<cache_dir>/hub``.

    Repo ids and revisions come from the registry, so ``ModelStore(cache_dir, offline=True)`` and the
    loaders find them exactly as real downloads. The Zero123 role's default repo receives the
    ``zero123_layout`` flavour. With ``alternatives`` the video role's zeroscope and the depth role's
    Depth-Anything alternative are written too. A marker file ``<cache_dir>/animate124-tiny-cache.json``
    tells callers the cache is tiny (see :func:`is_tiny_cache`); it is written last, so a cache with the
    marker is complete. The build holds an inter-process lock on the cache (concurrent builders wait
    for each other). Returns ``cache_dir``.
    """
    cache_dir = Path(cache_dir)
    with file_lock(cache_dir / BUILD_LOCK):
        _build_tiny_cache_locked(cache_dir, roles, zero123_layout, seed, alternatives)
    return cache_dir


def ensure_tiny_cache(cache_dir: Path, *, zero123_layout: str = "ashawkey", seed: int = 0) -> Path:
    """Build the tiny cache of every role in ``cache_dir`` unless it is there already; returns it.

    Safe when several processes start together on an empty cache (three ``run-all`` jobs of a shell
    loop): the first builds under the lock, the others wait for it and then find the marker.
    """
    cache_dir = Path(cache_dir)
    if is_tiny_cache(cache_dir) and not _stale_roles(cache_dir):
        return cache_dir
    with file_lock(cache_dir / BUILD_LOCK):
        if not is_tiny_cache(cache_dir):
            log.info("building tiny random models in %s", cache_dir)
            _build_tiny_cache_locked(cache_dir, None, zero123_layout, seed, True)
        elif stale := _stale_roles(cache_dir):  # the registry pinned another revision since the build
            log.info("rebuilding the tiny models of %s in %s (new revisions)", ", ".join(stale), cache_dir)
            _build_tiny_cache_locked(cache_dir, stale, zero123_layout, seed, False)
    return cache_dir


def _stale_roles(cache_dir: Path) -> list[str]:
    """Roles whose registry revision has no snapshot in the tiny cache (built before a revision was pinned)."""
    import re

    hub = cache_dir / "hub"
    stale = []
    for role, spec in ROLES.items():
        repo = hub / ("models--" + spec.repo_id.replace("/", "--"))
        if re.fullmatch(r"[0-9a-f]{40}", spec.revision):
            commit = spec.revision
        else:
            ref = repo / "refs" / spec.revision
            commit = ref.read_text().strip() if ref.is_file() else ""
        if not commit or not (repo / "snapshots" / commit).is_dir():
            stale.append(role)
    return stale


def _build_tiny_cache_locked(
    cache_dir: Path, roles: Iterable[str] | None, zero123_layout: str, seed: int, alternatives: bool
) -> None:
    hub = cache_dir / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    roles = list(ROLES) if roles is None else list(roles)
    written: dict[str, str] = {}
    for role in roles:
        spec = get_role(role)
        layout = zero123_layout if role == "zero123" else None
        _install_in_cache(lambda d, r=role, lay=layout: build_tiny_repo(r, d, layout=lay, seed=seed), hub,
                          spec.repo_id, spec.revision, seed)  # fmt: skip
        written[spec.repo_id] = role if layout is None else f"{role}:{layout}"
        if alternatives and role in ("video", "depth"):
            name, lay = (
                ("zeroscope", "zeroscope") if role == "video" else ("depth_anything", "depth_anything")
            )
            alt = KNOWN_REPOS[spec.alternatives[name]]
            _install_in_cache(lambda d, r=role, la=lay: build_tiny_repo(r, d, layout=la, seed=seed), hub,
                              alt.repo_id, alt.revision, seed)  # fmt: skip
            written[alt.repo_id] = f"{role}:{name}"
    marker = cache_dir / TINY_MARKER
    old = json.loads(marker.read_text()).get("repos", {}) if marker.exists() else {}
    info = {"tiny": True, "seed": seed, "zero123_layout": zero123_layout, "repos": {**old, **written}}
    atomic_write_text(marker, json.dumps(info, indent=2, sort_keys=True) + "\n")
    log.info("tiny model cache written to %s (%d repos)", cache_dir, len(written))
