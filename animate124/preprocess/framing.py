"""Square framing of the reference image, and the area/bilinear resampler used everywhere here.

Two framings (SPEC.md section 1, "No recentering and no rescaling of the object"):

* :func:`pad_to_square` is exactly upstream: zero padding on the short side, symmetric with the odd
  pixel on the bottom/right (``top = (S - H) // 2``), output side ``S = max(H, W)``, padded pixels
  transparent black; no recentring. With ``size`` the padded square is then resampled to ``size``.
* :func:`recenter` is the threestudio ``image_preprocess.py`` framing (SPEC section 1 "[ts]"): the
  bounding box of ``alpha > 0.5`` is scaled so that its long side is ``(1 - border_ratio) * size``
  and centred. Unlike threestudio, the bbox is inclusive and the whole image (not only the bbox
  crop) is resampled, so faint alpha outside the bbox survives.

Both are expressed as a :class:`FrameTransform` (resize the input to ``resized_hw``, paste it with its
top-left corner at ``offset_yx`` into a zero ``size x size`` canvas), so the depth map gets exactly
the geometry of the RGBA (:func:`apply_transform`).

Resampling (:func:`resize`) is separable and linear: ``out = Wy @ x @ Wx^T``. Shrinking uses the
fractional-overlap box filter of OpenCV's ``INTER_AREA`` (upstream resizes with it), which equals
``F.interpolate(mode="area")`` whenever the factor is an integer; enlarging uses bilinear
(``align_corners=False``, like ``F.interpolate(mode="bilinear")``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from animate124.errors import InputError


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------
def resize_matrix(
    n_in: int,
    n_out: int,
    start: int = 0,
    stop: int | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows ``start:stop`` of the 1-D resampling matrix ``[n_out, n_in]`` (rows sum to 1).

    Shrinking (``n_out < n_in``), OpenCV INTER_AREA: output cell ``o`` covers the input interval
    ``[o*s, (o+1)*s)`` with ``s = n_in / n_out``; ``W[o, i] = |[i, i+1) ∩ [o*s, (o+1)*s)| / s``.
    Enlarging: bilinear with ``src = (o + 0.5) / scale - 0.5`` clamped to ``[0, n_in - 1]``.
    Equal sizes: identity.
    """
    stop = n_out if stop is None else stop
    o = torch.arange(start, stop, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n_in, dtype=torch.float64, device=device)[None, :]
    if n_out == n_in:
        w = (o == i).to(torch.float64)
    elif n_out < n_in:
        s = n_in / n_out
        lo, hi = o * s, (o + 1) * s
        w = (torch.minimum(hi, i + 1) - torch.maximum(lo, i)).clamp(min=0) / s
    else:
        src = ((o + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1)
        i0 = src.floor()
        frac = src - i0
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w = (i == i0) * (1 - frac) + (i == i1) * frac
    return w.to(dtype)


def resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resample ``x[..., H, W]`` to ``[..., h, w]`` (area when shrinking, bilinear when enlarging)."""
    h, w = hw
    H, W = x.shape[-2:]
    if (h, w) == (H, W):
        return x.clone()
    wy = resize_matrix(H, h, dtype=x.dtype, device=x.device)
    wx = resize_matrix(W, w, dtype=x.dtype, device=x.device)
    return wy @ x @ wx.T


def resize_rgba(rgba: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize straight-alpha ``rgba[4, H, W]`` in premultiplied space (no dark/colour fringes)."""
    return _transform_rgba(rgba, _plain_resize_transform(rgba.shape[-2:], hw))


def _plain_resize_transform(in_hw: tuple[int, int], hw: tuple[int, int]) -> FrameTransform:
    return FrameTransform(in_hw=tuple(in_hw), out_hw=tuple(hw), resized_hw=tuple(hw), offset_yx=(0, 0))


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameTransform:
    """Resize the ``in_hw`` image to ``resized_hw`` and paste its top-left corner at ``offset_yx``
    (may be negative: the part outside is cropped) into a zero canvas of ``out_hw``.

    A point in input pixel-edge coordinates maps as ``y_out = y * rh / H + oy`` (same for x).
    """

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    offset_yx: tuple[int, int]

    @property
    def scale_yx(self) -> tuple[float, float]:
        return self.resized_hw[0] / self.in_hw[0], self.resized_hw[1] / self.in_hw[1]

    def map_point(self, y: float, x: float) -> tuple[float, float]:
        """Input (y, x) in pixel-edge coordinates -> output coordinates."""
        sy, sx = self.scale_yx
        return y * sy + self.offset_yx[0], x * sx + self.offset_yx[1]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(getattr(self, k)) for k in ("in_hw", "out_hw", "resized_hw", "offset_yx")}


