"""Monocular depth (disparity) of the reference image and its normalisations (SPEC.md section 1).

Upstream runs MiDaS v3.1 ``dpt_beit_large_512`` on the *original* RGB (background included) in
[0, 1], resizes the prediction back to the input size with bicubic interpolation, min-max normalises
it inside the mask ``alpha > 0`` and writes 0 outside; larger means closer. We run the same network
in its transformers port (``Intel/dpt-beit-large-512``) or Depth-Anything-V2, with the model's own
preprocessing done here in torch (hf-layouts.md section 5).

The model object is duck-typed (``animate124.models.loaders.DepthModel``): attributes ``model`` (a
transformers ``*ForDepthEstimation`` returning ``predicted_depth[B, h, w]``), ``kind`` ("dpt" or
"depth_anything"), ``image_size``, ``mean``, ``std``, ``multiple_of``, ``keep_aspect`` and an
optional ``resample`` ("bicubic" default, as MiDaS' ``cv2.INTER_CUBIC``; "bilinear" as the HF DPT
processor).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def constrain_to_multiple_of(
    value: float, multiple: int, min_val: int = 0, max_val: int | None = None
) -> int:
    """MiDaS / transformers DPT rule: ``round(value / multiple) * multiple`` (floor above ``max_val``,
    ceil below ``min_val``), at least ``multiple``."""
    x = round(value / multiple) * multiple
    if max_val is not None and x > max_val:
        x = math.floor(value / multiple) * multiple
    if x < min_val:
        x = math.ceil(value / multiple) * multiple
    return max(int(x), multiple)


def depth_input_size(h: int, w: int, image_size: int, multiple_of: int, keep_aspect: bool) -> tuple[int, int]:
    """Network input size for an ``h x w`` image (transformers ``DPTImageProcessor`` / MiDaS "minimal").

    Without ``keep_aspect`` the target is ``image_size x image_size``. With it, the one scale of
    ``image_size/h`` and ``image_size/w`` that is closest to 1 is used for both sides ("change the
    image as little as possible"); each side is then rounded to a multiple of ``multiple_of``.
    """
    sh, sw = image_size / h, image_size / w
    if keep_aspect:
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh
    return constrain_to_multiple_of(sh * h, multiple_of), constrain_to_multiple_of(sw * w, multiple_of)


def _model_dtype(model: Any) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def preprocess_for_depth(depth_model: Any, rgb: torch.Tensor) -> torch.Tensor:
    """``rgb[3, H, W]`` in [0, 1] -> normalised network input ``[1, 3, h, w]`` (see module docstring).

    Resize with ``resample`` (bicubic by default, no antialiasing, like ``cv2.resize``), clamp to
    [0, 1] (bicubic overshoot), then ``(x - mean) / std``.
    """
    H, W = rgb.shape[-2:]
    h, w = depth_input_size(
        H, W, int(depth_model.image_size), int(depth_model.multiple_of), bool(depth_model.keep_aspect)
    )
    x = rgb.float()[None]
    if (h, w) != (H, W):
        mode = getattr(depth_model, "resample", "bicubic")
        x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False).clamp(0, 1)
    mean = torch.tensor(depth_model.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(depth_model.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def estimate_depth(depth_model: Any, rgb: torch.Tensor) -> torch.Tensor:
    """Disparity (relative inverse depth, larger = closer) of ``rgb[3, H, W]`` in [0, 1] -> ``[H, W]``.

    Pass the ORIGINAL RGB with its background (upstream does; the network needs the context). The
    prediction is bicubic-resized back to ``H x W`` and clamped at 0 (SPEC section 1). float32 on
    the input's device.
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"estimate_depth expects rgb[3, H, W], got {tuple(rgb.shape)}")
    model = depth_model.model
    H, W = rgb.shape[-2:]
    x = preprocess_for_depth(depth_model, rgb)
    x = x.to(device=_model_device(model), dtype=_model_dtype(model))
    out = model(pixel_values=x)
    pred = out.predicted_depth if hasattr(out, "predicted_depth") else out[0]
    pred = pred.float()
    if pred.ndim == 3:
        pred = pred[:, None]
    elif pred.ndim == 2:
        pred = pred[None, None]
    pred = F.interpolate(pred, size=(H, W), mode="bicubic", align_corners=False)
    return pred[0, 0].clamp(min=0).to(rgb.device)


def normalize_depth_in_mask(disp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SPEC section 1 depth normalisation: ``(d - min_m) / (max_m - min_m)`` inside ``mask``, 0 outside.

    ``disp[H, W]``, ``mask[H, W]`` bool (upstream: ``alpha > 0``) -> float32 ``[H, W]`` in [0, 1],
    larger = closer. A constant (or empty) masked region gives 0. Upstream divides by
    ``max - min + 1e-9``; in float32 that epsilon vanishes for any realistic disparity range, so the
    maximum maps to exactly 1 here as it does there (the shipped ``depth.png`` files reach 255).
    """
    d = disp.float()
    m = mask.bool()
    out = torch.zeros_like(d)
    if not bool(m.any()):
        return out
    vals = d[m]
    lo, hi = vals.min(), vals.max()
    rng = hi - lo
    if float(rng) > 0:
        out[m] = ((vals - lo) / rng).clamp(0, 1)
    return out


def depth_to_uint8(depth01: torch.Tensor) -> torch.Tensor:
    """Upstream quantisation ``(depth * 255).astype(np.uint8)``: truncation, not rounding."""
    return (depth01.float().clamp(0, 1) * 255).floor().to(torch.uint8)


def nonzero_normalize_depth(depth: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Upstream ``nonzero_normalize_depth`` (``nerf/utils.py``; SPEC sections 1 and 3.5), verbatim.

    ``m`` = smallest value > 0 among ``depth[mask]`` (or among all of ``depth`` without a mask); if
    there is none, ``depth`` is returned unchanged. Otherwise ``clamp((depth - m) / depth.max(), 0, 1)``
    where ``depth.max()`` is over the WHOLE tensor, not only the mask (upstream does exactly this).
    """
    sel = depth[mask] if mask is not None else depth
    pos = sel[sel > 0]
    if pos.numel() == 0:
        return depth
    m = pos.min()
    if float(m) == 0:
        return depth
    return ((depth - m) / depth.max()).clamp(0, 1)
