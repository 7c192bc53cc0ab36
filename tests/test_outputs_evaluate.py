"""`animate124 evaluate`: PSNR/SSIM against hand values, CLIP metrics on constructed cases (tiny CLIP), the stage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_outputs import trained_project

from animate124.render import metrics as M
from animate124.stages.evaluate import METRIC_NAMES, run_evaluate_stage
from animate124.stages.outputs import project_config

EVAL = {"evaluate": {"size": 32, "frames": 4, "views": 2, "ref_size": 48}}


# ------------------------------------------------------------------------------------------ PSNR / SSIM
def test_psnr_hand_values_and_mask():
    a = torch.full((3, 8, 8), 0.5)
    b = torch.full((3, 8, 8), 0.6)
    assert M.psnr(a, b) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert M.psnr(a, a) == 100.0  # identical: capped, finite
    c = b.clone()
    c[:, :4] = 0.0  # a huge error, but outside the mask
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:] = True
    assert M.psnr(a, c, mask) == pytest.approx(20.0, abs=1e-4)
    assert M.psnr(a, c) < 10
    with pytest.raises(ValueError, match="empty"):
        M.psnr(a, b, torch.zeros(8, 8, dtype=torch.bool))


def test_ssim_hand_values():
    a = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    # constant images: no variance, SSIM = (2·μa·μb + C1) / (μa² + μb² + C1)
    c1 = 0.01**2
    x, y = torch.full((1, 12, 12), 0.2), torch.full((1, 12, 12), 0.4)
    assert M.ssim(x, y) == pytest.approx((2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1), abs=1e-5)
    # a contrast-inverted copy has negative structure correlation
    assert M.ssim(a, 1 - a) < 0.0
    # masked: only the unchanged half counts
    b = a.clone()
    b[:, :8] = torch.rand(3, 8, 16)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[13:] = True  # rows whose 11x11 window misses the changed rows 0-7
    assert M.ssim(a, b, mask) == pytest.approx(1.0, abs=1e-4) and M.ssim(a, b) < 0.8


# ------------------------------------------------------------------------------------------ CLIP
@pytest.fixture(scope="module")
def clip():
    from animate124.config import resolve_config
    from animate124.engine.runtime import model_store
    from animate124.models.loaders import load_clip

    return load_clip(model_store(resolve_config("tiny")), "cpu")


def _moving_disc(frames: int = 12, size: int = 64) -> torch.Tensor:
    """A white frame with a dark disc that crosses it from left to right, ``[T, 3, H, W]``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.ones(frames, 3, size, size)
    for k in range(frames):
        cx = 8 + (size - 16) * k / (frames - 1)
        disc = ((xx - cx) ** 2 + (yy - size / 2) ** 2) < 10**2
        out[k, :, disc] = torch.tensor([0.1, 0.2, 0.7])[:, None]
    return out


def test_clip_similarity_of_identical_images_is_one(clip):
    model, tok = clip
    video = _moving_disc()
    e = M.clip_image_embeddings(model, video)
    assert e.shape[0] == 12 and torch.allclose(e.norm(dim=-1), torch.ones(12), atol=1e-5)
    assert M.clip_similarity(e, e) == pytest.approx(1.0, abs=1e-5)
    assert M.temporal_consistency(e[:1].expand(5, -1)) == pytest.approx(1.0, abs=1e-5)
    t = M.clip_text_embeddings(model, tok, ["a ball is rolling", "a ball is rolling"])
    assert M.clip_similarity(t[:1], t[1:]) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= M.clip_similarity(e, t[:1]) <= 1.0


