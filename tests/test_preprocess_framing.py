"""animate124.preprocess.framing: upstream padding exactness, recentring geometry, the resampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animate124.errors import InputError
from animate124.preprocess.framing import (
    FrameTransform,
    apply_transform,
    foreground_bbox,
    pad_to_square,
    recenter,
    resize,
    resize_matrix,
    resize_rgba,
    square_transform,
)


def _upstream_pad(img: np.ndarray) -> np.ndarray:
    """preprocess_image.py's padding, restated: np.pad with (S-short)//2 before, the rest after."""
    h, w = img.shape[:2]
    if h > w:
        left = (h - w) // 2
        pad = ((0, 0), (left, h - w - left))
    else:
        top = (w - h) // 2
        pad = ((top, w - h - top), (0, 0))
    pad = pad + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=0)


def test_pad_3x5_toy_exact():
    x = torch.arange(1, 16, dtype=torch.float32).view(3, 5)
    rgba = torch.stack([x, x + 100, x + 200, torch.ones(3, 5)])
    out, depth, t = pad_to_square(rgba, x * 2)
    expect = torch.zeros(4, 5, 5)
    expect[:, 1:4] = rgba  # (5 - 3) // 2 = 1 row on top, 1 below
    assert torch.equal(out, expect)
    assert torch.equal(depth, torch.cat([torch.zeros(1, 5), x * 2, torch.zeros(1, 5)]))
    assert t == FrameTransform((3, 5), (5, 5), (3, 5), (1, 0))
    assert out[3, 0].sum() == 0 and out[:3, 0].sum() == 0  # padded pixels: transparent black


@pytest.mark.parametrize("hw", [(2, 5), (5, 2), (4, 7), (7, 7), (6, 3)])
def test_pad_matches_upstream_np_pad(hw):
    h, w = hw
    rng = np.random.default_rng(0)
    img = rng.random((h, w, 4)).astype(np.float32)
    d = rng.random((h, w)).astype(np.float32)
    out, depth, t = pad_to_square(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(d))
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), _upstream_pad(img))
    np.testing.assert_array_equal(depth.numpy(), _upstream_pad(d))
    assert t.out_hw == (max(h, w),) * 2


def test_pad_with_size_resizes_then_centres():
    t = square_transform(100, 60, size=50)
    assert t == FrameTransform((100, 60), (50, 50), (50, 30), (0, 10))
    rgba = torch.ones(4, 100, 60)
    out, _, _ = pad_to_square(rgba, size=50)
    assert out.shape == (4, 50, 50)
    assert torch.allclose(out[3, :, 10:40], torch.ones(50, 30)) and out[3, :, :10].sum() == 0


