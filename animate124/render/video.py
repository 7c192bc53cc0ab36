"""Writing rendered images and videos (SPEC §7).

Values are written as they are: tensors in [0, 1] are clamped and quantized, **not** min-max
stretched. Upstream stretches every saved tensor per pose (SPEC §11.7), which changes RGB contrast;
here ``normalize=True`` is opt-in and meant for depth (:func:`depth_to_image` does upstream's
"nonzero" normalization). MP4s are H.264 (libx264, yuv420p) through imageio-ffmpeg, padded to even
sizes as yuv420p requires; GIFs go through imageio's pillow plugin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from animate124.errors import Animate124Error

__all__ = [
    "VideoError",
    "to_uint8",
    "make_grid",
    "depth_to_image",
    "save_image",
    "save_frames",
    "save_video",
]


class VideoError(Animate124Error):
    """Bad image/video tensor or unsupported output format."""


def _normalize(x: Tensor) -> Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def to_uint8(img: Tensor | np.ndarray, normalize: bool = False) -> np.ndarray:
    """[C,H,W] (C = 1 or 3 or 4) or [H,W,C] or [H,W] float in [0,1] -> [H,W,C] (or [H,W]) uint8.

    Channels-first is assumed when the first dim is 1/3/4 and the last is not.
    """
    x = torch.as_tensor(img).detach().float().cpu()
    if x.ndim == 3 and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.permute(1, 2, 0)
    if x.ndim not in (2, 3):
        raise VideoError(f"expected an image [C,H,W] or [H,W,C], got shape {tuple(x.shape)}")
    if normalize:
        x = _normalize(x)
    x = torch.nan_to_num(x, nan=0.0).clamp(0, 1)
    arr = (x * 255.0 + 0.5).to(torch.uint8).numpy()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """[N,C,H,W] -> one [C, H', W'] image with ``nrow`` images per row (like torchvision's)."""
    if images.ndim != 4:
        raise VideoError(f"make_grid expects [N,C,H,W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    out = images.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        out[:, y : y + h, x : x + w] = images[k]
    return out


def depth_to_image(depth: Tensor) -> Tensor:
    """Upstream's "nonzero" depth normalization for display: subtract the min over nonzero pixels,
    divide by the max, clamp to [0,1]; zero (background) stays 0. [..., H, W] -> same shape."""
    d = depth.detach().float()
    nz = d[d > 0]
    if nz.numel() == 0:
        return torch.zeros_like(d)
    out = torch.where(d > 0, d - nz.min(), torch.zeros_like(d))
    return (out / out.max().clamp_min(1e-8)).clamp(0, 1)


def save_image(
    path: str | Path, img: Tensor | np.ndarray, normalize: bool = False, quality: int = 95
) -> Path:
    """Write one image (PNG, JPG or any imageio format chosen by the suffix); see :func:`to_uint8`."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(img, normalize)
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    iio.imwrite(path, arr, **kwargs)
    return path


def save_frames(
    directory: str | Path,
    frames: Tensor | Sequence[Tensor],
    pattern: str = "{:04d}.png",
    normalize: bool = False,
) -> list[Path]:
    """Write frames [T,C,H,W] as numbered images in ``directory``."""
    return [save_image(Path(directory) / pattern.format(i), f, normalize) for i, f in enumerate(frames)]


def _pad_even(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = ((0, ph), (0, pw)) + ((0, 0),) * (arr.ndim - 2)
        arr = np.pad(arr, pad, mode="edge")
    return arr


def save_video(
    path: str | Path,
    frames: Tensor | Sequence[Tensor],
    fps: float = 25.0,
    normalize: bool = False,
    quality: int = 8,
) -> Path:
    """Write frames [T,C,H,W] (or a list of [C,H,W]) in [0,1] as .mp4 (H.264/yuv420p) or .gif.

    ``normalize`` min-max stretches over the whole clip (for depth), not per frame.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = torch.stack([torch.as_tensor(f) for f in frames]) if not isinstance(frames, Tensor) else frames
    if stack.ndim not in (3, 4) or stack.shape[0] == 0:
        raise VideoError(f"expected frames [T,C,H,W], got {tuple(stack.shape)}")
    stack = stack.detach().float().cpu()
    if normalize:
        stack = _normalize(stack)
    arrs = [to_uint8(f) for f in stack]
    arrs = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3] for a in arrs]
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        import importlib.util

        import imageio.v2 as iio2

        if importlib.util.find_spec("imageio_ffmpeg") is None:
            # without it imageio hands .mp4 to another plugin, which fails with an unrelated TypeError
            raise VideoError(
                f"cannot write {path.name}: the ffmpeg backend (imageio-ffmpeg) is not installed",
                "pip install imageio-ffmpeg (a dependency of animate124), or ask for .gif",
            )

        arrs = [_pad_even(a) for a in arrs]
        writer = iio2.get_writer(
            str(path),
            fps=fps,
            codec="libx264",
            quality=quality,
            pixelformat="yuv420p",
            macro_block_size=1,
        )
        try:
            for a in arrs:
                writer.append_data(a)
        finally:
            writer.close()
    elif suffix == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, np.stack(arrs), duration=1000.0 / fps, loop=0)
    else:
        raise VideoError(f"unsupported video format {suffix!r}", "use .mp4 or .gif")
    return path