def _cross_fade(frames: int = 12, size: int = 64) -> torch.Tensor:
    """A video that fades from one random image to another, ``[T, 3, H, W]``: neighbours are alike."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, size, size, generator=g), torch.rand(3, size, size, generator=g)
    w = torch.linspace(0, 1, frames)[:, None, None, None]
    return (1 - w) * a + w * b


def test_temporal_consistency_on_constructed_embeddings():
    angles = torch.linspace(0, 1.5, 8)  # unit vectors turning by 1.5/7 rad per frame
    e = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    assert M.temporal_consistency(e) == pytest.approx(math.cos(1.5 / 7), abs=1e-6)


def test_shuffled_video_has_lower_temporal_consistency(clip):
    model, _ = clip
    e = M.clip_image_embeddings(model, _cross_fade())
    perm = torch.tensor([0, 11, 1, 10, 2, 9, 3, 8, 4, 7, 5, 6])  # every step jumps across the fade
    ordered, shuffled = M.temporal_consistency(e), M.temporal_consistency(e[perm])
    assert shuffled < ordered
    # several clips [V, T, D] average per clip
    both = M.temporal_consistency(torch.stack([e, e[perm]]))
    assert both == pytest.approx((ordered + shuffled) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="2 frames"):
        M.temporal_consistency(e[:1])


# ------------------------------------------------------------------------------------------ the stage
def test_stage_writes_metrics_json_and_the_manifest(tmp_path):
    project = trained_project(tmp_path, ("static", "dynamic"))
    cfg = project_config(project, "dynamic", options=EVAL)
    res = run_evaluate_stage(project, cfg, show_progress=False)
    data = json.loads(project.artifact("metrics").read_text())
    assert set(METRIC_NAMES) <= set(data)
    assert data["stage"] == "dynamic" and data["prompt"] == "a toy is bouncing"
    assert data["clip_model"].startswith("openai/clip-vit-large-patch14") and "tiny" in data["clip_model"]
    assert data["frames"] == 4 and data["views"] == 2
    for k in METRIC_NAMES:
        assert math.isfinite(data[k])
    assert (
        -1 <= data["clip_i"] <= 1 and -1 <= data["clip_t"] <= 1 and data["temporal_consistency"] <= 1 + 1e-6
    )
    assert 0 < data["psnr_masked"] <= 100 and -1 <= data["ssim_masked"] <= 1
    rec = project.stage_record("evaluate")
    assert rec["status"] == "done" and rec["metrics"]["clip_i"] == data["clip_i"] == res.metrics["clip_i"]


def test_reference_view_render_of_the_input_itself_scores_near_perfect(tmp_path):
    """Make the project's input the reference-view render of its own field: the masked PSNR/SSIM must
    then be near perfect, which checks the reference camera, the mask and the compositing end to end."""
    import imageio.v3 as iio

    from animate124.render.cameras import reference_camera
    from animate124.render.outputs import RenderSettings, render_frame
    from animate124.stages.artifacts import load_trained

    project = trained_project(tmp_path, ("static",))
    cfg = project_config(project, "static", options=EVAL)
    tf = load_trained(project.artifact("static_model"), "cpu")
    size = cfg.evaluate.ref_size
    cam = reference_camera(size, size, cfg.camera.radius, cfg.camera.fovy)
    s = RenderSettings(size=size, max_steps=cfg.raymarch.max_steps)
    with torch.no_grad():
        f = render_frame(tf.field, tf.occupancy, cam, None, s, normals=False)
    a = f.opacity.clamp(0, 1)
    straight = torch.where(a > 1e-4, f.color / a.clamp_min(1e-4), torch.zeros_like(f.color)).clamp(0, 1)
    rgba = torch.cat([straight, a[None]]).permute(1, 2, 0)
    iio.imwrite(project.rgba, (rgba.numpy() * 255 + 0.5).astype("uint8"))
    res = run_evaluate_stage(project, cfg, stage="static", show_progress=False)
    assert res.metrics["psnr_masked"] > 35 and res.metrics["ssim_masked"] > 0.97
    assert res.metrics["psnr"] > 35 and res.metrics["ssim"] > 0.97


def test_static_stage_is_temporally_constant_and_prompt_override(tmp_path):
    project = trained_project(tmp_path, ("static",))
    cfg = project_config(project, "static", options=EVAL)
    res = run_evaluate_stage(project, cfg, stage="static", prompt="a red ball", show_progress=False)
    assert res.metrics["temporal_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert res.metrics["prompt"] == "a red ball" and res.metrics["frames"] == 1


def test_clip_model_override_is_named(tmp_path):
    from animate124.config import resolve_config
    from animate124.engine.runtime import model_store

    local = model_store(resolve_config("tiny")).resolve("clip")
    project = trained_project(tmp_path, ("static", "dynamic"))
    cfg = project_config(project, "dynamic", options={**EVAL, "models": {"clip": str(local)}})
    res = run_evaluate_stage(project, cfg, show_progress=False)
    assert str(local) in res.metrics["clip_model"]


def test_empty_prompts_are_an_error_before_any_work(tmp_path):
    from animate124.errors import ConfigError

    project = trained_project(tmp_path, ("static",))
    cfg = project_config(
        project, "static", options={**EVAL, "static": {"prompt": ""}, "dynamic": {"prompt": ""}}
    )
    with pytest.raises(ConfigError, match="no prompt"):
        run_evaluate_stage(project, cfg, show_progress=False)
    assert "evaluate" not in project.read_manifest()["stages"]
