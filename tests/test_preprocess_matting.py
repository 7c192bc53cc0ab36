"""animate124.preprocess.matting: morphology, trimap, model input plumbing, background removal."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from animate124.preprocess.matting import (
    dilate,
    erode,
    make_trimap,
    refine_alpha,
    remove_background,
    segment_probability,
)


def test_dilate_erode_by_hand():
    m = torch.zeros(7, 7, dtype=torch.bool)
    m[3, 3] = True
    d = dilate(m, 1)
    assert d.sum() == 9 and d[2:5, 2:5].all()
    assert dilate(m, 2).sum() == 25
    sq = torch.zeros(9, 9, dtype=torch.bool)
    sq[2:7, 2:7] = True
    e = erode(sq, 1)
    assert e.sum() == 9 and e[3:6, 3:6].all()
    assert erode(sq, 3).sum() == 0
    # the image border counts as foreground for erosion: an object touching the frame keeps its edge
    full = torch.ones(6, 6, dtype=torch.bool)
    assert erode(full, 2).all()


def test_make_trimap_geometry():
    prob = torch.zeros(100, 100)
    prob[30:70, 30:70] = 0.9
    tri = make_trimap(prob, threshold=0.5, erode_fraction=0.05, dilate_fraction=0.1)  # r_e = 5, r_d = 10
    fg = torch.zeros(100, 100, dtype=torch.bool)
    fg[35:65, 35:65] = True
    unknown_or_fg = torch.zeros(100, 100, dtype=torch.bool)
    unknown_or_fg[20:80, 20:80] = True
    assert torch.equal(tri == 1, fg)
    assert torch.equal(tri > 0, unknown_or_fg)
    assert set(tri.unique().tolist()) == {0.0, 0.5, 1.0}
    assert (make_trimap(torch.zeros(20, 20)) == 0).all()  # empty mask -> all background


class _FakeSeg(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.value = value
        self.calls: list[dict] = []

    def forward(self, pixel_values, input_ids, attention_mask=None):
        self.calls.append({"pixel_values": pixel_values, "input_ids": input_ids})
        h, w = pixel_values.shape[-2:]
        logits = torch.full((pixel_values.shape[0], h, w), -20.0)
        if self.value > 0:  # a centred square of "object"
            logits[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = self.value
        return SimpleNamespace(logits=logits)


class _FakeTok:
    def __call__(self, texts, **kw):
        ids = torch.tensor([[1] + [len(t) for t in texts] + [2]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class _FakeMatte(torch.nn.Module):
    """Returns the trimap channel as alpha (0.5 in the unknown band); records its input."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, pixel_values):
        self.seen = pixel_values
        return SimpleNamespace(alphas=pixel_values[:, 3:4] * 0.9)


def test_segment_probability_preprocessing():
    seg = _FakeSeg(20.0)
    rgb = torch.rand(3, 90, 120)
    proc = SimpleNamespace(
        tokenizer=_FakeTok(), image_processor=SimpleNamespace(size={"height": 48, "width": 48}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    )  # fmt: skip
    prob = segment_probability(seg, proc, rgb, "a panda")
    px = seg.calls[0]["pixel_values"]
    assert px.shape == (1, 3, 48, 48)
    assert px.min() >= (0 - 0.5) / 0.25 - 1e-5 and px.max() <= (1 - 0.5) / 0.25 + 1e-5
    assert seg.calls[0]["input_ids"].tolist() == [[1, 7, 2]]  # the query reached the tokenizer
    assert prob.shape == (90, 120) and prob.min() >= 0 and prob.max() <= 1
    assert prob[45, 60] > 0.99 and prob[2, 2] < 1e-6
    # a bare tokenizer + explicit size (the MattingModels fields) works too
    segment_probability(seg, _FakeTok(), rgb, "x", image_size=32, mean=(0.4,) * 3, std=(0.2,) * 3)
    assert seg.calls[1]["pixel_values"].shape == (1, 3, 32, 32)


def test_refine_alpha_pads_to_32_and_crops_back():
    matte = _FakeMatte()
    rgb = torch.rand(3, 50, 70)
    tri = torch.zeros(50, 70)
    tri[10:40, 10:60] = 0.5
    tri[20:30, 20:50] = 1.0
    alpha = refine_alpha(matte, rgb, tri)
    assert matte.seen.shape == (1, 4, 64, 96)
    assert torch.allclose(matte.seen[0, :3, :50, :70], (rgb - 0.5) / 0.5, atol=1e-6)
    assert matte.seen[0, :, 50:].abs().sum() == 0 and matte.seen[0, :, :, 70:].abs().sum() == 0
    assert torch.allclose(alpha, tri * 0.9)


def _models(value: float):
    return SimpleNamespace(
        segmenter=_FakeSeg(value), segmenter_processor_or_tokenizer=_FakeTok(), matte=_FakeMatte()
    )


def test_remove_background_forces_definite_regions_and_upsamples():
    rgb = torch.rand(3, 120, 160)
    models = _models(20.0)
    res = remove_background(models, rgb, max_side=80)  # works at 60 x 80, returns 120 x 160
    assert res.matte_ran and models.matte.seen.shape[-2:] == (64, 96)
    assert res.alpha.shape == (120, 160) and res.trimap.shape == (120, 160)
    assert res.alpha.min() >= 0 and res.alpha.max() <= 1
    assert res.alpha[60, 80] == 1.0 and res.alpha[0, 0] == 0.0  # definite fg / bg forced
    band = (res.alpha > 0.05) & (res.alpha < 0.95)
    assert band.any()  # the unknown band kept the matte's soft values


def test_remove_background_empty_mask_skips_matte():
    models = _models(0.0)
    res = remove_background(models, torch.rand(3, 64, 64))
    assert not res.matte_ran and models.matte.seen is None
    assert (res.alpha == 0).all()
