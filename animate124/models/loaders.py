"""Load each role's components from the folder :class:`ModelStore` resolves: the same code runs on
real weights and on the tiny factory's models.

Rules (ecosystem.md sections 2-3, hf-layouts.md):
- Components load one by one with ``subfolder=`` (no deprecated pipeline classes, no remote code).
- dtype is always explicit (transformers v5 would otherwise load fp16 files as fp16).
- The weight variant is chosen by what files exist: ``*.fp16.*`` present -> ``variant="fp16"``.
- Pickled ``.bin`` files only through the libraries' safe path or ``torch.load(weights_only=True)``.
- Every module is frozen: ``requires_grad_(False)`` and ``.eval()``.
- Zero123-XL's camera projection exists in four layouts (hf-layouts.md section 3); all of them are
  read as a raw state dict into one ``torch.nn.Linear(D + 4 -> D)``.

VAE dtype policy: the SD VAE *decoder* can overflow in fp16 at high resolution (NaN/inf images),
while encoding is fine in fp16. With ``dtype=torch.float16`` the VAE is therefore kept in float32 by
default (``vae_dtype=None``); it costs ~170 MB more weights and fp32 activations through the VAE.
Pass ``vae_dtype=torch.float16`` to save memory when only encoding (SDS), or ``torch.bfloat16``.
Callers must cast the VAE input to ``vae.dtype``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from animate124.errors import Animate124Error, ModelNotFoundError
from animate124.models.registry import download_command
from animate124.models.store import ModelStore, projection_folder

if TYPE_CHECKING:  # the classes only type the bundles; the loaders import them lazily
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        UNet2DConditionModel,
        UNet3DConditionModel,
    )
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

log = logging.getLogger(__name__)

VIDEO_NATIVE_SIZE = {"modelscope": (256, 256), "zeroscope": (320, 576)}  # (H, W) the model was tuned at


# ---------------------------------------------------------------------------------------------- bundles


@dataclass
class SDComponents:
    """Stable Diffusion 1.5 parts. ``scheduler`` is a DDIMScheduler built from the repo's config."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler


@dataclass
class Zero123Components:
    """Zero123-XL parts. ``projection``: ``Linear(D+4 -> D)`` on ``[CLIP image embedding, camera]``.
    ``layout`` is ``"ashawkey" | "bennyguo" | "kxic" | "yuyang"`` (which Hub conversion the files are)."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    image_encoder: CLIPVisionModelWithProjection
    projection: torch.nn.Linear
    scheduler: DDIMScheduler
    layout: str
    #: the folder's ``CLIPImageProcessor`` (PIL), for upstream's CLIP preprocessing; None without the file
    image_processor: Any = None


@dataclass
class VideoComponents:
    """Text-to-video (ModelScope / zeroscope) parts; ``native_size`` is (H, W) in pixels."""

    vae: AutoencoderKL
    unet: UNet3DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    name: str
    native_size: tuple[int, int]


@dataclass
class DepthModel:
    """Monocular depth network plus its preprocessing (from ``preprocessor_config.json``).

    Input: RGB in [0, 1] resized to ``image_size`` (square unless ``keep_aspect``; sides rounded to
    ``multiple_of``), normalised ``(x - mean) / std``. Output ``predicted_depth`` is relative inverse depth."""

    model: Any
    kind: str  # "dpt" | "depth_anything"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    multiple_of: int
    keep_aspect: bool


@dataclass
class MattingModels:
    """Background removal from native transformers classes: CLIPSeg gives a coarse foreground
    probability from a text query; VitMatte refines a trimap (RGB + trimap, 4 channels) to soft alpha."""

    segmenter: Any
    segmenter_processor_or_tokenizer: Any  # CLIPTokenizer (image preprocessing is done in torch)
    matte: Any
    segmenter_image_size: int = 352
    segmenter_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    segmenter_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    matte_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    matte_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    matte_size_divisibility: int = 32


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers info noise (offline "Could not reach the Hub", progress bars)
    for the duration of a load, restoring the previous settings afterwards."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    t_bar = tlog.is_progress_bar_enabled()
    d_bar = getattr(dlog, "is_progress_bar_enabled", lambda: True)()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    if hasattr(dlog, "disable_progress_bar"):
        dlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if t_bar:
            tlog.enable_progress_bar()
        if d_bar and hasattr(dlog, "enable_progress_bar"):
            dlog.enable_progress_bar()


def _tf_dtype_kw(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers >= 4.56 takes ``dtype=``; older releases only ``torch_dtype=``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _freeze(module: Any, device: torch.device | str) -> Any:
    module.to(device)
    module.requires_grad_(False)
    module.eval()
    return module


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder holds fp16-variant weight files, else None (default names)."""
    names = ("diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
             "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin")  # fmt: skip
    return "fp16" if any((folder / n).is_file() for n in names) else None


