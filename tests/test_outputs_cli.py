"""The output commands (render, export, evaluate, report) through Typer's CliRunner on the ``animate124`` app."""

from __future__ import annotations

import json
import re

import pytest
import typer
from helpers_outputs import trained_project
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from animate124.cli.app import app

    return app


@pytest.fixture()
def project(tmp_path):
    return trained_project(tmp_path, ("static", "dynamic"))


def run(app, *args):
    return CliRunner().invoke(app, list(args))


def test_render_orbit_as_typed_from_the_project_directory(app, project, monkeypatch):
    monkeypatch.chdir(project.root)
    res = run(app, "render", "--orbit")
    assert res.exit_code == 0, res.output
    assert "stage: dynamic" in res.output and "renders/dynamic/orbit.mp4" in res.output
    assert (project.render_dir / "dynamic" / "orbit.mp4").is_file()
    # the tiny project's own config: 32 px, 8 orbit frames
    out = project.stage_record("render")["outputs"]["renders/dynamic/orbit.mp4"]
    assert (out["size"], out["frames"]) == (32, 8)


def test_render_orbit_as_typed_where_run_all_ran(app, project, tmp_path, monkeypatch):
    """run-all leaves the project as the most recent one; `render --orbit` from its directory finds it."""
    from animate124.project import remember_project

    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "state"))
    remember_project(project)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = run(app, "render", "--orbit", "-q")
    assert res.exit_code == 0, res.output
    assert (project.render_dir / "dynamic" / "orbit.mp4").is_file()


def test_render_views_with_depth_and_normal_and_options(app, project):
    res = run(
        app, "render", "-p", str(project.root), "--views", "2", "--depth", "--normal", "--size", "24",
        "--frames", "3", "--fps", "5", "--fov", "35", "--elevation", "20", "--background", "black", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = project.stage_record("render")["outputs"]
    for name in ("views", "views_depth", "views_normal", "view_00", "view_01_normal"):
        assert f"renders/dynamic/{name}.mp4" in out
    assert out["renders/dynamic/views.mp4"]["fps"] == 5 and out["renders/dynamic/views.mp4"]["frames"] == 3
    saved = (project.root / "config" / "render.yaml").read_text()
    assert "polar: 70.0" in saved and "fovy: 35.0" in saved and "background: black" in saved


def test_render_stills_rgba_time_and_gif(app, project):
    res = run(
        app,
        "render",
        "-p",
        str(project.root),
        "--stage",
        "static",
        "--time",
        "0.5",
        "--views",
        "2",
        "--rgba",
        "-q",
    )
    assert res.exit_code == 0, res.output
    # a static field has no time: the frozen moment is the plain view
    assert (project.render_dir / "static" / "views.png").is_file()
    res = run(app, "render", "-p", str(project.root), "--frames", "3", "--stills", "--gif", "-q")
    assert res.exit_code == 0, res.output
    assert (project.render_dir / "dynamic" / "orbit.gif").is_file()
    assert len(list((project.render_dir / "dynamic" / "orbit_frames").glob("*.png"))) == 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--frames", "0"), 2, "at least 1 frame"),
        (("--frames", "1", "--orbit"), 2, "at least 2 frames"),
        (("--size", "100000"), 2, "render.size: 100000 is above the maximum 4096"),
        (("--size", "2"), 2, "below the minimum"),
        (("--views", "0"), 2, "at least 1 view"),
        (("--time", "3"), 2, "outside [0, 1]"),
        (("--elevation", "95"), 2, "outside [-89, 89]"),
        (("--background", "mauve"), 2, "not a colour"),
        (("--stage", "refine"), 1, "'refine' has not finished"),
        (("--stage", "preprocess"), 2, "'static', 'dynamic', 'refine'"),
        (("--set", "render.nope=1"), 2, "unknown config key render.nope"),
    ],
)
def test_render_bad_requests_are_clear_errors_before_any_work(app, project, args, code, message):
    res = run(app, "render", "-p", str(project.root), *args)
    assert res.exit_code == code, res.output
    assert message in " ".join(res.output.split())
    assert not project.render_dir.exists()


def test_no_project_anywhere(app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "state"))
    for cmd in ("render", "export", "evaluate", "report"):
        res = run(app, cmd)
        assert res.exit_code == 1 and "no project given and none found" in res.output, (cmd, res.output)


