"""Background removal for images without alpha: CLIPSeg coarse mask -> trimap -> ViTMatte alpha.

Upstream uses carvekit (Tracer-B7 segmentation + FBA matting, SPEC.md section 1), which has no
maintained offline-installable package. We keep its structure with two transformers models
(``animate124.models.loaders.MattingModels``: ``segmenter`` = ``CLIPSegForImageSegmentation``,
``segmenter_processor_or_tokenizer`` = a ``CLIPSegProcessor`` or its tokenizer, ``matte`` =
``VitMatteForImageMatting``):

1. CLIPSeg gives a foreground probability for a text query (default ``"the main object"``; the
   pipeline may pass the subject of the user's prompt, which usually works better);
2. ``prob > threshold`` is the coarse mask; a trimap is built from it with morphology (torch
   max-pooling, square structuring element): definite foreground = mask eroded by
   ``erode_fraction * long side``, definite background = outside the mask dilated by
   ``dilate_fraction * long side``, the band in between is unknown (value 0.5);
3. ViTMatte refines the trimap into a soft alpha; definite regions are then forced to 0 / 1.

Quality depends mostly on CLIPSeg: its 352 px, patch-16 decoder only localises the object to a few
per cent of the image, which is why the unknown band is wide, and a vague query or several similar
objects can select the wrong thing. ViTMatte predicts alpha only (no foreground colour), so
semi-transparent edge pixels keep the photo's colour, background included. Users who want exact
control pass an RGBA image: then this module is skipped entirely.

Everything is torch (no cv2/scipy). Processing runs at most at ``max_side`` px on the long side
(the alpha is bilinearly upsampled to the input size afterwards) to bound memory and time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from animate124.preprocess.framing import resize

log = logging.getLogger(__name__)

DEFAULT_QUERY = "the main object"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIPSEG_SIZE = 352  # CIDAS/clipseg-rd64-refined preprocessor size


@dataclass
class MattingResult:
    """``alpha[H, W]`` in [0, 1]; ``probability[H, W]`` (CLIPSeg, sigmoid); ``trimap[H, W]`` in {0, .5, 1}."""

    alpha: torch.Tensor
    probability: torch.Tensor
    trimap: torch.Tensor
    matte_ran: bool


# --------------------------------------------------------------------------------------------
# morphology (max-pool based, separable square structuring element)
# --------------------------------------------------------------------------------------------
def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``mask[H, W]`` by a ``(2r+1) x (2r+1)`` square (max-pool, separable)."""
    if radius <= 0:
        return mask.bool().clone()
    x = mask.float()[None, None]
    k = 2 * radius + 1
    x = F.max_pool2d(x, kernel_size=(k, 1), stride=1, padding=(radius, 0))
    x = F.max_pool2d(x, kernel_size=(1, k), stride=1, padding=(0, radius))
    return x[0, 0] > 0.5


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion ``= not dilate(not mask)``; outside the image counts as foreground, so an
    object cut by the frame stays definite foreground at the border."""
    return ~dilate(~mask.bool(), radius)


def make_trimap(
    prob: torch.Tensor,
    threshold: float = 0.4,
    erode_fraction: float = 0.02,
    dilate_fraction: float = 0.04,
) -> torch.Tensor:
    """Trimap ``[H, W]`` from a foreground probability: 1 definite fg, 0 definite bg, 0.5 unknown.

    ``mask = prob > threshold``; ``r_e = max(1, round(erode_fraction * max(H, W)))``,
    ``r_d = max(1, round(dilate_fraction * max(H, W)))``; fg = erode(mask, r_e),
    bg = not dilate(mask, r_d). An empty mask gives an all-background trimap.
    """
    H, W = prob.shape[-2:]
    mask = prob > threshold
    r_e = max(1, round(erode_fraction * max(H, W)))
    r_d = max(1, round(dilate_fraction * max(H, W)))
    fg = erode(mask, r_e) & mask
    bg = ~dilate(mask, r_d)
    tri = torch.full(prob.shape[-2:], 0.5, dtype=torch.float32, device=prob.device)
    tri[fg] = 1.0
    tri[bg] = 0.0
    return tri


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _param(model: Any) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(model.parameters())
        return p.device, p.dtype
    except (AttributeError, StopIteration):
        return torch.device("cpu"), torch.float32


def _clipseg_image_settings(proc: Any) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """Input size and mean/std from a CLIPSegProcessor's image processor (defaults: 352, ImageNet)."""
    ip = getattr(proc, "image_processor", None)
    size: tuple[int, int] = (_CLIPSEG_SIZE, _CLIPSEG_SIZE)
    mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    if ip is not None:
        s = getattr(ip, "size", None)
        if isinstance(s, int):
            size = (s, s)
        elif isinstance(s, dict) and "height" in s and "width" in s:
            size = (int(s["height"]), int(s["width"]))
        elif isinstance(s, dict) and "shortest_edge" in s:
            size = (int(s["shortest_edge"]), int(s["shortest_edge"]))
        elif s is not None and getattr(s, "height", None):
            size = (int(s.height), int(s.width))
        mean = tuple(getattr(ip, "image_mean", None) or mean)
        std = tuple(getattr(ip, "image_std", None) or std)
    return size, mean, std