@contextlib.contextmanager
def _loading(store: ModelStore, role: str, root: Path, alternative: str | None = None) -> Iterator[None]:
    """Explain a failed load: a missing, unreadable or damaged file of the model names that file and what
    to do (``ModelStore.damage``); the libraries' other OSErrors become a ModelNotFoundError."""
    try:
        yield
    except Animate124Error:
        raise
    except Exception as err:
        damaged = store.damage(role, root, alternative)
        if damaged is not None:
            raise damaged from err
        if not isinstance(err, OSError):
            raise
        raise ModelNotFoundError(
            f"cannot load model for role {role!r} from {root}: {str(err).splitlines()[0] if str(err) else err}",
            hint=f"run `{download_command(role, alternative)}`, or `animate124 models verify {role}`",
        ) from err


def _diffusers(cls: Any, root: Path, sub: str, dtype: torch.dtype) -> Any:
    folder = root / sub if sub else root
    # use_safetensors=False for pickle-only folders (ControlNet tile, zeroscope, kxic): otherwise diffusers
    # first logs an error about the missing .safetensors. Its .bin path uses torch.load(weights_only=True).
    has_st = any(folder.glob("*.safetensors"))
    kw: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True, "variant": _variant(folder),
                          "use_safetensors": has_st}  # fmt: skip
    if sub:
        kw["subfolder"] = sub
    return cls.from_pretrained(str(root), **kw)


def _transformers(cls: Any, root: Path, sub: str, dtype: torch.dtype) -> Any:
    folder = root / sub if sub else root
    kw: dict[str, Any] = {**_tf_dtype_kw(dtype), "local_files_only": True}
    if _variant(folder):
        kw["variant"] = "fp16"
    if sub:
        kw["subfolder"] = sub
    return cls.from_pretrained(str(root), **kw)


