"""Image/video writing (SPEC §7, §11.7: no min-max stretching by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animate124.render.video import (
    VideoError,
    depth_to_image,
    make_grid,
    save_frames,
    save_image,
    save_video,
    to_uint8,
)


def test_to_uint8_does_not_stretch():
    img = torch.full((3, 4, 5), 0.25)
    img[:, 0, 0] = 0.5
    arr = to_uint8(img)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8
    assert arr[1, 1, 0] == 64 and arr[0, 0, 0] == 128  # round(0.25·255), round(0.5·255)
    stretched = to_uint8(img, normalize=True)
    assert stretched[1, 1, 0] == 0 and stretched[0, 0, 0] == 255
    assert to_uint8(torch.tensor([[2.0, -1.0]])).tolist() == [[255, 0]]  # clamped
    assert to_uint8(torch.zeros(1, 4, 6)).shape == (4, 6)


def test_png_roundtrip(tmp_path):
    import imageio.v3 as iio

    img = torch.rand(3, 7, 9)
    p = save_image(tmp_path / "a" / "x.png", img)
    back = iio.imread(p)
    assert np.array_equal(back, to_uint8(img))
    save_image(tmp_path / "x.jpg", img)
    assert (tmp_path / "x.jpg").stat().st_size > 0
    files = save_frames(tmp_path / "frames", torch.rand(3, 3, 4, 4))
    assert [f.name for f in files] == ["0000.png", "0001.png", "0002.png"]


def test_make_grid_layout():
    imgs = torch.stack([torch.full((3, 2, 2), float(k) / 10) for k in range(5)])
    g = make_grid(imgs, nrow=2, padding=1, pad_value=1.0)
    assert g.shape == (3, 3 * 3 + 1, 2 * 3 + 1)
    assert g[0, 1, 1].item() == 0.0 and g[0, 1, 4].item() == pytest.approx(0.1)
    assert g[0, 7, 1].item() == pytest.approx(0.4) and g[0, 7, 4].item() == 1.0  # empty slot = padding


def test_depth_nonzero_normalization():
    d = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    out = depth_to_image(d)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.5, 1.0]]))
    assert depth_to_image(torch.zeros(2, 2)).sum() == 0


def test_mp4_even_size_and_gif(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio

    frames = torch.rand(4, 3, 15, 17)  # odd sizes: padded to 16x18 for yuv420p
    p = save_video(tmp_path / "v.mp4", frames, fps=8)
    assert p.stat().st_size > 0
    import imageio.v2 as iio2

    reader = iio2.get_reader(str(p))
    first = reader.get_data(0)
    n = reader.count_frames()
    reader.close()
    assert first.shape == (16, 18, 3) and n == 4
    g = save_video(tmp_path / "v.gif", frames[:, :, :8, :8], fps=5)
    assert iio.imread(g).shape[0] == 4
    with pytest.raises(VideoError):
        save_video(tmp_path / "v.avi", frames)


def test_mp4_without_the_ffmpeg_backend_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """Without imageio-ffmpeg, imageio hands .mp4 to tifffile ("unexpected keyword argument 'fps'", seen on
    a GPU machine): say what is missing instead."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "imageio_ffmpeg" else real(n, *a)
    )
    with pytest.raises(VideoError, match="imageio-ffmpeg"):
        save_video(tmp_path / "v.mp4", torch.rand(2, 3, 8, 8))