@torch.no_grad()
def segment_probability(
    segmenter: Any,
    processor_or_tokenizer: Any,
    rgb: torch.Tensor,
    query: str = DEFAULT_QUERY,
    *,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """CLIPSeg foreground probability ``[H, W]`` in [0, 1] of ``rgb[3, H, W]`` for a text ``query``.

    Preprocessing as ``CLIPSegProcessor``: resize to its square size (352 for the real model;
    bilinear, antialiased), ImageNet mean/std; the query is tokenised by the processor's tokenizer
    (or by ``processor_or_tokenizer`` itself). ``image_size`` / ``mean`` / ``std`` override what the
    processor says (``MattingModels`` carries them). ``sigmoid(logits)`` is resized back bilinearly.
    """
    H, W = rgb.shape[-2:]
    tok = getattr(processor_or_tokenizer, "tokenizer", None) or processor_or_tokenizer
    size, p_mean, p_std = _clipseg_image_settings(processor_or_tokenizer)
    size = (int(image_size), int(image_size)) if image_size else size
    mean, std = tuple(mean or p_mean), tuple(std or p_std)
    device, dtype = _param(segmenter)
    x = F.interpolate(rgb.float()[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    enc = tok([query], padding=True, truncation=True, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"].to(device)}
    if "attention_mask" in enc:
        kwargs["attention_mask"] = enc["attention_mask"].to(device)
    out = segmenter(pixel_values=x.to(device=device, dtype=dtype), **kwargs)
    logits = out.logits.float()
    while logits.ndim < 4:
        logits = logits.unsqueeze(0)
    prob = torch.sigmoid(logits[:1, :1])
    return F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).cpu()


@torch.no_grad()
def refine_alpha(
    matte: Any,
    rgb: torch.Tensor,
    trimap: torch.Tensor,
    divisor: int = 32,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """ViTMatte alpha ``[H, W]`` from ``rgb[3, H, W]`` in [0, 1] and ``trimap[H, W]`` in {0, .5, 1}.

    Input as ``VitMatteImageProcessor``: ``[(rgb - mean) / std, trimap]`` (4 channels; mean = std =
    0.5), zero-padded on the bottom/right to a multiple of ``divisor`` (32), the prediction cropped back.
    """
    H, W = rgb.shape[-2:]
    device, dtype = _param(matte)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = torch.cat([(rgb.float() - m) / sd, trimap.float()[None]])[None]
    ph, pw = (-H) % divisor, (-W) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    out = matte(pixel_values=x.to(device=device, dtype=dtype))
    alphas = out.alphas if hasattr(out, "alphas") else out[0]
    return alphas.float()[0, 0, :H, :W].clamp(0, 1).cpu()


def remove_background(
    models: Any,
    rgb: torch.Tensor,
    *,
    query: str = DEFAULT_QUERY,
    threshold: float = 0.4,
    erode_fraction: float = 0.02,
    dilate_fraction: float = 0.04,
    max_side: int = 1024,
) -> MattingResult:
    """Soft alpha for ``rgb[3, H, W]`` in [0, 1] with CLIPSeg + ViTMatte (see module docstring).

    ``models`` has ``segmenter``, ``segmenter_processor_or_tokenizer`` and ``matte`` (and optionally
    ``segmenter_image_size``/``_mean``/``_std``, ``matte_mean``/``_std``/``_size_divisibility``,
    as ``animate124.models.loaders.MattingModels``). Work happens
    at ``<= max_side`` px (area downscale); the alpha comes back at ``H x W`` (bilinear), with the
    trimap's definite regions forced to 0 / 1. When the coarse mask is empty the matte is skipped
    and alpha is all zero (the caller raises the no-foreground error).
    """
    rgb = rgb.float().cpu()
    H, W = rgb.shape[-2:]
    s = min(1.0, max_side / max(H, W))
    hw = (max(1, round(H * s)), max(1, round(W * s)))
    work = resize(rgb, hw) if hw != (H, W) else rgb
    prob = segment_probability(
        models.segmenter,
        models.segmenter_processor_or_tokenizer,
        work,
        query,
        image_size=getattr(models, "segmenter_image_size", None),
        mean=getattr(models, "segmenter_mean", None),
        std=getattr(models, "segmenter_std", None),
    )
    tri = make_trimap(prob, threshold, erode_fraction, dilate_fraction)
    if not bool((tri > 0).any()):
        log.info("CLIPSeg found no foreground for query %r (max probability %.3f)", query, float(prob.max()))
        alpha = torch.zeros(hw)
        ran = False
    else:
        alpha = refine_alpha(
            models.matte,
            work,
            tri,
            divisor=int(getattr(models, "matte_size_divisibility", 32)),
            mean=tuple(getattr(models, "matte_mean", (0.5, 0.5, 0.5))),
            std=tuple(getattr(models, "matte_std", (0.5, 0.5, 0.5))),
        )
        alpha = torch.where(tri == 1.0, torch.ones_like(alpha), alpha)
        alpha = torch.where(tri == 0.0, torch.zeros_like(alpha), alpha)
        ran = True
    if hw != (H, W):

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t[None, None], size=(H, W), mode="bilinear", align_corners=False)[
                0, 0
            ].clamp(0, 1)

        alpha, prob = up(alpha), up(prob)
        tri = F.interpolate(tri[None, None], size=(H, W), mode="nearest")[0, 0]
    return MattingResult(alpha=alpha, probability=prob, trimap=tri, matte_ran=ran)
