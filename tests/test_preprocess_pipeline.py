"""animate124.preprocess.pipeline end to end with the tiny model factory, and load_reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animate124.errors import ConfigError, InputError
from animate124.preprocess.framing import foreground_bbox
from animate124.preprocess.pipeline import OutputPaths, load_reference, pil_to_tensor, preprocess_image


def _outs(d):
    """The four output paths in ``d`` (the project names them in real runs)."""
    return OutputPaths(
        rgba=d / "rgba.png", depth=d / "depth.png", depth_npy=d / "depth.npy", preview=d / "preview.png"
    )


class _Boom:
    """Stands in for a model that must not be touched."""

    def __getattr__(self, name):
        raise AssertionError(f"model used unexpectedly ({name})")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from animate124.models.store import ModelStore
    from animate124.models.testing import tiny_cache

    return ModelStore(cache_dir=tiny_cache(tmp_path_factory.mktemp("tiny-cache")), offline=True)


@pytest.fixture(scope="module")
def depth_model(store):
    from animate124.models.loaders import load_depth

    return load_depth(store)


@pytest.fixture(scope="module")
def matting_models(store):
    from animate124.models.loaders import load_matting

    return load_matting(store)


def _disc_rgba(
    h: int = 64, w: int = 96, cy: float = 30, cx: float = 40, r: float = 18, rim: bool = True
) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = xx * 255 // (w - 1)
    rgba[..., 1] = yy * 255 // (h - 1)
    rgba[..., 2] = 60
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    rgba[..., 3] = np.where(inside, 255, 0)
    if rim:
        rgba[inside & ((yy - cy) ** 2 + (xx - cx) ** 2 > (r - 2) ** 2), 3] = 128  # soft rim
    return rgba


def _upstream_pad(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = max(h, w)
    pad = [((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2)]
    return np.pad(img, pad + [(0, 0)] * (img.ndim - 2))


def _check_outputs(res, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgba = Image.open(res.rgba_path)
    depth = Image.open(res.depth_path)
    assert rgba.mode == "RGBA" and rgba.size == (side, side)
    assert depth.mode == "L" and depth.size == (side, side)
    npy = np.load(res.depth_npy_path)
    assert npy.dtype == np.float32 and npy.shape == (side, side)
    assert npy.min() >= 0 and npy.max() <= 1
    d8 = np.asarray(depth)
    np.testing.assert_array_equal(d8, np.floor(npy * 255).astype(np.uint8))  # upstream truncation
    a = np.asarray(rgba)[..., 3]
    assert (npy[a == 0] == 0).all() and (d8[a == 0] == 0).all()  # 0 outside the mask
    prev = Image.open(res.preview_path)
    assert prev.size == (3 * min(side, 512), min(side, 512))
    leftovers = [p.name for p in res.rgba_path.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []  # atomic writes cleaned up
    return np.asarray(rgba), d8, npy


def test_rgba_input_pad_exact_and_no_matting(tmp_path, depth_model):
    src = _disc_rgba()
    Image.fromarray(src, "RGBA").save(tmp_path / "in.png")
    res = preprocess_image(
        tmp_path / "in.png",
        _outs(tmp_path / "out"),
        store=None,
        depth_model=depth_model,
        matting_models=_Boom(),
    )
    rgba, _, npy = _check_outputs(res, 96)
    np.testing.assert_array_equal(rgba, _upstream_pad(src))  # exactly upstream's padding, alpha untouched
    assert not res.matting_ran and res.segment_query is None
    assert res.input_size == (96, 64) and res.output_size == 96
    inside = rgba[..., 3] > 0
    assert npy[inside].min() == 0 and npy[inside].max() == 1  # min-max inside the mask
    assert res.foreground_fraction == pytest.approx((src[..., 3] > 127).mean())
    assert set(res.timings) >= {"load", "matting", "depth", "framing", "write", "total"}


def test_rgba_input_loads_only_depth_through_store(tmp_path, store, monkeypatch):
    import animate124.models.loaders as loaders

    def no_matting(*a, **k):
        raise AssertionError("matting models must not be loaded for an RGBA input")

    monkeypatch.setattr(loaders, "load_matting", no_matting)
    Image.fromarray(_disc_rgba(), "RGBA").save(tmp_path / "in.png")
    res = preprocess_image(tmp_path / "in.png", _outs(tmp_path / "out"), store=store, size=80)
    _check_outputs(res, 80)


def test_jpeg_runs_matting_plumbing(tmp_path, store, shared_data, matting_models):
    from animate124.preprocess.matting import segment_probability

    src = shared_data / "animate124" / "panda-dance" / "image.jpg"
    if not src.exists():
        pytest.skip("panda-dance example absent")
    img = Image.open(src).convert("RGB").resize((160, 128), Image.Resampling.LANCZOS)
    img.save(tmp_path / "photo.jpg", quality=95)
    # random tiny weights: pick the threshold at the median probability so fg, bg and band all exist
    prob = segment_probability(
        matting_models.segmenter, matting_models.segmenter_processor_or_tokenizer, pil_to_tensor(img),
        "a panda", image_size=matting_models.segmenter_image_size,
    )  # fmt: skip
    thr = float(prob.median())
    res = preprocess_image(
        tmp_path / "photo.jpg", _outs(tmp_path / "out"), store=store, segment_query="a panda",
        matting_options={"threshold": thr, "erode_fraction": 0.02, "dilate_fraction": 0.04},
    )  # fmt: skip
    rgba, _, _ = _check_outputs(res, 160)
    assert res.matting_ran and res.segment_query == "a panda"
    a = rgba[16:144, :, 3]  # the photo area (padding rows 0..15 and 144..159 are transparent)
    assert (rgba[:16, :, 3] == 0).all() and (rgba[144:, :, 3] == 0).all()
    assert (a == 255).any() and (a == 0).any()  # definite fg and bg from the trimap
    assert 0.0 < res.foreground_fraction < 1.0


def test_real_size_rgba_png_roundtrip(tmp_path, shared_data, depth_model):
    """Upstream's own rgba.png (already square) passes through pad framing unchanged."""
    src = shared_data / "animate124" / "panda-dance" / "rgba.png"
    if not src.exists():
        pytest.skip("panda-dance example absent")
    res = preprocess_image(src, _outs(tmp_path / "out"), depth_model=depth_model, matting_models=_Boom())
    rgba, d8, _ = _check_outputs(res, 1024)
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(src).convert("RGBA")))
    assert ((d8 > 0) <= (rgba[..., 3] > 0)).all()


