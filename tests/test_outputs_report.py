"""`animate124 report`: a self-contained page with working links, checked in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from helpers_outputs import MEDIA_CHECK_JS, HeadlessChromium, find_chromium, trained_project

from animate124.project import Project
from animate124.stages.report import loss_curves, run_report_stage, svg_chart, write_report


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append((tag, k, v))


@pytest.fixture(scope="module")
def full_project(tmp_path_factory) -> Project:
    """A tiny trained project with renders, meshes, metrics and the report."""
    from animate124.stages.evaluate import run_evaluate_stage
    from animate124.stages.export import run_export_stage
    from animate124.stages.outputs import project_config
    from animate124.stages.render import run_render_stage

    project = trained_project(tmp_path_factory.mktemp("report"), ("static", "dynamic"))
    cfg = project_config(
        project,
        "dynamic",
        options={
            "render": {"size": 32, "frames": 4, "orbit_frames": 6},
            "export": {"resolution": 24, "frames": 2, "silhouette_size": 24},
            "evaluate": {"size": 32, "frames": 3, "views": 2, "ref_size": 32},
        },
    )
    run_render_stage(
        project, cfg, orbit=True, views=2, channels=("depth", "normal"), gif=True, show_progress=False
    )
    run_render_stage(project, cfg, views=3, time=0.5, rgba=True, show_progress=False)
    run_export_stage(project, cfg, show_progress=False)
    run_evaluate_stage(project, cfg, show_progress=False)
    run_report_stage(project)
    return project


def test_loss_curves_skip_bad_lines_and_non_loss_keys(tmp_path):
    log = tmp_path / "s.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"step": 1, "loss/rgb": 1.0, "lr": 0.1}),
                "not json",
                json.dumps({"loss/rgb": 5.0}),  # no step
                json.dumps({"step": 2, "loss/rgb": float("nan"), "loss/sds": 0.5}),
                json.dumps({"step": 3, "loss/rgb": 0.25, "loss/note": "text"}),
            ]
        )
    )
    assert loss_curves(log) == {"rgb": [(1.0, 1.0), (3.0, 0.25)], "sds": [(2.0, 0.5)]}
    assert loss_curves(tmp_path / "missing.jsonl") == {}


def test_svg_chart_is_valid_svg_with_its_points():
    svg = svg_chart([(0, 1.0), (10, 0.5), (20, 0.25)], "loss <rgb>")
    root = ET.fromstring(svg)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and len(lines[0].get("points").split()) == 3
    assert "loss &lt;rgb&gt;" in svg
    ET.fromstring(svg_chart([(5, 2.0)], "one point"))  # a single value still draws


def test_report_is_self_contained_and_every_link_exists(full_project):
    page = full_project.artifact("report").read_text()
    parser = _Refs()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    files = [v for _, _, v in parser.refs if not v.startswith("#")]
    assert files, "the report links no file"
    for ref in files:
        u = urlparse(ref)
        assert not u.scheme and not u.netloc and not ref.startswith("/"), ref
        assert (full_project.root / unquote(u.path)).exists(), ref
    srcs = {v for tag, k, v in parser.refs if k == "src"}
    assert {
        "input/toy.png",
        "preprocess/rgba.png",
        "renders/dynamic/orbit.mp4",
        "renders/dynamic/views_depth.mp4",
    } <= srcs
    assert {
        "dynamic/previews/latest.mp4",
        "static/previews/latest.png",
        "renders/dynamic/views_t0.50.png",
    } <= srcs
    for text in (
        "a toy is bouncing",
        "a high-resolution DSLR image of a toy",
        "CLIP-I",
        "export/dynamic/mesh.glb",
    ):
        assert text in page
    assert page.count('class="loss"') == 4  # rgb and sds for static and dynamic
    assert "12.5 s" in page and "1.25 GiB" in page  # the stages' time and peak memory


def test_report_of_a_new_project_says_what_is_missing(tmp_path):
    p = Project(tmp_path / "new")
    p.create()
    page = write_report(p).read_text()
    for hint in (
        "animate124 preprocess",
        "animate124 render --orbit",
        "animate124 evaluate",
        "animate124 export",
    ):
        assert hint in page


def test_report_loads_in_headless_chromium(full_project, tmp_path):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine: install it with `apt-get install -y chromium`")
    browser = HeadlessChromium(exe, Path(tempfile.mkdtemp(prefix="a124-chromium-")))
    try:
        session = browser.open(full_project.artifact("report").as_uri(), width=1280, height=900)
        result = browser.evaluate(session, MEDIA_CHECK_JS)
        shot = browser.screenshot(session, tmp_path / "report.png")
    finally:
        browser.close()
    assert len(result["images"]) >= 6 and len(result["videos"]) >= 7
    broken = [i["src"] for i in result["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    silent = [v for v in result["videos"] if not v["ok"]]
    assert not silent, f"videos without a duration: {silent}"
    assert all(v["duration"] > 0 and v["width"] > 0 for v in result["videos"])
    assert result["svgs"] == 4 and result["height"] > 1500
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = os.environ.get("ANIMATE124_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