def test_export_evaluate_and_report_commands(app, project):
    import pygltflib

    p = str(project.root)
    res = run(app, "export", "-p", p, "--resolution", "24", "--frames", "2", "--decimate", "0.5")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "density level" in text and (project.export_dir / "dynamic" / "mesh.glb").is_file()
    assert "one mesh, 2 frames" in text and "texture" in text and "fit error per frame" in text
    assert "integer vertex data (KHR_mesh_quantization)" in text
    assert "warning" not in text and not (project.export_dir / "dynamic" / "frames").exists()
    # --no-quantize: the same mesh with float vertex data, for viewers without the extension
    res = run(
        app, "export", "-p", p, "--resolution", "24", "--frames", "2", "--decimate", "0.5", "--no-quantize"
    )
    assert res.exit_code == 0 and "float vertex data" in " ".join(res.output.split()), res.output
    doc = pygltflib.GLTF2().load(str(project.export_dir / "dynamic" / "mesh.glb"))
    assert not doc.extensionsRequired and not doc.extensionsUsed
    # a tolerance only an exact fit meets (the reference frame's own surface): the moving frame is named,
    # with the flipbook as the way out, and the command still succeeds
    res = run(
        app, "export", "-p", p, "--resolution", "24", "--frames", "2", "--set", "export.fit_tolerance=0"
    )
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and re.search(r"does not follow the motion at frame\(s\) (0, )?1:", text), text
    assert "--flipbook" in text
    res = run(
        app, "export", "-p", p, "--flipbook", "--resolution", "24", "--frames", "2", "--texture", "vertex"
    )
    assert res.exit_code == 0, res.output
    assert "flipbook: 2 meshes" in " ".join(res.output.split())
    assert len(list((project.export_dir / "dynamic" / "frames").glob("*.ply"))) == 2
    assert (project.export_dir / "dynamic" / "flipbook.glb").is_file()
    res = run(app, "export", "-p", p, "--texture", "uv")
    assert res.exit_code == 2 and "export.texture" in res.output
    res = run(
        app,
        "export",
        "-p",
        p,
        "--stage",
        "static",
        "--resolution",
        "24",
        "--format",
        "obj",
        "--threshold",
        "4",
    )
    assert res.exit_code == 0, res.output
    assert (project.export_dir / "static" / "mesh.obj").is_file() and "(given)" in res.output
    res = run(app, "export", "-p", p, "--format", "stl")
    assert res.exit_code == 2 and "export.format" in res.output
    res = run(app, "evaluate", "-p", p, "--size", "32", "--frames", "3", "--views", "2", "-q")
    assert res.exit_code == 0, res.output
    for label in ("CLIP-I", "CLIP-T", "temporal", "PSNR (mask)", "SSIM (mask)", "clip-vit-large-patch14"):
        assert label in res.output
    assert json.loads(project.artifact("metrics").read_text())["frames"] == 3
    res = run(app, "report", "-p", p)
    assert res.exit_code == 0 and "report.html" in res.output
    assert project.stage_record("report")["status"] == "done"


def test_help_has_examples(app):
    for cmd in ("render", "export", "evaluate", "report"):
        res = run(app, cmd, "--help")
        assert res.exit_code == 0 and "Examples" in res.output and f"animate124 {cmd}" in res.output
    assert "--orbit" in run(app, "render", "--help").output
    assert "--clip-model" in run(app, "evaluate", "--help").output


def test_render_skips_a_request_already_rendered_and_force_renders_again(app, project):
    p = str(project.root)
    orbit = project.render_dir / "dynamic" / "orbit.mp4"
    assert run(app, "render", "-p", p).exit_code == 0
    first = orbit.stat().st_mtime_ns
    manifest = project.manifest_path.read_bytes()
    res = run(app, "render", "-p", p, "--orbit")  # the default shot is the orbit: the same request
    assert res.exit_code == 0, res.output
    assert "render: up to date" in res.output and "orbit.mp4" in res.output
    assert orbit.stat().st_mtime_ns == first and project.manifest_path.read_bytes() == manifest
    # another request leaves the orbit up to date
    assert run(app, "render", "-p", p, "--views", "2", "-q").exit_code == 0
    assert "up to date" in run(app, "render", "-p", p, "--orbit").output
    # other settings are another request; the orbit video it replaces is then rendered again
    assert "render done" in run(app, "render", "-p", p, "--size", "24").output
    assert "render done" in run(app, "render", "-p", p).output
    res = run(app, "render", "-p", p, "--force")
    assert res.exit_code == 0 and "render done" in res.output and orbit.stat().st_mtime_ns != first


def test_json_summaries_of_the_output_commands(app, project):
    p = str(project.root)
    res = run(app, "render", "-p", p, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the only thing on stdout
    assert out["command"] == "render" and out["exit_code"] == 0 and out["project"] == str(project.root)
    (stage,) = out["stages"]
    assert stage["stage"] == "render" and stage["status"] == "done"
    assert stage["artifacts"]["orbit.mp4"] == str(project.render_dir / "dynamic" / "orbit.mp4")
    res = run(app, "evaluate", "-p", p, "--size", "32", "--frames", "3", "--views", "2", "--json", "-q")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["stages"][0]["stage"] == "evaluate" and -1 <= out["metrics"]["clip_i"] <= 1
    res = run(app, "report", "-p", p, "--json")
    out = json.loads(res.stdout)
    assert out["report"] == str(project.artifact("report")) and out["stages"][0]["status"] == "done"
    # nothing changed: the report is up to date
    out = json.loads(run(app, "report", "-p", p, "--json").stdout)
    assert out["stages"][0]["status"] == "up-to-date"
    assert "report done" in run(app, "report", "-p", p, "--force").output
    res = run(app, "render", "-p", p, "--stage", "refine", "--json")
    out = json.loads(res.stdout)
    assert res.exit_code == out["exit_code"] == 1 and "'refine' has not finished" in out["error"]["message"]


def test_out_of_memory_is_a_message_with_the_command_s_own_settings(app, project, monkeypatch):
    import torch

    import animate124.stages.export as export
    import animate124.stages.render as render

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(render, "run_render_stage", oom)
    monkeypatch.setattr(export, "run_export_stage", oom)
    res = run(app, "render", "-p", str(project.root))
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "out of GPU memory during `animate124 render` of the dynamic stage" in text
    assert "lower --size" in text and "render.ray_chunk" in text and "internal error" not in text
    res = run(app, "export", "-p", str(project.root))
    assert res.exit_code == 1 and "lower --resolution" in " ".join(res.output.split())
