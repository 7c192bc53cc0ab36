"""`animate124 render`: shots, channels, true colours, video files, manifest records, request checks."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers_outputs import ALBEDO, MovingSphereField, SphereField, trained_project

from animate124.errors import Animate124Error, ConfigError, ProjectError
from animate124.render.outputs import (
    COLORMAPS,
    OutputError,
    RenderSettings,
    VideoSink,
    apply_colormap,
    depth_range,
    frame_channels,
    orbit_shot,
    parse_background,
    render_frame,
    render_shot,
    views_shot,
)
from animate124.stages.outputs import project_config
from animate124.stages.render import run_render_stage

SMALL = dict(size=24, max_steps=96, ray_chunk=256)


def video_meta(path):
    """(frames, (width, height), fps, codec, pix_fmt) of an MP4, read back through imageio-ffmpeg."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    n = sum(1 for _ in gen)
    return n, tuple(meta["size"]), meta["fps"], meta["codec"], meta["pix_fmt"]


# ------------------------------------------------------------------------------------------ pieces
def test_colormaps_run_from_first_to_last_key_and_clamp():
    for name, keys in COLORMAPS.items():
        out = apply_colormap(torch.tensor([-1.0, 0.0, 1.0, 2.0, float("nan")]), name)
        assert torch.allclose(out[1], torch.tensor(keys[0])) and torch.allclose(
            out[2], torch.tensor(keys[-1])
        )
        assert torch.equal(out[0], out[1]) and torch.equal(out[3], out[2]) and torch.equal(out[4], out[1])
    # turbo is not monotone in any channel, but its lightness goes up then down: check a mid value differs
    assert not torch.allclose(apply_colormap(torch.tensor([0.5]))[0], apply_colormap(torch.tensor([0.0]))[0])
    with pytest.raises(OutputError, match="colour map"):
        apply_colormap(torch.zeros(1), "jet")


@pytest.mark.parametrize(
    ("spec", "rgb"),
    [
        ("white", (1, 1, 1)),
        ("Black", (0, 0, 0)),
        ("#ff8000", (1, 128 / 255, 0)),
        ("0.1,0.2,0.3", (0.1, 0.2, 0.3)),
    ],
)
def test_parse_background(spec, rgb):
    assert parse_background(spec) == pytest.approx(rgb)


@pytest.mark.parametrize("spec", ["purple", "#12345", "1,2,3", "0.1,0.2"])
def test_parse_background_rejects_non_colours(spec):
    with pytest.raises(OutputError, match="not a colour"):
        parse_background(spec)


def test_colour_is_the_albedo_without_stretching():
    """SPEC 11.7 fixed: a constant-albedo object renders in exactly its albedo (upstream's per-tensor
    min-max stretching would turn (0.8, 0.3, 0.1) into (1, 0.29, 0))."""
    s = RenderSettings(**SMALL)
    cam = orbit_shot(4, s, dynamic=False).camera(0, 0)
    f = render_frame(SphereField(radius=0.5), None, cam, None, s, normals=True)
    imgs = frame_channels(f, ("color", "depth", "normal", "opacity"), (1.0, 1.0, 1.0), depth_range([f]))
    inside = f.opacity > 0.999
    assert inside.sum() > 50
    assert torch.allclose(
        imgs["color"][:, inside].T, torch.tensor(ALBEDO).expand(int(inside.sum()), 3), atol=1e-3
    )
    corner = imgs["color"][:, 0, 0]
    assert torch.allclose(corner, torch.ones(3))  # the background stays white, not stretched to anything
    rgba = imgs["rgba"]
    assert rgba[3, 0, 0] < 1e-6 and torch.allclose(rgba[:3, inside].T, torch.tensor(ALBEDO), atol=1e-3)
    # the outward normal at the image centre points to the camera (+z): (n+1)/2 = (0.5, 0.5, 1)
    c = s.size // 2
    assert torch.allclose(imgs["normal"][:, c, c], torch.tensor([0.5, 0.5, 1.0]), atol=0.08)
    assert torch.allclose(imgs["opacity"][:, c, c], torch.ones(3), atol=1e-3)


def test_depth_range_and_colours_are_fixed_by_near_far():
    from animate124.render.outputs import FrameImages

    d = torch.linspace(1.0, 2.0, 100).reshape(10, 10)
    f = FrameImages(color=torch.zeros(3, 10, 10), opacity=torch.ones(10, 10), depth=d, normal=None)
    near, far = depth_range([f], quantiles=(0.0, 1.0))
    assert near == pytest.approx(1.0 - 0.05) and far == pytest.approx(2.0 + 0.05)
    img = frame_channels(f, ("depth",), (1, 1, 1), (1.0, 2.0))["depth"]
    assert torch.allclose(img[:, 0, 0], torch.tensor(COLORMAPS["turbo"][0]), atol=1e-5)
    assert torch.allclose(img[:, -1, -1], torch.tensor(COLORMAPS["turbo"][-1]), atol=1e-5)
    # nothing opaque: a default range instead of an error
    empty = FrameImages(
        color=torch.zeros(3, 4, 4), opacity=torch.zeros(4, 4), depth=torch.zeros(4, 4), normal=None
    )
    assert depth_range([empty]) == (0.0, 1.0)


