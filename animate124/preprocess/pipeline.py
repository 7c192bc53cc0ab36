"""Preprocessing entry point and the trainer-side reference loader (SPEC.md section 1).

:func:`preprocess_image` turns a user photo into the files every later stage reads, at the paths the
caller gives in :class:`OutputPaths` (the project decides the names; upstream calls them
``rgba.png``, ``depth.png``, ...):

* ``rgba`` — 8-bit RGBA PNG, square (framing "pad": upstream's zero padding; "recenter":
  threestudio-style bbox framing);
* ``depth`` — 8-bit grey PNG of the disparity, min-max normalised inside ``alpha > 0`` and 0 outside,
  quantised by truncation like upstream (``(d * 255).astype(np.uint8)``);
* ``depth_npy`` — the same normalised depth in float32 (``.npy``), before quantisation;
* ``preview`` — PNG of the RGBA on a checkerboard | depth | alpha, side by side, for a quick look.

Order of operations (as upstream): load -> alpha (the file's own alpha, or CLIPSeg + ViTMatte when
there is none) -> depth on the ORIGINAL RGB, background included (for RGBA input: the RGBA's RGB)
-> framing of RGBA and raw disparity with one transform -> normalisation inside the framed mask.
For "pad" this equals upstream's normalise-then-pad exactly; for "recenter" normalising after
resampling keeps edge values honest. Models are loaded lazily through ``store``: no matting model
is loaded for an RGBA input, and nothing is loaded when the input is rejected.

:func:`load_reference` reproduces what upstream's trainer builds from those files
(``nerf/utils.py:473-566``): the white-composited 192 px reference, its mask, the depth target
and the 256 px Zero123 conditioning image.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from animate124.errors import ConfigError, InputError
from animate124.fileio import atomic_path
from animate124.preprocess.depth import (
    depth_to_uint8,
    estimate_depth,
    nonzero_normalize_depth,
    normalize_depth_in_mask,
)
from animate124.preprocess.framing import (
    apply_transform,
    frame_rgba,
    recenter_transform,
    resize,
    square_transform,
)
from animate124.preprocess.image_io import DEFAULT_MAX_SIDE, DEFAULT_MIN_SIDE, has_alpha, load_image
from animate124.preprocess.matting import DEFAULT_QUERY, remove_background

log = logging.getLogger(__name__)

#: Upstream's file names inside a data folder, used only to read such a folder in :func:`load_reference`.
UPSTREAM_RGBA, UPSTREAM_DEPTH = "rgba.png", "depth.png"
FRAMINGS = ("pad", "recenter")


@dataclass(frozen=True)
class OutputPaths:
    """Where :func:`preprocess_image` writes its four files (the project names them)."""

    rgba: Path
    depth: Path
    depth_npy: Path
    preview: Path


@dataclass
class PreprocessResult:
    """Paths written by :func:`preprocess_image` and what happened on the way (sizes are W x H)."""

    rgba_path: Path
    depth_path: Path
    depth_npy_path: Path
    preview_path: Path
    input_size: tuple[int, int]
    output_size: int
    framing: str
    transform: dict[str, list[int]]
    foreground_fraction: float
    matting_ran: bool
    segment_query: str | None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("rgba_path", "depth_path", "depth_npy_path", "preview_path"):
            d[k] = str(d[k])
        d["input_size"] = list(self.input_size)
        return d


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit PIL image -> float32 ``[C, H, W]`` in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> uint8 ``[H, W, C]`` (rounded)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _save_png(path: Path, arr: np.ndarray, mode: str) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode=mode).save(tmp, format="PNG")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


def checkerboard(h: int, w: int, cell: int = 16) -> torch.Tensor:
    """Light-grey checkerboard ``[3, h, w]`` (0.8 / 1.0) to show transparency in the preview."""
    yy = torch.arange(h)[:, None] // cell
    xx = torch.arange(w)[None, :] // cell
    board = torch.where((yy + xx) % 2 == 0, 1.0, 0.8)
    return board.expand(3, h, w)


def make_preview(rgba: torch.Tensor, depth01: torch.Tensor, max_panel: int = 512) -> torch.Tensor:
    """Side by side ``[3, P, 3P]``: RGBA over a checkerboard | depth (grey) | alpha (grey)."""
    S = rgba.shape[-1]
    P = min(S, max_panel)
    small = resize(torch.cat([rgba, depth01[None]]), (P, P)) if P != S else torch.cat([rgba, depth01[None]])
    rgb, a, d = small[:3], small[3:4].clamp(0, 1), small[4:5]
    comp = rgb * a + checkerboard(P, P, max(4, P // 16)) * (1 - a)
    return torch.cat([comp, d.expand(3, P, P), a.expand(3, P, P)], dim=-1).clamp(0, 1)


def _load_depth_model(store: Any, device: Any, dtype: torch.dtype) -> Any:
    if store is None:
        raise ConfigError("no depth model and no model store given", hint="pass store= (a ModelStore)")
    from animate124.models.loaders import load_depth

    return load_depth(store, device, dtype)


def _load_matting_models(store: Any, device: Any, dtype: torch.dtype) -> Any:
    if store is None:
        raise ConfigError("no matting models and no model store given", hint="pass store= (a ModelStore)")
    from animate124.models.loaders import load_matting

    return load_matting(store, device, dtype)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def preprocess_image(
    path: str | os.PathLike[str],
    outputs: OutputPaths,
    *,
    store: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    framing: str = "pad",
    size: int | None = None,
    border_ratio: float = 0.2,
    segment_query: str | None = None,
    min_foreground_fraction: float = 0.001,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int | None = DEFAULT_MAX_SIDE,
    matting_options: Mapping[str, Any] | None = None,
    depth_model: Any = None,
    matting_models: Any = None,
) -> PreprocessResult:
    """Preprocess one image into the files named by ``outputs`` (see the module docstring) and return
    what was written. Nothing is written (no folder created) when the input is rejected.

    ``framing``: "pad" (upstream) or "recenter" (threestudio, uses ``border_ratio``). ``size``: output
    side; default the input's long side (after the ``max_side`` downscale of :func:`load_image`).
    ``segment_query``: CLIPSeg text (default "the main object"). ``matting_options``: extra keyword
    arguments of :func:`~animate124.preprocess.matting.remove_background` (threshold, erode/dilate
    fractions, max_side). ``depth_model`` / ``matting_models`` bypass the lazy loading from
    ``store`` (tests, or a caller that keeps models warm).

    Raises InputError for unusable images and when the foreground (``alpha > 0.5``) covers less
    than ``min_foreground_fraction`` of the input; ConfigError for bad options.
    """
    if framing not in FRAMINGS:
        raise ConfigError(f"unknown framing {framing!r}", hint=f"use one of {', '.join(FRAMINGS)}")
    if size is not None and size < 16:
        raise ConfigError(
            f"output size must be at least 16 px, got {size}", hint="e.g. 512, or leave it unset"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    img = load_image(path, min_side=min_side, max_side=max_side)
    W, H = img.size
    timings["load"] = time.perf_counter() - t0

    # --- alpha ---------------------------------------------------------------------------------
    query = segment_query or DEFAULT_QUERY
    t = time.perf_counter()
    if has_alpha(img):
        rgba = pil_to_tensor(img.convert("RGBA"))
        matting_ran = False
    else:
        rgb = pil_to_tensor(img.convert("RGB"))
        models = matting_models if matting_models is not None else _load_matting_models(store, device, dtype)
        res = remove_background(models, rgb, query=query, **dict(matting_options or {}))
        rgba = torch.cat([rgb, res.alpha[None].to(rgb)])
        matting_ran = True
    timings["matting"] = time.perf_counter() - t
    fg_fraction = float((rgba[3] > 0.5).float().mean())
    if fg_fraction < min_foreground_fraction:
        if matting_ran:
            hint = (
                f"background removal found no object for the query {query!r}; try a query naming the object "
                "(e.g. 'a panda'), or pass an RGBA PNG whose alpha marks the object"
            )
        else:
            hint = "the image's alpha channel is (almost) fully transparent; pass an RGBA PNG whose alpha marks the object"
        raise InputError(
            f"no foreground found in {path}: alpha > 0.5 covers {fg_fraction:.4%} of the image "
            f"(minimum {min_foreground_fraction:.4%})",
            hint=hint,
        )

    # --- depth on the original RGB (upstream; for RGBA input the RGBA's RGB) ---------------------
    t = time.perf_counter()
    dm = depth_model if depth_model is not None else _load_depth_model(store, device, dtype)
    disp = estimate_depth(dm, rgba[:3].to(device)).cpu()
    timings["depth"] = time.perf_counter() - t

    # --- framing + normalisation ---------------------------------------------------------------
    t = time.perf_counter()
    side = size if size is not None else max(H, W)
    if framing == "pad":
        tf = square_transform(H, W, size)
    else:
        tf = recenter_transform(rgba[3], side, border_ratio)
    rgba_f = frame_rgba(rgba, tf)
    disp_f = apply_transform(disp, tf)
    rgba8 = to_uint8(rgba_f)  # [S, S, 4]
    alpha_q = torch.from_numpy(rgba8[..., 3].copy())
    depth01 = normalize_depth_in_mask(disp_f, alpha_q > 0)
    timings["framing"] = time.perf_counter() - t

    # --- write ---------------------------------------------------------------------------------
    t = time.perf_counter()
    # only now are folders created (atomic_path makes the parent): a rejected input leaves nothing
    rgba_path, depth_path = Path(outputs.rgba), Path(outputs.depth)
    npy_path, preview_path = Path(outputs.depth_npy), Path(outputs.preview)
    _save_png(rgba_path, rgba8, "RGBA")
    _save_png(depth_path, depth_to_uint8(depth01).numpy(), "L")
    _save_npy(npy_path, depth01.numpy().astype(np.float32))
    rgba_q = torch.from_numpy(rgba8).permute(2, 0, 1).float() / 255.0
    _save_png(preview_path, to_uint8(make_preview(rgba_q, depth01)), "RGB")
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    result = PreprocessResult(
        rgba_path=rgba_path,
        depth_path=depth_path,
        depth_npy_path=npy_path,
        preview_path=preview_path,
        input_size=(W, H),
        output_size=int(rgba8.shape[0]),
        framing=framing,
        transform=tf.to_dict(),
        foreground_fraction=fg_fraction,
        matting_ran=matting_ran,
        segment_query=query if matting_ran else None,
        timings=timings,
    )
    log.info(
        "preprocessed %s: %dx%d -> %d px (%s), foreground %.1f%%, matting %s, %.2f s",
        path, W, H, result.output_size, framing, 100 * fg_fraction, "ran" if matting_ran else "skipped",
        timings["total"],
    )  # fmt: skip
    return result


# --------------------------------------------------------------------------------------------
# trainer-side consumption
# --------------------------------------------------------------------------------------------
def _resolve_reference_paths(source: Any) -> tuple[Path, Path | None]:
    if isinstance(source, Mapping):
        rgba, depth = Path(source["rgba"]), source.get("depth")
    elif isinstance(source, tuple | list):
        rgba, depth = Path(source[0]), (source[1] if len(source) > 1 else None)
    else:
        d = Path(source)
        if d.is_dir():
            rgba, depth = d / UPSTREAM_RGBA, d / UPSTREAM_DEPTH
        else:
            rgba, depth = d, d.with_name(d.name.replace("rgba", "depth"))
    if not rgba.is_file():
        raise InputError(f"reference image not found: {rgba}", hint="run the preprocess stage first")
    depth_p = Path(depth) if depth is not None else None
    return rgba, (depth_p if depth_p is not None and depth_p.is_file() else None)


def area_resize_uint8(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(uint8, INTER_AREA)`` emulation: resample ``x[C, H, W]`` (0..255) and round to integers.

    Returns float32 integer values in [0, 255] (OpenCV returns uint8, rounded to nearest).
    """
    y = resize(x.double(), hw) if tuple(x.shape[-2:]) != tuple(hw) else x.double()
    return y.round().clamp(0, 255).float()