def test_fully_transparent_rgba_is_rejected_before_depth(tmp_path):
    arr = _disc_rgba()
    arr[..., 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "empty.png")
    with pytest.raises(InputError) as ei:
        preprocess_image(
            tmp_path / "empty.png", _outs(tmp_path / "out"), depth_model=_Boom(), matting_models=_Boom()
        )
    assert "no foreground" in ei.value.message and "alpha" in ei.value.hint
    assert not (tmp_path / "out").exists()  # a rejected input leaves nothing behind


def test_matting_that_finds_nothing_is_rejected(tmp_path, matting_models):
    Image.fromarray(_disc_rgba()[..., :3]).save(tmp_path / "photo.png")
    with pytest.raises(InputError) as ei:
        preprocess_image(
            tmp_path / "photo.png", _outs(tmp_path / "out"), depth_model=_Boom(), matting_models=matting_models,
            segment_query="a unicorn", matting_options={"threshold": 1.0},  # sigmoid never exceeds 1
        )  # fmt: skip
    assert "no foreground" in ei.value.message and "a unicorn" in ei.value.hint


def test_recenter_framing_end_to_end(tmp_path, depth_model):
    Image.fromarray(_disc_rgba(h=120, w=80, cy=30, cx=25, r=15, rim=False), "RGBA").save(tmp_path / "in.png")
    res = preprocess_image(
        tmp_path / "in.png", _outs(tmp_path / "out"), framing="recenter", size=64, border_ratio=0.2,
        depth_model=depth_model, matting_models=_Boom(),
    )  # fmt: skip
    rgba, _, _ = _check_outputs(res, 64)
    y0, y1, x0, x1 = foreground_bbox(torch.from_numpy(rgba[..., 3].astype(np.float32) / 255))
    assert abs((y0 + y1 + 1) / 2 - 32) <= 1 and abs((x0 + x1 + 1) / 2 - 32) <= 1
    assert abs(max(y1 - y0 + 1, x1 - x0 + 1) - 0.8 * 64) <= 1.5