def test_ray_and_sample_chunks_do_not_change_the_image():
    cam = orbit_shot(4, RenderSettings(**SMALL), dynamic=False).camera(1, 0)
    a = render_frame(
        SphereField(center=(0.2, 0.1, 0.0)),
        None,
        cam,
        None,
        RenderSettings(**{**SMALL, "ray_chunk": 64}),
        True,
    )
    b = render_frame(
        SphereField(center=(0.2, 0.1, 0.0)),
        None,
        cam,
        None,
        RenderSettings(**{**SMALL, "ray_chunk": 10**6, "sample_chunk": 100}),
        True,
    )
    for x, y in ((a.color, b.color), (a.opacity, b.opacity), (a.depth, b.depth), (a.normal, b.normal)):
        assert torch.allclose(x, y, atol=1e-6)


def test_static_field_orbit_turns_but_fixed_views_do_not_change(tmp_path):
    s = RenderSettings(**SMALL, stills=True)
    field = SphereField(radius=0.3, center=(0.35, 0.0, 0.0))  # off-centre: the orbit sees it move
    orbit = orbit_shot(4, s, dynamic=False)
    assert orbit.times is None
    render_shot(field, None, orbit, tmp_path, s)
    frames = [iio.imread(tmp_path / "orbit_frames" / f"{k:04d}.png") for k in range(4)]
    assert not np.array_equal(frames[0], frames[1])
    views = views_shot(2, 5, s, dynamic=False)
    assert views.steps == 5 and views.times is None
    files = render_shot(field, None, views, tmp_path, s, video_frames=5)
    n, size, _, _, _ = video_meta(tmp_path / "view_00.mp4")
    assert n == 5 and size == (24, 24)
    same = [iio.imread(tmp_path / "views_frames" / f"view_00_{k:04d}.png") for k in range(5)]
    assert all(np.array_equal(same[0], x) for x in same)
    assert {f.path.name for f in files} >= {"views.mp4", "view_00.mp4", "view_01.mp4", "views_frames"}


def test_dynamic_field_changes_over_time_in_a_fixed_view(tmp_path):
    s = RenderSettings(**SMALL)
    shot = views_shot(1, 3, s, dynamic=True)
    assert shot.times == [0.0, 1 / 3, 2 / 3]
    render_shot(MovingSphereField(), None, shot, tmp_path, RenderSettings(**SMALL, stills=True))
    a, b = (iio.imread(tmp_path / "views_frames" / f"{k:04d}.png") for k in (0, 2))
    assert not np.array_equal(a, b)


def test_frozen_time_gives_images_and_a_bullet_time_orbit(tmp_path):
    s = RenderSettings(**SMALL, rgba=True)
    views = views_shot(3, 8, s, dynamic=True, time=0.5)
    assert views.still and views.times == [0.5] and views.name == "views_t0.50"
    files = render_shot(MovingSphereField(), None, views, tmp_path, s)
    names = sorted(f.path.name for f in files)
    assert names == ["view_00_t0.50.png", "view_01_t0.50.png", "view_02_t0.50.png", "views_t0.50.png"]
    png = iio.imread(tmp_path / "view_00_t0.50.png")
    assert png.shape == (24, 24, 4) and png[0, 0, 3] == 0 and png[12, 12, 3] == 255  # transparent background
    orbit = orbit_shot(6, s, dynamic=True, time=0.25)
    assert orbit.times == [0.25] * 6 and orbit.name == "orbit_t0.25"
    with pytest.raises(OutputError, match="outside"):
        orbit_shot(6, s, dynamic=True, time=1.5)


def test_mp4_is_h264_yuv420p_faststart_and_gif_loops(tmp_path):
    frames = torch.rand(5, 3, 17, 23)  # odd sizes are padded to even for yuv420p
    with VideoSink(tmp_path / "a.mp4", fps=12) as sink:
        for f in frames:
            sink.append(f)
    with VideoSink(tmp_path / "a.gif", fps=10) as sink:
        for f in frames:
            sink.append(f)
    n, size, fps, codec, pix_fmt = video_meta(tmp_path / "a.mp4")
    assert (n, size, fps) == (5, (24, 18), 12.0)
    assert codec.startswith("h264") and pix_fmt.startswith("yuv420p")
    data = (tmp_path / "a.mp4").read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes first
    gif = iio.imread(tmp_path / "a.gif", index=None)
    assert gif.shape[0] == 5
    assert iio.immeta(tmp_path / "a.gif").get("loop", 0) == 0
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed away


