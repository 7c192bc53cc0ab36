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
from animate124.stages.report import loss_curves, metric_text, run_report_stage, write_report
from animate124.stages.report_charts import grad_chart, loss_chart, scalar_series, use_log

SVG = "{http://www.w3.org/2000/svg}"


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


def chart_svgs(page: str) -> list[ET.Element]:
    """Every chart of a page, parsed as XML."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def _text_box(t: ET.Element) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) of a <text> in user units, measured with the font the SVG names
    (DejaVu Sans, shipped with matplotlib) from its anchor point and size."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    style = dict(kv.split(":", 1) for kv in (t.get("style") or "").replace(" ", "").split(";") if ":" in kv)
    size = float(style.get("font-size", "10px").rstrip("px"))
    weight = style.get("font-weight", "normal")
    x, y = float(t.get("x", 0)), float(t.get("y", 0))
    text = "".join(t.itertext())
    font = FontProperties(family="DejaVu Sans", size=size, weight=weight)
    width, height, descent = TextToPath().get_text_width_height_descent(text, font, ismath=False)
    anchor = style.get("text-anchor", "start")
    left = x - {"start": 0.0, "middle": width / 2, "end": width}[anchor]
    return left, left + width, y - (height - descent), y + descent


def check_chart(svg: ET.Element, series: int) -> None:
    """The chart has a title and tick labels, all inside its viewBox, and ``series`` drawn series (a
    line with points, or markers for a single point)."""
    x0, y0, w, h = (float(v) for v in svg.get("viewBox").split())
    texts = [t for t in svg.iter(f"{SVG}text") if "".join(t.itertext()).strip()]
    assert len(texts) >= 5, [("".join(t.itertext())) for t in texts]  # title, >= 2 ticks per axis
    for t in texts:
        assert (t.get("transform") or "rotate(-0").startswith("rotate(-0"), t.get("transform")
        left, right, top, bottom = _text_box(t)
        label = "".join(t.itertext())
        assert x0 - 0.5 <= left and right <= x0 + w + 0.5, (label, left, right, w, svg.get("aria-label"))
        assert y0 - 0.5 <= top and bottom <= y0 + h + 0.5, (label, top, bottom, h, svg.get("aria-label"))
    groups = [g for g in svg.iter(f"{SVG}g") if re.search(r"-series-", g.get("id", ""))]
    assert len(groups) == series, [g.get("id") for g in groups]
    for g in groups:
        paths = [p for p in g.iter(f"{SVG}path") if len((p.get("d") or "").split()) >= 4]
        markers = list(g.iter(f"{SVG}use"))
        assert paths or markers, g.get("id")


def test_charts_draw_every_series_with_labels_inside_the_chart(tmp_path):
    log = tmp_path / "dynamic.jsonl"
    rows = [{"step": s, "loss/sds": 3330.0 * 0.7**s, "loss/rgb": 0.25 + 0.001 * s} for s in range(1, 30)]
    rows[5]["loss/zero123"] = 1580.0  # one point
    for r in rows[::5]:
        r.update(
            {"grad/video": 12.0, "grad/zero123": 0.03, "grad/reference": 1.5e-4, "grad/regularizers": 0.0}
        )
    log.write_text("\n".join(json.dumps(r) for r in rows))
    losses = scalar_series(log, "loss/")
    assert use_log([v for _, v in losses["sds"]]) and not use_log([v for _, v in losses["rgb"]])
    for name, pts in losses.items():
        svg = ET.fromstring(loss_chart("dynamic", name, pts))
        check_chart(svg, series=1)
        assert svg.get("aria-label") == f"dynamic loss {name}"
    grads = scalar_series(log, "grad/")
    svg = ET.fromstring(grad_chart("dynamic", grads))
    check_chart(svg, series=3)  # the all-zero group has nothing to draw on a log axis
    legend = {"".join(t.itertext()) for t in svg.iter(f"{SVG}text")}
    assert {"video", "zero123", "reference"} <= legend
    # the labels of a series of large values are written out (3330, not "33e+03" or "3.33e+03")
    ticks = {
        "".join(t.itertext())
        for t in ET.fromstring(loss_chart("d", "zero123", [(1, 3330.0), (2, 1580.0)])).iter(f"{SVG}text")
    }
    assert {"2000", "3000"} <= ticks, ticks


def test_charts_are_deterministic_and_ids_are_unique_on_a_page():
    pts = [(float(s), 1.0 / s) for s in range(1, 20)]
    a, b = loss_chart("static", "rgb", pts), loss_chart("static", "rgb", pts)
    assert a == b
    c = loss_chart("dynamic", "rgb", pts)
    ids = lambda svg: set(re.findall(r'id="([^"]+)"', svg))  # noqa: E731
    assert ids(a) and not ids(a) & ids(c)


def test_metric_text_keeps_five_digits():
    assert (
        metric_text(0.99967) == "0.99967" and metric_text(23.456789) == "23.457" and metric_text(None) == "–"
    )


def test_loss_curves_keep_the_run_that_made_the_result(tmp_path):
    """A resumed run repeats steps and a forced rerun starts over: the later records win."""
    log = tmp_path / "s.jsonl"
    steps = [1, 2, 3, 4, 3, 4, 5, 1, 2]
    log.write_text("\n".join(json.dumps({"step": s, "loss/rgb": float(i)}) for i, s in enumerate(steps)))
    assert loss_curves(log) == {"rgb": [(1.0, 7.0), (2.0, 8.0)]}
    log.write_text("\n".join(json.dumps({"step": s, "loss/rgb": float(i)}) for i, s in enumerate(steps[:7])))
    assert loss_curves(log) == {"rgb": [(1.0, 0.0), (2.0, 1.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0)]}


def test_report_is_self_contained_and_every_link_exists(full_project):
    page = full_project.artifact("report").read_text()
    parser = _Refs()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    # nothing from the network: only the SVG/XLink namespace names and url(#id) references within the page
    assert not re.search(r"url\((?!#)|@import|https?://(?!www\.w3\.org/(2000/svg|1999/xlink)\b)", page)
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
    # static and dynamic: rgb, sds, depth (one point) and the gradient balance; the animated mesh's fit
    charts = chart_svgs(page)
    assert len(charts) == 9
    for svg in charts:
        label = svg.get("aria-label")
        check_chart(svg, series=3 if "gradient" in label or "fit error" in label else 1)
    assert [c.get("aria-label") for c in charts][-1] == "dynamic animated mesh fit error"
    # the exported mesh drawn (turntable picture and video) and how well one mesh follows the motion
    assert {"export/dynamic/turntable.png", "export/dynamic/turntable.mp4"} <= srcs
    m = full_project.read_manifest()["stages"]["export"]["metrics"]
    worst = 100 * max(m["fit_error_max"])
    assert m["fit_ok"] and f"surface is {worst:.2g} % of the object" in page
    assert "follows 2 frames" in page and "within the tolerance of 5 %" in page
    assert re.search(r"\b21 more files: ", page) and not re.search(r"\b1 more files", page)
    assert "12.5 s" in page and "1.25 GiB" in page  # the stages' time and peak memory


def test_report_says_when_one_mesh_does_not_follow_the_motion(full_project, tmp_path):
    """The export's fit verdict reaches the page: frames over the tolerance are counted, not hidden."""
    root = tmp_path / "p"
    shutil.copytree(full_project.root, root)
    project = Project(root)
    manifest = project.read_manifest()
    m = manifest["stages"]["export"]["metrics"]
    m.update(fit_ok=False, fit_frames_over=[1], fit_tolerance=0.001)
    project.write_manifest(manifest)
    page = write_report(project).read_text()
    assert "over at 1 frame(s) of the tolerance of 0.1 %" in page and "within the tolerance" not in page


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
    assert len(result["images"]) >= 7 and len(result["videos"]) >= 8  # the turntable picture and video too
    broken = [i["src"] for i in result["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    silent = [v for v in result["videos"] if not v["ok"]]
    assert not silent, f"videos without a duration: {silent}"
    assert all(v["duration"] > 0 and v["width"] > 0 for v in result["videos"])
    assert result["svgs"] == 9 and result["height"] > 1500  # 8 loss/gradient charts, 1 mesh fit
    for chart in result["charts"]:
        assert chart["texts"] >= 5 and chart["width"] > 150, chart
        assert not chart["outside"], f"text drawn outside {chart['label']}: {chart['outside']}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = os.environ.get("ANIMATE124_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_renders_are_grouped_in_the_order_the_stages_ran_and_counted_in_words(tmp_path):
    p = Project(tmp_path / "p")
    p.create()
    outputs = {}
    for stage in ("refine", "dynamic", "static"):
        for name, kind in (("orbit.mp4", "video"), ("orbit.gif", "gif")):
            rel = f"renders/{stage}/{name}"
            (p.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (p.root / rel).write_bytes(b"x")
            outputs[rel] = {
                "stage": stage,
                "kind": kind,
                "shot": "orbit",
                "channel": "color",
                "frames": 8,
                "fps": 8,
            }
    p.update_stage("render", status="done", outputs=outputs)
    page = write_report(p).read_text()
    heads = re.findall(r"<h3>(static|dynamic|refine)</h3>", page)
    assert heads == ["static", "dynamic", "refine"], heads
    assert page.count("1 more file: per-view videos") == 3 and "1 more files" not in page
