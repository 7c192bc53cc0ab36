"""animate124.preprocess.image_io: odd files, modes, EXIF orientation and clear input errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from animate124.errors import InputError
from animate124.preprocess.image_io import has_alpha, load_image


def _rgb(h: int = 80, w: int = 100) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)


def test_rgb_jpeg(tmp_path):
    p = tmp_path / "a.jpg"
    Image.fromarray(_rgb()).save(p, quality=95)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (100, 80)
    assert not has_alpha(img)
    assert np.abs(np.asarray(img).astype(int) - _rgb()).mean() < 3  # lossy, but the same picture


def test_rgba_png_and_has_alpha(tmp_path):
    arr = np.dstack([_rgb(), np.full((80, 100), 255, np.uint8)])
    p = tmp_path / "opaque.png"
    Image.fromarray(arr, "RGBA").save(p)
    img = load_image(p)
    assert img.mode == "RGBA" and not has_alpha(img)  # all-255 alpha is trivial
    arr[10:20, 10:20, 3] = 0
    Image.fromarray(arr, "RGBA").save(p)
    img = load_image(p)
    assert has_alpha(img)
    np.testing.assert_array_equal(np.asarray(img), arr)  # lossless, untouched


def test_grey_l_and_la(tmp_path):
    g = _rgb()[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    img = load_image(tmp_path / "l.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), np.repeat(g[..., None], 3, -1))
    a = np.full_like(g, 255)
    a[:5] = 0
    Image.fromarray(np.dstack([g, a]), "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img.mode == "RGBA" and has_alpha(img)
    out = np.asarray(img)
    np.testing.assert_array_equal(out[..., 3], a)
    np.testing.assert_array_equal(out[5:, :, 0], g[5:])


def test_palette_with_transparency(tmp_path):
    idx = np.zeros((70, 70), np.uint8)
    idx[20:50, 20:50] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    p = tmp_path / "p.png"
    im.save(p, transparency=0)
    img = load_image(p)
    assert img.mode == "RGBA" and has_alpha(img)
    out = np.asarray(img)
    assert (out[idx == 0, 3] == 0).all() and (out[idx == 1, 3] == 255).all()
    assert (out[idx == 1, :3] == [255, 0, 0]).all()
    # a palette image without transparency is plain RGB
    im.save(tmp_path / "p2.png")
    assert load_image(tmp_path / "p2.png").mode == "RGB"


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    vals = np.array([0, 257 * 100, 65535, 257 * 7 + 100], dtype=np.uint16)
    arr = np.tile(np.repeat(vals, 20)[None], (70, 1))  # 70 x 80
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")  # the file really is 16-bit
    img = load_image(p)
    assert img.mode == "RGB"
    row = np.asarray(img)[0, ::20, 0]
    expect = np.rint(vals.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(row, expect)
    assert list(expect) == [0, 100, 255, 7]  # 257*7+100 = 1899 -> 7.39 -> 7


def test_webp_rgb_and_rgba(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.webp", lossless=True)
    img = load_image(tmp_path / "a.webp")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), _rgb())
    arr = np.dstack([_rgb(), np.full((80, 100), 255, np.uint8)])
    arr[:, :30, 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "b.webp", lossless=True)
    img = load_image(tmp_path / "b.webp")
    assert img.mode == "RGBA" and has_alpha(img)
    np.testing.assert_array_equal(np.asarray(img)[..., 3], arr[..., 3])


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(p, quality=100)  # pure red in CMYK
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    img = load_image(p)
    assert img.mode == "RGB"
    mean = np.asarray(img).reshape(-1, 3).mean(0)
    assert mean[0] > 240 and mean[1] < 15 and mean[2] < 15


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((70, 100, 3), np.uint8)  # stored landscape, H=70, W=100
    arr[:10, :10] = [255, 0, 0]  # red marker at the stored top-left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.size == (70, 100)  # W x H: transposed
    out = np.asarray(img).astype(int)
    # 90 deg clockwise: the stored top-left goes to the displayed top-right
    assert out[:10, -10:, 0].mean() > 200 and out[:10, -10:, 1].mean() < 50
    assert out[:10, :10, 0].mean() < 50


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: d, "directory"),
        (lambda d: (d / "t.png").write_text("hello, not an image") and d / "t.png", "not an image"),
        (lambda d: (d / "e.png").write_bytes(b"") == 0 and d / "e.png", "empty"),
    ],
)
def test_bad_paths_raise_input_error(tmp_path, make, needle):
    with pytest.raises(InputError) as ei:
        load_image(make(tmp_path))
    assert needle in ei.value.message and ei.value.hint


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    p = tmp_path / f"x.{fmt.lower()}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        load_image(p)
    assert "truncated" in ei.value.message and ei.value.hint


def test_too_small_and_configurable(tmp_path):
    p = tmp_path / "small.png"
    Image.fromarray(_rgb(40, 200)).save(p)
    with pytest.raises(InputError) as ei:
        load_image(p)
    assert "too small" in ei.value.message and "40" in ei.value.message
    assert load_image(p, min_side=32).size == (200, 40)


def test_large_image_is_downscaled_with_warning(tmp_path, caplog):
    p = tmp_path / "big.png"
    Image.fromarray(_rgb(200, 300)).save(p)
    with caplog.at_level(logging.WARNING, logger="animate124.preprocess.image_io"):
        img = load_image(p, max_side=128)
    assert img.size == (128, 85)  # 200 * 128 / 300 = 85.33
    assert any("downscaling" in r.message for r in caplog.records)
    assert load_image(p, max_side=None).size == (300, 200)


def test_real_data_png_named_jpg(shared_data):
    """astronaut-horse/image.jpg is really an RGBA PNG: content decides, not the extension."""
    p = shared_data / "animate124" / "astronaut-horse" / "image.jpg"
    if not p.exists():
        pytest.skip("astronaut-horse example absent")
    img = load_image(p)
    assert img.mode in ("RGB", "RGBA") and img.size == (600, 600)