def _rect_rgba(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    rgba = torch.zeros(4, h, w)
    rgba[:3] = 0.3
    rgba[:, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return rgba


def _bbox_centre_and_size(alpha: torch.Tensor) -> tuple[float, float, int, int]:
    y0, y1, x0, x1 = foreground_bbox(alpha)
    return (y0 + y1 + 1) / 2, (x0 + x1 + 1) / 2, y1 - y0 + 1, x1 - x0 + 1


def test_recenter_exact_upscale_case():
    # object 20 x 40 (H x W) off-centre in 90 x 80; size 100, border 0.2 -> long side 80 px, s = 2
    rgba = _rect_rgba(90, 80, 10, 29, 35, 74)
    depth = rgba[3] * 7
    out, dout, t = recenter(rgba, 100, border_ratio=0.2, depth=depth)
    assert t.resized_hw == (180, 160)
    cy, cx, bh, bw = _bbox_centre_and_size(out[3])
    assert (cy, cx, bh, bw) == (50.0, 50.0, 40, 80)
    assert torch.allclose(dout, out[3] * 7, atol=1e-5)  # depth got exactly the same geometry


@pytest.mark.parametrize("border", [0.0, 0.1, 0.3])
def test_recenter_downscale_margin_and_centre(border):
    rgba = _rect_rgba(300, 200, 40, 239, 20, 119)  # 200 x 100 object
    size = 128
    out, _, _ = recenter(rgba, size, border_ratio=border)
    cy, cx, bh, bw = _bbox_centre_and_size(out[3])
    assert abs(cy - size / 2) <= 1 and abs(cx - size / 2) <= 1
    assert abs(bh - (1 - border) * size) <= 1.5  # long side (height) = (1 - border) * size
    assert abs(bw - (1 - border) * size / 2) <= 1.5


def test_recenter_without_foreground_is_an_input_error():
    with pytest.raises(InputError):
        recenter(torch.zeros(4, 64, 64), 64)


def test_resize_matches_interpolate_area_for_integer_factors_and_bilinear_up():
    x = torch.rand(3, 24, 36, dtype=torch.float64)
    assert torch.allclose(
        resize(x, (8, 12)), F.interpolate(x[None], size=(8, 12), mode="area")[0], atol=1e-12
    )
    up = F.interpolate(x[None], size=(50, 80), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(resize(x, (50, 80)), up, atol=1e-12)


def test_area_matrix_fractional_weights_by_hand():
    # 3 -> 2: cell width 1.5: [1, .5, 0] / 1.5 and [0, .5, 1] / 1.5 (OpenCV INTER_AREA)
    expect = torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], dtype=torch.float64)
    assert torch.allclose(resize_matrix(3, 2), expect)
    # 5 -> 3: cell width 5/3
    w = resize_matrix(5, 3)
    assert torch.allclose(w[1], torch.tensor([0, 1 / 3, 1, 1 / 3, 0], dtype=torch.float64) * 3 / 5)
    assert torch.allclose(resize_matrix(1000, 192).sum(1), torch.ones(192, dtype=torch.float64))


def test_apply_transform_windowed_equals_full_resize_then_crop():
    x = torch.rand(2, 30, 40, dtype=torch.float64)
    t = FrameTransform((30, 40), (32, 32), (45, 60), (-5, -9))  # partly outside -> cropped
    full = resize(x, (45, 60))
    assert torch.allclose(apply_transform(x, t), full[:, 5:37, 9:41], atol=1e-12)
    t2 = FrameTransform((30, 40), (32, 32), (15, 20), (20, 25))  # partly beyond bottom-right
    out = apply_transform(x, t2)
    assert torch.allclose(out[:, 20:, 25:], resize(x, (15, 20))[:, :12, :7], atol=1e-12)
    assert out[:, :20].abs().sum() == 0 and out[:, :, :25].abs().sum() == 0


def test_resize_rgba_is_premultiplied_no_colour_bleed():
    rgba = torch.zeros(4, 8, 8)
    rgba[0, :, :4] = 1.0  # opaque red left half
    rgba[3, :, :4] = 1.0
    rgba[1, :, 4:] = 1.0  # transparent green right half (alpha 0)
    out = resize_rgba(rgba, (4, 3))  # 8 -> 3 columns: middle column straddles the edge
    mid = out[:, :, 1]
    assert torch.allclose(mid[3], torch.full((4,), 0.5), atol=1e-6)  # alpha averages
    assert torch.allclose(mid[:3].T, torch.tensor([1.0, 0.0, 0.0]).expand(4, 3), atol=1e-6)  # no green


def test_pad_offsets_match_upstream_shipped_space_shuttle(shared_data):
    """space-shuttle/image.jpg is 797x788; upstream's rgba.png has zero rows 0-3 and 792-796."""
    from PIL import Image

    d = shared_data / "animate124" / "space-shuttle"
    if not (d / "rgba.png").exists():
        pytest.skip("space-shuttle example absent")
    w, h = Image.open(d / "image.jpg").size
    up = np.asarray(Image.open(d / "rgba.png"))
    zero_rows = np.nonzero((up.reshape(up.shape[0], -1) == 0).all(1))[0].tolist()
    t = square_transform(h, w)
    oy = t.offset_yx[0]
    assert t.out_hw == up.shape[:2]
    assert zero_rows == list(range(oy)) + list(range(oy + h, t.out_hw[0]))
