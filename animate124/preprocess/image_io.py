"""Robust image loading for user input (SPEC.md section 1, "Preprocessing").

Upstream reads the photo with ``cv2.imread`` and assumes 8-bit RGB(A). Users bring anything a
phone or an editor writes, so this module normalises every common file to an 8-bit PIL image in
mode ``RGB`` or ``RGBA``:

* formats: whatever Pillow decodes (PNG, JPEG, WebP, GIF, BMP, TIFF, ...); animated files give
  their first frame;
* modes: ``RGB``, ``RGBA``, ``L``, ``LA``, ``P`` (palette; with ``transparency`` it becomes RGBA),
  ``PA``, ``1``, ``I;16*`` / ``I`` (16-bit PNGs: scaled by 255/65535, rounded), ``F``, ``CMYK``
  (Pillow inverts Adobe CMYK JPEGs itself), ``YCbCr``, ``LAB``, ``HSV``, ``RGBa``, ``RGBX``;
* the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so the pixels are the way
  a viewer shows them;
* colour profiles (ICC) are not converted: pixel values are taken as sRGB.

Size policy (decided here, documented in the CLI help): an image whose short side is below
``min_side`` (64 px) is refused, since the trainer's 192 px reference would be mostly made-up
pixels. An image whose long side exceeds ``max_side`` (default 2048) is downscaled (Lanczos, aspect
kept) with a logged warning: the trainer only ever consumes 192 px / 256 px versions, and depth and
matting at tens of megapixels waste minutes and GPU memory for nothing. Pillow's decompression-bomb
guard (about 179 MP) is turned into an :class:`InputError`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animate124.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_SIDE = 2048

_SUPPORTED_HINT = "use a PNG, JPEG or WebP photo (RGBA PNG if you already removed the background)"


def _open_checked(path: Path) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes an InputError with a hint."""
    if not path.exists():
        raise InputError(f"image not found: {path}", hint="check the path (and its spelling)")
    if path.is_dir():
        raise InputError(f"expected an image file but got a directory: {path}", hint=_SUPPORTED_HINT)
    if not os.access(path, os.R_OK):
        raise InputError(
            f"image is not readable (permission denied): {path}", hint="check the file permissions"
        )
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty: {path}", hint=_SUPPORTED_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now so truncated / corrupt data fails here, not later
    except UnidentifiedImageError as exc:
        raise InputError(f"not an image (or an unsupported format): {path}", hint=_SUPPORTED_HINT) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"image is too large to decode safely: {path} ({exc})",
            hint=f"downscale it to at most {DEFAULT_MAX_SIDE} px on the long side first",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated, corrupt, bad header
        raise InputError(
            f"image could not be decoded (truncated or corrupt?): {path} ({exc})",
            hint="re-export or re-download the file; " + _SUPPORTED_HINT,
        ) from exc
    return img


def _high_bit_to_8bit(img: Image.Image) -> Image.Image:
    """``I;16*`` / ``I`` / ``F`` single-channel images to 8-bit ``L``.

    Integer modes hold 0..65535 (16-bit PNG/TIFF): ``v8 = round(v * 255 / 65535)``. Float (``F``)
    images are taken as [0, 1] when their maximum is <= 1, otherwise as 0..255.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        scaled = arr * 255.0 if np.nanmax(arr) <= 1.0 else arr
    else:
        scaled = arr.astype(np.float64) * (255.0 / 65535.0)
    out = np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit ``RGB`` or ``RGBA`` (alpha kept when the file has one)."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode.startswith("I") or mode == "F":
        return _high_bit_to_8bit(img).convert("RGB")
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if mode in ("LA", "La", "PA", "RGBa", "RGBX"):
        return img.convert("RGBA") if mode != "RGBX" else img.convert("RGB")
    if mode == "L" and "transparency" in img.info:  # grey PNG with a tRNS colour key
        return img.convert("RGBA")
    if mode == "RGB" and "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(
    path: str | os.PathLike[str],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_side: int | None = DEFAULT_MAX_SIDE,
    warn: bool = True,
) -> Image.Image:
    """Load a user image as an 8-bit PIL image in mode ``RGB`` or ``RGBA``.

    EXIF orientation is applied first, then the mode is normalised (see the module docstring),
    then the size policy: ``min(W, H) < min_side`` raises :class:`InputError`; ``max(W, H) >
    max_side`` downscales with a warning (``max_side=None`` disables it; ``warn=False`` logs it at
    debug level, for callers that load an image the user was already warned about). Raises
    InputError for a missing path, a directory, an empty, non-image, truncated or unreadable file.
    """
    p = Path(path)
    img = _open_checked(p)
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception as exc:  # broken EXIF must not stop us; the pixels are fine
        log.warning("ignoring unreadable EXIF orientation in %s: %s", p, exc)
    img = to_rgb_or_rgba(img)
    w, h = img.size
    if min(w, h) < min_side:
        raise InputError(
            f"image is too small: {w}x{h} px (the short side must be at least {min_side} px): {p}",
            hint="use a larger photo; the reference view is trained at 192x192",
        )
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        log.log(
            logging.WARNING if warn else logging.DEBUG,
            "image %s is %dx%d px; downscaling to %dx%d (max_side=%d)", p, w, h, nw, nh, max_side,
        )  # fmt: skip
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)  # Pillow premultiplies RGBA itself
    return img


def has_alpha(img: Image.Image) -> bool:
    """True only if ``img`` has an alpha channel that is not fully opaque (some alpha < 255).

    An RGBA file whose alpha is all 255 carries no segmentation, so background removal must run.
    """
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return False
    lo, _ = img.getchannel("A").getextrema()
    return lo < 255


def load_photo(path: str | os.PathLike[str]):  # -> torch.Tensor [3, H, W]
    """The original photo (background included) as float32 ``[3, H, W]`` in [0, 1], for textual
    inversion; an alpha channel is composited on white. The ``max_side`` downscale applies silently
    (the preprocess stage already warned about it)."""
    import torch

    img = load_image(path, warn=False)
    arr = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, a = arr[..., :3], arr[..., 3:]
    rgb = rgb * a + (1.0 - a)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