def load_reference(
    source: str | os.PathLike[str] | Mapping[str, Any] | tuple[Any, ...],
    size: int = 192,
    zero123_size: int = 256,
    normalize_depth: bool = True,
) -> dict[str, torch.Tensor | None]:
    """What upstream's trainer builds from ``rgba.png`` / ``depth.png`` (SPEC section 1,
    "Training-time consumption"; ``nerf/utils.py:473-566``).

    ``source``: a directory holding ``rgba.png`` and ``depth.png``, an ``rgba*.png`` path (depth path =
    name with "rgba" -> "depth", as upstream), a ``(rgba, depth)`` pair or ``{"rgba":…, "depth":…}``.
    A missing depth file gives ``depth = depth_masked = None`` (upstream then skips the depth loss).

    * RGBA (straight alpha, as stored) is area-resized to ``size`` (``INTER_AREA``, rounded to 8 bit
      like OpenCV on uint8), ``/255``; ``rgb = rgb*α + (1 − α)`` (white background) -> ``rgb[3,S,S]``;
      ``mask = α > 0.5`` -> ``mask[1,S,S]`` (bool); ``opacity = mask`` as float (``rm_edge`` is off).
    * depth.png is area-resized the same way to ``d`` (0..255) and ``gt = 1 − d/255`` (so larger =
      farther, and the background becomes 1). With ``normalize_depth`` (upstream default True):
      ``m`` = smallest nonzero ``gt`` inside the mask; ``gt = clamp((gt − m) / max(gt), 0, 1)``
      with ``max`` over the WHOLE image (usually the background's 1), unchanged when ``m`` does not
      exist (:func:`~animate124.preprocess.depth.nonzero_normalize_depth`). ``depth[1,S,S]`` is that
      map; ``depth_masked[N]`` = its values at mask pixels, row-major (upstream ``depth[mask]``).
    * ``zero123_rgb[3,Z,Z]``: RGBA area-resized to ``zero123_size`` (256), white-composited.
    Also returns ``alpha[1,S,S]``. All float32 on the CPU.
    """
    from animate124.errors import ProjectError
    from animate124.readers import read_image

    rgba_path, depth_path = _resolve_reference_paths(source)
    redo = "run `animate124 preprocess` on the project's image again (`animate124 run-all` does it for you)"
    img = read_image(rgba_path, "reference image", hint=redo, error=ProjectError)
    rgba_u8 = torch.from_numpy(np.asarray(img.convert("RGBA"), dtype=np.uint8).copy()).permute(2, 0, 1)

    def composite(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = area_resize_uint8(rgba_u8, hw) / 255.0
        a = x[3:4]
        return x[:3] * a + (1 - a), a

    rgb, alpha = composite((size, size))
    mask = alpha > 0.5
    out: dict[str, torch.Tensor | None] = {
        "rgb": rgb,
        "alpha": alpha,
        "mask": mask,
        "opacity": mask.float(),
        "zero123_rgb": composite((zero123_size, zero123_size))[0],
        "depth": None,
        "depth_masked": None,
    }
    if depth_path is not None:
        dimg = read_image(depth_path, "reference depth", hint=redo, error=ProjectError)
        darr = np.asarray(dimg)
        if darr.ndim == 3:  # upstream keeps the first channel of a multi-channel depth image
            darr = darr[..., 0]
        if darr.dtype != np.uint8:
            raise InputError(
                f"depth image must be 8-bit, got {darr.dtype}: {depth_path}", hint="re-run preprocess"
            )
        d = area_resize_uint8(torch.from_numpy(darr.copy())[None].double(), (size, size))
        gt = 1 - d / 255.0
        if normalize_depth:
            gt = nonzero_normalize_depth(gt, mask)
        out["depth"] = gt
        out["depth_masked"] = gt[mask]
    return out