def test_a_failed_render_leaves_no_partial_video(tmp_path):
    with pytest.raises(RuntimeError), VideoSink(tmp_path / "x.mp4", fps=5) as sink:
        sink.append(torch.rand(3, 8, 8))
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ the stage
@pytest.fixture()
def project(tmp_path):
    return trained_project(tmp_path, ("static", "dynamic"))


def test_stage_orbit_and_views_files_frames_and_manifest(project):
    cfg = project_config(
        project, "dynamic", options={"render": {"size": 24, "frames": 3, "orbit_frames": 5, "fps": 6}}
    )
    res = run_render_stage(
        project, cfg, orbit=True, views=2, channels=("depth", "normal"), gif=True, show_progress=False
    )
    out = project.render_dir / "dynamic"
    for name, frames in (
        ("orbit", 5),
        ("orbit_depth", 5),
        ("orbit_normal", 5),
        ("views", 3),
        ("view_01_depth", 3),
    ):
        n, size, fps, codec, _ = video_meta(out / f"{name}.mp4")
        assert (n, fps) == (frames, 6.0) and codec.startswith("h264"), name
        assert size == ((48, 24) if name == "views" else (24, 24)), name
    assert iio.imread(out / "orbit.gif", index=None).shape[0] == 5
    rec = project.stage_record("render")
    assert rec["status"] == "done" and rec["metrics"]["stage"] == "dynamic"
    assert rec["outputs"]["renders/dynamic/orbit.mp4"]["frames"] == 5
    assert (
        rec["outputs"]["renders/dynamic/orbit_depth.mp4"]["near"]
        < rec["outputs"]["renders/dynamic/orbit_depth.mp4"]["far"]
    )
    assert (project.root / "config" / "render.yaml").is_file()
    # a second render adds to the record instead of replacing it
    run_render_stage(project, cfg, stage="static", show_progress=False)
    outputs = project.stage_record("render")["outputs"]
    assert "renders/static/orbit.mp4" in outputs and "renders/dynamic/views.mp4" in outputs
    assert res.metrics["frames_rendered"] == 5 + 2 * 3


def test_stage_true_colours_in_pngs_and_videos(project):
    cfg = project_config(project, "static", options={"render": {"size": 32, "orbit_frames": 4}})
    run_render_stage(project, cfg, stage="static", stills=True, show_progress=False)
    png = iio.imread(project.render_dir / "static" / "orbit_frames" / "0000.png")
    centre = png[14:18, 14:18].reshape(-1, 3).astype(float) / 255
    assert np.allclose(centre, ALBEDO, atol=1.5 / 255)
    video = iio.imread(project.render_dir / "static" / "orbit.mp4", index=None, plugin="FFMPEG")
    assert np.allclose(video[0, 14:18, 14:18].reshape(-1, 3).mean(0) / 255, ALBEDO, atol=6 / 255)


def test_stage_default_is_the_newest_stage_and_the_orbit(project):
    cfg = project_config(project, "dynamic", options={"render": {"size": 16, "orbit_frames": 2}})
    res = run_render_stage(project, cfg, show_progress=False)
    assert res.metrics["stage"] == "dynamic" and res.metrics["files"] == ["renders/dynamic/orbit.mp4"]


def test_bad_requests_fail_before_any_work(project):
    cfg = project_config(project, "dynamic")
    with pytest.raises(ProjectError, match="'refine' has not finished"):
        run_render_stage(project, cfg, stage="refine", show_progress=False)
    with pytest.raises(ConfigError, match="not a training stage"):
        run_render_stage(project, cfg, stage="render", show_progress=False)
    with pytest.raises(ConfigError, match="outside"):
        run_render_stage(project, cfg, time=2.0, show_progress=False)
    with pytest.raises(ConfigError, match="unknown channel"):
        run_render_stage(project, cfg, channels=("albedo",), show_progress=False)
    bad_bg = project_config(project, "dynamic", sets=["render.background=mauve"])
    with pytest.raises(OutputError, match="not a colour"):
        run_render_stage(project, bad_bg, show_progress=False)
    with pytest.raises(ConfigError, match="maximum"):
        project_config(project, "dynamic", options={"render": {"size": 100_000}})
    with pytest.raises(ConfigError, match="minimum"):
        project_config(project, "dynamic", options={"render": {"frames": 0}})
    assert not project.render_dir.exists()
    assert "render" not in project.read_manifest()["stages"]


def test_nothing_to_render_in_a_project_without_a_trained_stage(tmp_path):
    from animate124.project import Project

    p = Project(tmp_path / "empty")
    p.create()
    with pytest.raises(ProjectError, match="no training stage has finished"):
        run_render_stage(p, project_config(p, None), show_progress=False)


def test_project_config_starts_from_the_trained_stage_config(project):
    assert project_config(project, "dynamic").render.size == 32  # the tiny preset the project used
    assert project_config(project, "dynamic", preset="paper").render.size == 400
    assert project_config(project, "dynamic", sets=["render.fps=3"]).render.fps == 3
    assert isinstance(OutputError("x"), Animate124Error) and json.dumps(RenderSettings().channels)