def square_transform(h: int, w: int, size: int | None = None) -> FrameTransform:
    """Upstream padding: side ``S = max(h, w)``, ``top = (S - h) // 2``, ``left = (S - w) // 2``.

    With ``size`` (!= S) the image is resized by ``size / S`` first (rounded sizes) and pasted with
    the same floor-centred offsets into ``size x size``.
    """
    side = max(h, w)
    if size is None or size == side:
        return FrameTransform((h, w), (side, side), (h, w), ((side - h) // 2, (side - w) // 2))
    s = size / side
    rh, rw = max(1, round(h * s)), max(1, round(w * s))
    return FrameTransform((h, w), (size, size), (rh, rw), ((size - rh) // 2, (size - rw) // 2))


def foreground_bbox(alpha: torch.Tensor, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Inclusive bbox ``(y0, y1, x0, x1)`` of ``alpha[H, W] > threshold``; InputError when empty."""
    ys, xs = torch.nonzero(alpha > threshold, as_tuple=True)
    if ys.numel() == 0:
        raise InputError(
            "cannot recentre: the image has no foreground (alpha > 0.5 nowhere)",
            hint="use framing 'pad', or an image whose object is visible",
        )
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def recenter_transform(alpha: torch.Tensor, size: int, border_ratio: float = 0.2) -> FrameTransform:
    """threestudio framing: bbox of ``alpha > 0.5`` scaled so its long side is ``(1-border_ratio)*size``.

    ``s = (1 - border_ratio) * size / max(bh, bw)`` with inclusive bbox sizes; the resized image is
    ``round(H*s) x round(W*s)``; the offset puts the bbox centre at ``size / 2`` (rounded to a pixel).
    """
    if not 0.0 <= border_ratio < 1.0:
        raise InputError(f"border_ratio must be in [0, 1), got {border_ratio}", hint="e.g. 0.2 (threestudio)")
    H, W = alpha.shape[-2:]
    y0, y1, x0, x1 = foreground_bbox(alpha)
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    s = (1.0 - border_ratio) * size / max(bh, bw)
    rh, rw = max(1, round(H * s)), max(1, round(W * s))
    sy, sx = rh / H, rw / W
    cy, cx = (y0 + y1 + 1) / 2 * sy, (x0 + x1 + 1) / 2 * sx
    return FrameTransform((H, W), (size, size), (rh, rw), (round(size / 2 - cy), round(size / 2 - cx)))


def apply_transform(x: torch.Tensor, t: FrameTransform) -> torch.Tensor:
    """Apply ``t`` to ``x[..., H, W]`` -> ``[..., out_h, out_w]`` (zero outside the pasted image).

    Only the canvas rows/columns that receive pixels are computed, so a large upscale of a small
    object never materialises the whole enlarged image. Without resizing this is exact slicing.
    """
    if tuple(x.shape[-2:]) != tuple(t.in_hw):
        raise ValueError(f"transform expects {t.in_hw}, got {tuple(x.shape[-2:])}")
    (H, W), (oh, ow), (rh, rw), (oy, ox) = t.in_hw, t.out_hw, t.resized_hw, t.offset_yx
    out = x.new_zeros((*x.shape[:-2], oh, ow))
    dy0, dy1 = max(0, oy), min(oh, oy + rh)
    dx0, dx1 = max(0, ox), min(ow, ox + rw)
    if dy0 >= dy1 or dx0 >= dx1:
        return out
    if (rh, rw) == (H, W):
        out[..., dy0:dy1, dx0:dx1] = x[..., dy0 - oy : dy1 - oy, dx0 - ox : dx1 - ox]
        return out
    wy = resize_matrix(H, rh, dy0 - oy, dy1 - oy, dtype=x.dtype, device=x.device)
    wx = resize_matrix(W, rw, dx0 - ox, dx1 - ox, dtype=x.dtype, device=x.device)
    out[..., dy0:dy1, dx0:dx1] = wy @ x @ wx.T
    return out


def _transform_rgba(rgba: torch.Tensor, t: FrameTransform) -> torch.Tensor:
    """:func:`apply_transform` for straight-alpha RGBA: resampled premultiplied, then un-premultiplied.

    Where the resampled alpha is ~0 the straight-resampled colour is kept (so colours of fully
    transparent areas are not forced to black). Pure padding (no resize) is exact.
    """
    if tuple(t.resized_hw) == tuple(t.in_hw):
        return apply_transform(rgba, t)
    rgb, a = rgba[:3], rgba[3:4]
    rgbp = apply_transform(torch.cat([rgb * a, a]), t)
    a_r = rgbp[3:4].clamp(0, 1)
    straight = apply_transform(rgb, t)
    rgb_r = torch.where(a_r > 1e-4, rgbp[:3] / a_r.clamp(min=1e-4), straight)
    return torch.cat([rgb_r.clamp(0, 1), a_r])


def frame_rgba(rgba: torch.Tensor, t: FrameTransform) -> torch.Tensor:
    """Frame ``rgba[4, H, W]`` (straight alpha, [0, 1]) with ``t`` -> ``[4, out_h, out_w]``."""
    return _transform_rgba(rgba, t)


def pad_to_square(
    rgba: torch.Tensor, depth: torch.Tensor | None = None, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, FrameTransform]:
    """Upstream framing: ``rgba[4, H, W]`` (and ``depth[H, W]``) zero-padded to ``[4, S, S]``.

    ``S = max(H, W)``, ``top = (S - H) // 2``, ``left = (S - W) // 2`` (SPEC section 1,
    ``preprocess_image.py`` ``np.pad``); padded pixels are transparent black and depth 0. ``size``
    optionally resamples the result (not upstream). Returns ``(rgba, depth, transform)``.
    """
    t = square_transform(rgba.shape[-2], rgba.shape[-1], size)
    return frame_rgba(rgba, t), (None if depth is None else apply_transform(depth, t)), t


def recenter(
    rgba: torch.Tensor, size: int, border_ratio: float = 0.2, depth: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, FrameTransform]:
    """threestudio framing (see :func:`recenter_transform`) -> ``(rgba[4,S,S], depth[S,S]|None, t)``."""
    t = recenter_transform(rgba[3], size, border_ratio)
    return frame_rgba(rgba, t), (None if depth is None else apply_transform(depth, t)), t
