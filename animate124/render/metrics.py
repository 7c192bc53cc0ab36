"""Image and video metrics of ``animate124 evaluate``: PSNR, SSIM (masked), CLIP similarities.

Images are ``[3, H, W]`` (or ``[N, 3, H, W]``) floats in [0, 1].

* ``PSNR = 10·log10(1 / MSE)``, the MSE over the pixels of ``mask`` (all channels), capped at 100 dB
  (identical images) so that it stays a finite JSON number.
* ``SSIM`` (Wang et al. 2004) with an 11×11 Gaussian window (σ = 1.5), ``C1 = 0.01²``, ``C2 = 0.03²``,
  per channel, on the image padded by reflection, in float64; the map's mean over ``mask`` (all channels).
* CLIP: images are resized to the model's input size (bicubic, antialiased) and normalised with
  CLIP's mean and std; embeddings are L2-normalised, and a similarity is a cosine.
  - ``clip_i``: mean cosine between each render and the reference image;
  - ``clip_t``: mean cosine between each render and the text prompt;
  - ``temporal_consistency``: mean cosine between consecutive frames of each clip (1 = no change).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "psnr",
    "ssim",
    "clip_image_embeddings",
    "clip_text_embeddings",
    "clip_similarity",
    "temporal_consistency",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PSNR_CAP = 100.0


def _mask_like(img: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones_like(img[..., :1, :, :], dtype=torch.bool)
    m = mask.bool()
    while m.ndim < img.ndim:
        m = m.unsqueeze(0)
    return m


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of ``a`` against ``b`` over ``mask`` ([H,W] or [1,H,W] bool); capped at 100 dB."""
    a, b = a.float(), b.float()
    m = _mask_like(a, mask).expand_as(a)
    if not bool(m.any()):
        raise ValueError("the mask is empty")
    mse = float(((a - b) ** 2)[m].mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim_map(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """The SSIM map ``[C, H, W]`` of two images ``[C, H, W]`` (module docstring)."""
    c1, c2 = 0.01**2, 0.03**2
    a, b = a.double()[None], b.double()[None]  # float64: the variances are small differences
    c = a.shape[1]
    w = _gaussian_window(window, sigma).to(a.device, torch.float64).expand(c, 1, window, window).contiguous()
    pad = window // 2
    mode = "reflect" if min(a.shape[-2:]) > pad else "replicate"

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode=mode), w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return (num / den)[0].float()


def ssim(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Mean SSIM of ``a`` against ``b`` ([C,H,W] in [0,1]) over ``mask`` (None: every pixel)."""
    s = ssim_map(a, b)
    m = _mask_like(s, mask).expand_as(s)
    if not bool(m.any()):
        raise ValueError("the mask is empty")
    return float(s[m].mean())


def _clip_size(model: Any) -> int:
    return int(model.config.vision_config.image_size)


@torch.no_grad()
def clip_image_embeddings(model: Any, images: Tensor, batch: int = 32) -> Tensor:
    """``[N, 3, H, W]`` in [0,1] -> L2-normalised CLIP image embeddings ``[N, D]`` (float32, on the CPU)."""
    size = _clip_size(model)
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mean = torch.tensor(CLIP_MEAN, device=dev)[:, None, None]
    std = torch.tensor(CLIP_STD, device=dev)[:, None, None]
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(dev, torch.float32)
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(
            0, 1
        )
        x = ((x - mean) / std).to(dtype)
        e = model.get_image_features(pixel_values=x)
        e = e if isinstance(e, Tensor) else e.pooler_output
        out.append(F.normalize(e.float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def clip_text_embeddings(model: Any, tokenizer: Any, texts: list[str]) -> Tensor:
    """Texts -> L2-normalised CLIP text embeddings ``[N, D]`` (float32, on the CPU)."""
    dev = next(model.parameters()).device
    tok = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=min(int(getattr(tokenizer, "model_max_length", 77)), 77),
        return_tensors="pt",
    )
    e = model.get_text_features(
        input_ids=tok["input_ids"].to(dev), attention_mask=tok.get("attention_mask").to(dev)
    )
    e = e if isinstance(e, Tensor) else e.pooler_output
    return F.normalize(e.float(), dim=-1).cpu()


def clip_similarity(a: Tensor, b: Tensor) -> float:
    """Mean cosine between embeddings ``a [N, D]`` and ``b [N, D]`` or ``[1, D]`` (broadcast)."""
    return float((F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1).mean())


def temporal_consistency(clips: Tensor) -> float:
    """Mean cosine of consecutive frames: ``clips [V, T, D]`` (or ``[T, D]``) embeddings, T >= 2."""
    e = clips if clips.ndim == 3 else clips[None]
    if e.shape[1] < 2:
        raise ValueError("temporal consistency needs at least 2 frames")
    e = F.normalize(e.float(), dim=-1)
    return float((e[:, 1:] * e[:, :-1]).sum(-1).mean())