def _tokenizer(root: Path, sub: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    if sub:
        kw["subfolder"] = sub
    return CLIPTokenizer.from_pretrained(str(root), **kw)


def _scheduler(root: Path) -> DDIMScheduler:
    """DDIM from the repo's scheduler config (SD 1.5 stores PNDM settings; DDIM reads them)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(str(root), subfolder="scheduler", local_files_only=True)


def _vae_dtype(dtype: torch.dtype, vae_dtype: torch.dtype | None) -> torch.dtype:
    if vae_dtype is not None:
        return vae_dtype
    return torch.float32 if dtype == torch.float16 else dtype


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------- loaders


def load_sd(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
) -> SDComponents:  # fmt: skip
    """Stable Diffusion 1.5: VAE, UNet2DConditionModel, CLIP text encoder + tokenizer, DDIM scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    root = store.resolve("sd")
    with quiet_libraries(), _loading(store, "sd", root):
        vae = _diffusers(AutoencoderKL, root, "vae", _vae_dtype(dtype, vae_dtype))
        unet = _diffusers(UNet2DConditionModel, root, "unet", dtype)
        text_encoder = _transformers(CLIPTextModel, root, "text_encoder", dtype)
        tokenizer = _tokenizer(root, "tokenizer")
        scheduler = _scheduler(root)
    return SDComponents(
        _freeze(vae, device), _freeze(unet, device), _freeze(text_encoder, device), tokenizer, scheduler
    )


def read_projection_state(folder: Path) -> dict[str, torch.Tensor]:
    """Raw state dict of a Zero123 projection folder: safetensors, or ``.bin`` with weights_only."""
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
                 "model.safetensors"):  # fmt: skip
        if (folder / name).is_file():
            return load_file(str(folder / name))
    for name in ("diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (folder / name).is_file():
            return torch.load(str(folder / name), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no projection weights in {folder}")


def projection_from_state(
    state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> torch.nn.Linear:
    """The single ``*weight`` [D, D+4] and ``*bias`` [D] of any of the four layouts -> ``nn.Linear``.

    Layout keys: ``proj.*`` (bennyguo/ashawkey ``CLIPCameraProjection``), ``projection.*`` (kxic
    ``CCProjection``), ``cc_projection.*`` (Yuyang-z ``ProjectionModel``)."""
    weights = [(k, v) for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    biases = [(k, v) for k, v in state.items() if k.endswith("bias") and v.ndim == 1]
    if len(weights) != 1 or len(biases) != 1:
        raise ValueError(
            f"expected one weight and one bias in the projection state dict, got {sorted(state)}"
        )
    w, b = weights[0][1], biases[0][1]
    out_dim, in_dim = w.shape
    if in_dim != out_dim + 4 or b.shape[0] != out_dim:
        raise ValueError(f"projection shapes {tuple(w.shape)}, {tuple(b.shape)} are not [D, D+4], [D]")
    linear = torch.nn.Linear(in_dim, out_dim, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(w.to(dtype))
        linear.bias.copy_(b.to(dtype))
    return linear


def detect_zero123_layout(root: Path) -> str:
    """Which conversion a Zero123-XL folder is: ``ashawkey`` / ``bennyguo`` (``clip_camera_projection``,
    default vs fp16-variant names), ``kxic`` / ``yuyang`` (``cc_projection``; Yuyang-z's config has
    ``in_channels``, its weights use the ``cc_projection.`` prefix)."""
    folder = projection_folder(root)
    if folder is None:
        raise FileNotFoundError(f"{root} has neither clip_camera_projection/ nor cc_projection/ with weights")
    if folder.name == "clip_camera_projection":
        return "bennyguo" if _variant(folder) or _variant(root / "unet") else "ashawkey"
    cfg = _read_json(folder / "config.json")
    if "in_channels" in cfg or cfg.get("_class_name") == "ProjectionModel":
        return "yuyang"
    state = read_projection_state(folder)
    return "yuyang" if any(k.startswith("cc_projection.") for k in state) else "kxic"


def load_zero123(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
) -> Zero123Components:  # fmt: skip
    """Zero123-XL from any of its four Hub layouts (no pipeline class, no remote code)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    root = store.resolve("zero123")
    with quiet_libraries(), _loading(store, "zero123", root):
        layout = detect_zero123_layout(root)
        projection = projection_from_state(read_projection_state(projection_folder(root)), dtype)
        vae = _diffusers(AutoencoderKL, root, "vae", _vae_dtype(dtype, vae_dtype))
        unet = _diffusers(UNet2DConditionModel, root, "unet", dtype)
        image_encoder = _transformers(CLIPVisionModelWithProjection, root, "image_encoder", dtype)
        scheduler = _scheduler(root)
        image_processor = _clip_image_processor(root / "feature_extractor")
    emb = image_encoder.config.projection_dim
    if projection.out_features != emb or unet.config.cross_attention_dim != emb:
        raise ModelNotFoundError(
            f"inconsistent Zero123 folder {root}: image embedding {emb}, projection "
            f"{projection.in_features}->{projection.out_features}, UNet cross-attention {unet.config.cross_attention_dim}",
            hint="the override mixes components of different models",
        )
    return Zero123Components(
        _freeze(vae, device), _freeze(unet, device), _freeze(image_encoder, device), _freeze(projection, device),
        scheduler, layout, image_processor,
    )  # fmt: skip


def _clip_image_processor(folder: Path) -> Any:
    """The PIL ``CLIPImageProcessor`` of ``folder`` (upstream's; transformers 5 names it
    ``CLIPImageProcessorPil``), or None when the folder has no ``preprocessor_config.json``."""
    if not (folder / "preprocessor_config.json").is_file():
        return None
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(str(folder))


def load_video(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    which: str = "modelscope", vae_dtype: torch.dtype | None = None,
) -> VideoComponents:  # fmt: skip
    """ModelScope text-to-video (role ``video``) or its zeroscope fine-tune (alternative ``zeroscope``)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    if which not in VIDEO_NATIVE_SIZE:
        from animate124.errors import ConfigError

        raise ConfigError(f"unknown video model {which!r}", hint=f"one of {', '.join(VIDEO_NATIVE_SIZE)}")
    alternative = None if which == "modelscope" else which
    root = store.resolve("video", alternative)
    with quiet_libraries(), _loading(store, "video", root, alternative):
        vae = _diffusers(AutoencoderKL, root, "vae", _vae_dtype(dtype, vae_dtype))
        unet = _diffusers(UNet3DConditionModel, root, "unet", dtype)
        text_encoder = _transformers(CLIPTextModel, root, "text_encoder", dtype)
        tokenizer = _tokenizer(root, "tokenizer")
        scheduler = _scheduler(root)
    return VideoComponents(
        _freeze(vae, device), _freeze(unet, device), _freeze(text_encoder, device), tokenizer, scheduler,
        name=which, native_size=VIDEO_NATIVE_SIZE[which],
    )  # fmt: skip


def load_controlnet(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ControlNetModel:
    """ControlNet 1.1 tile (``ControlNetModel``; the Hub repo has only an fp32 ``.bin``)."""
    from diffusers import ControlNetModel

    root = store.resolve("controlnet")
    with quiet_libraries(), _loading(store, "controlnet", root):
        model = _diffusers(ControlNetModel, root, "", dtype)
    return _freeze(model, device)


def load_depth(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> DepthModel:
    """DPT-BEiT (default) or Depth-Anything-V2 via ``AutoModelForDepthEstimation``, plus preprocessing."""
    from transformers import AutoModelForDepthEstimation

    root = store.resolve("depth")
    with quiet_libraries(), _loading(store, "depth", root):
        model = _transformers(AutoModelForDepthEstimation, root, "", dtype)
    cfg_type = getattr(model.config, "model_type", "dpt")
    kind = "depth_anything" if cfg_type == "depth_anything" else "dpt"
    pre = _read_json(root / "preprocessor_config.json")
    size = pre.get("size", {})
    image_size = (
        int(size.get("height", 518 if kind == "depth_anything" else 512))
        if isinstance(size, dict)
        else int(size)
    )
    default_mean = (0.485, 0.456, 0.406) if kind == "depth_anything" else (0.5, 0.5, 0.5)
    default_std = (0.229, 0.224, 0.225) if kind == "depth_anything" else (0.5, 0.5, 0.5)
    return DepthModel(
        model=_freeze(model, device), kind=kind, image_size=image_size,
        mean=tuple(pre.get("image_mean", default_mean)), std=tuple(pre.get("image_std", default_std)),
        multiple_of=int(pre.get("ensure_multiple_of", 14 if kind == "depth_anything" else 32)),
        keep_aspect=bool(pre.get("keep_aspect_ratio", kind == "depth_anything")),
    )  # fmt: skip


def load_matting(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MattingModels:
    """CLIPSeg (role ``segment``) + VitMatte (role ``matting``), both native transformers classes."""
    from transformers import CLIPSegForImageSegmentation, VitMatteForImageMatting

    seg_root = store.resolve("segment")
    mat_root = store.resolve("matting")
    with quiet_libraries():
        with _loading(store, "segment", seg_root):
            segmenter = _transformers(CLIPSegForImageSegmentation, seg_root, "", dtype)
            tokenizer = _tokenizer(seg_root, "")
        with _loading(store, "matting", mat_root):
            matte = _transformers(VitMatteForImageMatting, mat_root, "", dtype)
    seg_pre = _read_json(seg_root / "preprocessor_config.json")
    mat_pre = _read_json(mat_root / "preprocessor_config.json")
    size = seg_pre.get("size", 352)
    seg_size = (
        int(size.get("height", size.get("shortest_edge", 352))) if isinstance(size, dict) else int(size)
    )
    return MattingModels(
        segmenter=_freeze(segmenter, device), segmenter_processor_or_tokenizer=tokenizer, matte=_freeze(matte, device),
        segmenter_image_size=seg_size,
        segmenter_mean=tuple(seg_pre.get("image_mean", (0.485, 0.456, 0.406))),
        segmenter_std=tuple(seg_pre.get("image_std", (0.229, 0.224, 0.225))),
        matte_mean=tuple(mat_pre.get("image_mean", (0.5, 0.5, 0.5))),
        matte_std=tuple(mat_pre.get("image_std", (0.5, 0.5, 0.5))),
        matte_size_divisibility=int(mat_pre.get("size_divisibility", 32)),
    )  # fmt: skip


def load_clip(
    store: ModelStore, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[CLIPModel, CLIPTokenizer]:
    """CLIP ViT-L/14 for metrics: ``(CLIPModel, CLIPTokenizer)``. Image preprocessing (224 px,
    CLIP mean/std) is left to the caller, in torch."""
    from transformers import CLIPModel

    root = store.resolve("clip")
    with quiet_libraries(), _loading(store, "clip", root):
        model = _transformers(CLIPModel, root, "", dtype)
        tokenizer = _tokenizer(root, "")
    return _freeze(model, device), tokenizer
