"""The main job end to end, through the installed ``animate124`` command, as a user types it.

In a temporary working directory: ``animate124 run-all examples/toy.png "a toy is spinning" --preset
tiny`` runs every stage (preprocess, invert, static, dynamic, refine, render) in under five minutes,
writes every artifact, the orbit video and report.html; the same command again does no work and says
so. Then, in the same project and from the same directory, the output commands run as typed —
``render --orbit``, ``render --views 4 --depth --normal``, ``export``, ``evaluate``, ``report`` — and
the report loads in headless Chromium (every image and video, videos with a duration).

The commands run without Ray, as after the README's set-up (CI installs Ray for the batch tests): they
must not need it, and ``animate124 batch`` says how to install it.

One run-all is shared by the whole module (fixtures in order: ``first_run`` -> ``second_run`` ->
``outputs``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers_cli import animate124_command
from helpers_outputs import MEDIA_CHECK_JS, HeadlessChromium, find_chromium

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a toy is spinning"
RUN_ALL = ["run-all", "examples/toy.png", PROMPT, "--preset", "tiny"]
STAGES = ("preprocess", "invert", "static", "dynamic", "refine", "render")
#: The tiny preset's render settings (config/presets.py): the orbit and the fixed views.
ORBIT_FRAMES, VIEW_FRAMES, SIZE, FPS = 8, 4, 32, 8
LIMIT_S = 300


class Shell:
    """Runs ``animate124 ...`` in one working directory with its own "most recent project" state, and
    without Ray (the README's set-up installs none: ``hide`` is a folder that makes ``import ray`` fail)."""

    def __init__(self, cwd: Path, hide: str = "") -> None:
        self.cwd = cwd
        # the command imports this checkout, as the tests do (an editable install elsewhere must not win)
        path = os.pathsep.join(p for p in (hide, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {
            **os.environ,
            "PYTHONPATH": path,
            "ANIMATE124_STATE_DIR": str(cwd / ".state"),
            "COLUMNS": "200",
        }

    def __call__(self, *args: str, timeout: float = LIMIT_S) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*animate124_command(), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    return " ".join(r.stdout.split())


def video_props(path: Path) -> tuple[int, tuple[int, int], float]:
    """(frames, (width, height), fps) of a video, read back with imageio."""
    import imageio.v3 as iio

    frames = iio.imread(path, index=None, plugin="FFMPEG")
    meta = iio.immeta(path, plugin="FFMPEG")
    return frames.shape[0], (frames.shape[2], frames.shape[1]), float(meta["fps"])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file of the project."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shell(tmp_path_factory, without_ray) -> Shell:
    work = tmp_path_factory.mktemp("e2e")
    (work / "examples").mkdir()
    shutil.copy(REPO / "examples" / "toy.png", work / "examples" / "toy.png")
    return Shell(work, hide=without_ray)


def test_without_ray_batch_says_how_to_install_it(shell):
    """The README's set-up (no Ray): this module's commands run without it, and `batch` names the extra."""
    probe = subprocess.run(
        [sys.executable, "-c", "import ray"], env=shell.env, capture_output=True, text=True
    )
    assert probe.returncode == 1 and "No module named 'ray'" in probe.stderr  # the shell has no Ray
    (shell.cwd / "jobs.csv").write_text("image,prompt\nexamples/toy.png,a toy is spinning\n")
    r = shell("batch", "jobs.csv", "--out", "batch-runs", "--preset", "tiny", timeout=60)
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    said = " ".join((r.stdout + r.stderr).split())
    assert "`animate124 batch` needs Ray, which is not installed" in said
    assert 'pip install "animate124[batch]"' in said and not (shell.cwd / "batch-runs").exists()


@pytest.fixture(scope="module")
def project(shell) -> Path:
    return shell.cwd / "runs" / "toy"


@pytest.fixture(scope="module")
def first_run(shell) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = shell(*RUN_ALL)
    return r, time.perf_counter() - t0


@pytest.fixture(scope="module")
def second_run(first_run, shell, project) -> tuple[list[subprocess.CompletedProcess], dict, dict]:
    """The same command again, as typed and with ``--json -q`` (both must be no-ops)."""
    _ok(first_run[0])
    before = _snapshot(project)
    runs = [shell(*RUN_ALL), shell(*RUN_ALL, "--json", "-q")]
    # each training stage on its own, as typed after run-all: the prompts run-all recorded (refine also
    # needs the dynamic one for its video prior) give the same config, so each one is up to date
    runs += [shell(stage, "--preset", "tiny") for stage in ("static", "dynamic", "refine")]
    return runs, before, _snapshot(project)


@pytest.fixture(scope="module")
def outputs(second_run, shell) -> dict[str, subprocess.CompletedProcess]:
    """The output commands, as typed, from the directory where run-all ran (after the no-op reruns)."""
    for r in second_run[0]:
        _ok(r)
    return {
        "render --orbit": shell("render", "--orbit"),
        "render --views 4 --depth --normal": shell("render", "--views", "4", "--depth", "--normal"),
        "export": shell("export"),
        "export --flipbook": shell("export", "--flipbook"),
        "evaluate": shell("evaluate"),
        "report": shell("report"),
    }


# ------------------------------------------------------------------------------------------ run-all
def test_run_all_runs_every_stage_in_time(first_run, project):
    r, seconds = first_run
    out = _ok(r)
    assert seconds < LIMIT_S, f"run-all took {seconds:.0f} s (limit {LIMIT_S} s)"
    for stage in STAGES:
        assert f"✓ {stage} done in" in out, stage
    # paths are said relative to the working directory
    assert "✓ report done in" in out and "report: runs/toy/report.html" in out
    assert "✓ done: runs/toy (" in out and "project: runs/toy (new)" in out


def test_run_all_writes_every_artifact(first_run, project):
    _ok(first_run[0])
    files = [
        "manifest.json",
        "input/source.png",
        "preprocess/rgba.png",
        "preprocess/depth.png",
        "preprocess/depth.npy",
        "preprocess/preview.png",
        "invert/learned_embeds.safetensors",
        *(f"{s}/model.safetensors" for s in ("static", "dynamic", "refine")),
        *(f"{s}/previews/latest.png" for s in ("static", "dynamic", "refine")),
        *(f"{s}/previews/latest.mp4" for s in ("dynamic", "refine")),
        *(f"logs/{s}.jsonl" for s in ("invert", "static", "dynamic", "refine")),
        *(f"config/{s}.yaml" for s in STAGES),
        "renders/refine/orbit.mp4",
        "report.html",
    ]
    missing = [f for f in files if not (project / f).is_file() or (project / f).stat().st_size == 0]
    assert not missing, f"missing or empty: {missing}"
    manifest = json.loads((project / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in (*STAGES, "report"))
    assert manifest["prompts"]["refine"] == "a <token> is spinning"
    page = (project / "report.html").read_text()
    assert "renders/refine/orbit.mp4" in page and PROMPT in page


def test_the_4d_stage_logs_show_each_term_on_its_steps(first_run, project):
    """logs/dynamic.jsonl and logs/refine.jsonl of the run, step by step (the tiny preset logs every step):
    the reference terms exactly on the reference steps (global step % 4 == 0: static 8 + local step), the
    video term exactly on the others, Zero123 exactly on the clips that start at t = 0, ControlNet on every
    refine guidance step, the time TV on every step (SPEC 5.2, 6; zero at the first dynamic step: the 4D field
    starts as the static one at every time, SPEC 3.1)."""
    _ok(first_run[0])
    offsets = {"dynamic": 8, "refine": 16}  # tiny: static 8 steps, dynamic 8, refine 4
    for stage, offset in offsets.items():
        recs = [json.loads(x) for x in (project / "logs" / f"{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs] == list(range(1, len(recs) + 1)) and len(recs) >= 4, stage
        for r in recs:
            gs = offset + r["step"]
            where = f"{stage} step {r['step']} (global {gs})"
            assert r["global_step"] == gs, where
            ref = gs % 4 == 0
            assert r["reference"] == float(ref), where
            assert {"loss/rgb", "loss/mask"} <= set(r) if ref else not {"loss/rgb", "loss/mask"} & set(r), (
                where
            )
            assert ("loss/video_sds" in r) == (not ref), where
            assert ("loss/zero123" in r) == (not ref and r["from_zero"] == 1.0), where
            if stage == "refine":
                assert ("loss/controlnet" in r) == (not ref), where
            # every step; 0 at the first dynamic step, whose 64 time grids are still copies of the static grid
            first = stage == "dynamic" and r["step"] == 1
            assert "loss/time_tv" in r and (r["loss/time_tv"] == 0 if first else r["loss/time_tv"] > 0), where
            assert {"loss/entropy", "loss/normal_tv", "loss/normal_blur"} <= set(r), where


def test_orbit_video_reads_back_with_the_tiny_settings(first_run, project):
    _ok(first_run[0])
    assert video_props(project / "renders" / "refine" / "orbit.mp4") == (ORBIT_FRAMES, (SIZE, SIZE), FPS)


def test_second_run_does_no_work_and_says_so(second_run, project):
    (plain, as_json, *alone), before, after = second_run
    for stage, r in zip(("static", "dynamic", "refine"), alone, strict=True):
        assert f"✓ {stage}: up to date" in _ok(r), stage
    said = _ok(plain)
    for stage in (*STAGES, "report"):
        assert f"✓ {stage}: up to date" in said, stage
    assert " done in " not in said
    assert "✓ up to date: runs/toy (" in said and "report: runs/toy/report.html" in said
    _ok(as_json)
    summary = json.loads(as_json.stdout)  # --json: one object on stdout
    assert [s["stage"] for s in summary["stages"]] == [*STAGES, "report"]
    assert all(s["status"] == "up-to-date" and s["skipped"] for s in summary["stages"]), summary
    assert summary["report"] == str(project / "report.html") and summary["exit_code"] == 0
    assert after == before, "an up-to-date run-all changed files in the project"


# ------------------------------------------------------------------------------------------ outputs
def test_render_orbit_as_typed_where_run_all_ran(outputs, project):
    out = _ok(outputs["render --orbit"])
    assert "project: runs/toy (the only project under ./runs) stage: refine (the newest finished)" in out
    assert "✓ render" in out and "orbit.mp4" in out
    assert video_props(project / "renders" / "refine" / "orbit.mp4") == (ORBIT_FRAMES, (SIZE, SIZE), FPS)


def test_render_views_with_depth_and_normal(outputs, project):
    out = _ok(outputs["render --views 4 --depth --normal"])
    assert "✓ render done in" in out
    d = project / "renders" / "refine"
    for name in ("views", "views_depth", "views_normal"):
        # the grid video: the four views side by side
        assert video_props(d / f"{name}.mp4") == (VIEW_FRAMES, (4 * SIZE, SIZE), FPS), name
    for k in range(4):
        for suffix in ("", "_depth", "_normal"):
            assert video_props(d / f"view_{k:02d}{suffix}.mp4") == (VIEW_FRAMES, (SIZE, SIZE), FPS)


def test_export_writes_the_animated_glb_and_the_flipbook(outputs, project):
    """`export` after run-all: one mesh with a morph target per frame (the tiny preset's 4), a texture and
    the turntable; `export --flipbook`: a mesh per frame. The animated file is the smaller one."""
    from helpers_meshes import read_glb

    out = _ok(outputs["export"])
    assert "✓ export done in" in out and "density level" in out and "fit error per frame" in out
    assert "watertight: True" not in out and "glb: runs/toy/export/refine/mesh.glb" in out
    d = project / "export" / "refine"
    g = read_glb(d / "mesh.glb")
    assert len(g["doc"].meshes) == 1 and len(g["frames"]) == 4 and len(g["doc"].animations) == 1
    assert "texture" in g and (d / "turntable.png").is_file() and (d / "turntable.mp4").is_file()
    out = _ok(outputs["export --flipbook"])
    assert "flipbook: 4 meshes" in " ".join(out.split())
    assert len(list((d / "frames").glob("frame_*.ply"))) == 4  # the tiny preset's export.frames
    assert (d / "flipbook.glb").stat().st_size > 0


def test_evaluate_writes_the_metrics(outputs, project):
    out = _ok(outputs["evaluate"])
    for label in ("CLIP-I", "CLIP-T", "temporal", "PSNR (mask)", "SSIM (mask)"):
        assert label in out
    metrics = json.loads((project / "metrics.json").read_text())
    assert metrics["stage"] == "refine" and -1 <= metrics["clip_i"] <= 1


def test_report_shows_every_output_and_loads_in_headless_chromium(outputs, project, tmp_path):
    out = _ok(outputs["report"])
    assert (
        "project: runs/toy (the only project under ./runs)" in out and "report: runs/toy/report.html" in out
    )
    page = (project / "report.html").read_text()
    for ref in ("renders/refine/views_depth.mp4", "export/refine/mesh.glb", "metrics.json"):
        assert ref in page, ref
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium on this machine and none could be installed (.ci/run installs Debian's chromium)"
        )
    browser = HeadlessChromium(exe, Path(tempfile.mkdtemp(prefix="a124-chromium-")))
    try:
        session = browser.open((project / "report.html").as_uri(), width=1280, height=900)
        result = browser.evaluate(session, MEDIA_CHECK_JS)
        shot = browser.screenshot(session, tmp_path / "report.png")
    finally:
        browser.close()
    broken = [i["src"] for i in result["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    silent = [v for v in result["videos"] if not v["ok"]]
    assert not silent, f"videos without a duration: {silent}"
    srcs = {v["src"] for v in result["videos"]}
    assert {"renders/refine/orbit.mp4", "renders/refine/views.mp4", "refine/previews/latest.mp4"} <= srcs
    assert len(result["images"]) >= 5 and result["svgs"] >= 4
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = os.environ.get("ANIMATE124_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "e2e-report.png")


def test_the_acceptance_record_reads_a_real_run(first_run, project, tmp_path):
    """benchmarks/paper_schedule.py on the tiny run-all project (the issue-12 JSON's shape and sources)."""
    import sys

    _ok(first_run[0])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import paper_schedule

    rec = paper_schedule.main(["--project", str(project), "--card", "cpu", "--out", str(tmp_path / "s.json")])
    assert json.loads((tmp_path / "s.json").read_text()) == rec
    assert set(rec["stages"]) == {"invert", "static", "dynamic", "refine"}
    for v in rec["stages"].values():
        assert v["it_s"] > 0 and v["steps_run"] >= 2 and v["peak_allocated_gib"] is None  # no CUDA here
    for s in ("dynamic", "refine"):  # the clips' sample counts, logged by the 4D stages
        assert rec["stages"][s]["samples_windows"] and all(
            w[2] > 0 for w in rec["stages"][s]["samples_windows"]
        )
    assert rec["projected_total_min"] > 0