def test_bad_framing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        preprocess_image(tmp_path / "x.png", _outs(tmp_path / "out"), framing="crop")


# ------------------------------------------------------------------------------------------------
# load_reference
# ------------------------------------------------------------------------------------------------
def test_load_reference_by_hand(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0:2, 0:2, 0] = [[200, 200], [100, 100]]  # TL block: R mean 150
    rgba[0:2, 0:2, 1] = 10
    rgba[0:2, 0:2, 3] = 255
    rgba[0:2, 2:4, :3] = (40, 80, 120)
    rgba[0:2, 2:4, 3] = [[255, 255], [255, 0]]  # TR alpha mean 191.25 -> 191
    rgba[2, 2, 3] = 255  # BR alpha mean 63.75 -> 64
    depth = np.zeros((4, 4), np.uint8)
    depth[0:2, 0:2] = 200
    depth[0:2, 2:4] = 100
    depth[2, 2] = 255  # BR mean 63.75 -> 64
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(depth, "L").save(tmp_path / "depth.png")

    ref = load_reference(tmp_path, size=2, zero123_size=4)
    a_tr = 191 / 255
    expect_rgb = torch.tensor(
        [
            [[150 / 255, 40 / 255 * a_tr + 1 - a_tr], [1.0, 1.0 - 64 / 255 + 0.0]],
            [[10 / 255, 80 / 255 * a_tr + 1 - a_tr], [1.0, 1.0 - 64 / 255]],
            [[0.0, 120 / 255 * a_tr + 1 - a_tr], [1.0, 1.0 - 64 / 255]],
        ]
    )
    assert torch.allclose(ref["rgb"], expect_rgb, atol=1e-6)
    assert torch.allclose(ref["alpha"], torch.tensor([[[1.0, a_tr], [0.0, 64 / 255]]]), atol=1e-6)
    assert ref["mask"].tolist() == [[[True, True], [False, False]]]
    assert torch.equal(ref["opacity"], ref["mask"].float())
    # gt = 1 - d/255: TL 55/255, TR 155/255, BL 1, BR 191/255; min nonzero in mask 55/255; max (whole) 1
    expect_depth = torch.tensor([[[0.0, 100 / 255], [200 / 255, 136 / 255]]])
    assert torch.allclose(ref["depth"], expect_depth, atol=1e-6)
    assert torch.allclose(ref["depth_masked"], torch.tensor([0.0, 100 / 255]), atol=1e-6)
    z = ref["zero123_rgb"]  # 4 -> 4: plain white composite of the original pixels
    assert z.shape == (3, 4, 4)
    assert torch.allclose(z[:, 1, 3], torch.ones(3)) and torch.allclose(
        z[:, 0, 0], torch.tensor([200, 10, 0]) / 255
    )
    # without normalisation the raw gt comes back
    raw = load_reference((tmp_path / "rgba.png", tmp_path / "depth.png"), size=2, normalize_depth=False)
    assert torch.allclose(raw["depth"], torch.tensor([[[55 / 255, 155 / 255], [1.0, 191 / 255]]]), atol=1e-6)


def test_load_reference_real_data(shared_data):
    d = shared_data / "animate124" / "panda-dance"
    if not (d / "rgba.png").exists():
        pytest.skip("panda-dance example absent")
    ref = load_reference(d)
    assert ref["rgb"].shape == (3, 192, 192) and ref["zero123_rgb"].shape == (3, 256, 256)
    m = ref["mask"]
    assert m.shape == (1, 192, 192) and 0.05 < m.float().mean() < 0.5
    assert ref["depth_masked"].shape == (int(m.sum()),)
    assert ref["depth_masked"].min() >= 0 and ref["depth_masked"].max() <= 1
    assert torch.isfinite(ref["rgb"]).all() and ref["rgb"].min() >= 0 and ref["rgb"].max() <= 1
    corner = ref["rgb"][:, 0, 0]
    assert torch.allclose(corner, torch.ones(3), atol=1e-6)  # transparent corner -> white
    only_rgba = load_reference(d / "rgba.png")  # depth found by name substitution, as upstream
    assert torch.equal(only_rgba["depth"], ref["depth"])
    with pytest.raises(InputError):
        load_reference(d / "missing-rgba.png")
