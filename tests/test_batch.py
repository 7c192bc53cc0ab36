"""``animate124 batch`` without Ray: the rows of a jobs file or folder and their names, run-all's checks per
row, what a rerun decides from the last records, where runs are placed, one task's body in this process
(its records, errors and log), the live table, the index page, and the message when Ray is missing.

The batch on a real local Ray (CPU, tiny preset) is tests/test_batch_ray.py."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from animate124.batch import jobs as jobs_mod
from animate124.batch.driver import Progress, asset_progress, last_log_line, placement
from animate124.batch.plan import RUN, fetch_models, plan_assets, state_dir
from animate124.batch.summary import asset_record, exit_code, index_page, summary
from animate124.batch.task import AssetJob, read_state, run_asset, write_state
from animate124.cli.app import app
from animate124.config import resolve_config
from animate124.errors import ConfigError
from animate124.fileio import file_sha256
from animate124.project import Project

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"


def make_config(options, row_sets):
    return resolve_config("tiny", None, options, list(row_sets))


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(TOY, d / "toy.png")
    shutil.copy(TOY, d / "robot.png")
    (d / "bad.png").write_text("not an image")
    return d


def _csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# --- rows and names --------------------------------------------------------------------------------
def test_csv_rows_paths_sets_and_names(images):
    f = _csv(
        images / "jobs.csv",
        """
Image,Prompt,Static-Prompt,set
toy.png,a toy is spinning,,static.iters=3; dynamic.iters=4
toy.png,"a toy, jumping",a toy,
robot.png,a robot is dancing,,
""",
    )
    rows = jobs_mod.read_rows(f)
    assert [r.number for r in rows] == [1, 2, 3]
    assert rows[0].image == images / "toy.png" and rows[0].sets == ("static.iters=3", "dynamic.iters=4")
    assert rows[1].prompt == "a toy, jumping" and rows[1].static_prompt == "a toy"
    # the two toy rows share a stem: each gets its own 6-hex suffix; the robot keeps its stem
    assert rows[2].name == "robot"
    assert (
        rows[0].name.startswith("toy-") and rows[1].name.startswith("toy-") and rows[0].name != rows[1].name
    )
    assert all(r.problem is None for r in rows)
    # the names depend on the row only: reordered, the rows keep them
    g = _csv(images / "jobs2.csv", "\n".join(f.read_text().splitlines()[i] for i in (0, 3, 2, 1)))
    assert {r.prompt: r.name for r in jobs_mod.read_rows(g)} == {r.prompt: r.name for r in rows}


def test_jsonl_rows_and_the_rows_that_cannot_run(images):
    f = images / "jobs.jsonl"
    lines = [
        {"image": "toy.png", "prompt": "a toy is spinning", "name": "first", "set": {"static.iters": 3}},
        {"image": "robot.png", "prompt": "a robot is dancing", "name": "first"},  # the name again
        {"image": "toy.png", "prompt": "a toy is spinning"},
        {"image": "toy.png", "prompt": "a toy is spinning"},  # the same row again
        {"image": "robot.png", "prompt": "  ", "set": ["refine.iters=2"]},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = jobs_mod.read_rows(f)
    assert rows[0].name == "first" and rows[0].sets == ("static.iters=3",)
    assert rows[1].problem == "the name 'first' is also the name of row 1"
    assert rows[2].name == "toy" and rows[2].problem is None
    assert rows[3].problem == "the same image and prompt as row 3"
    assert rows[4].problem == "the motion prompt is empty" and rows[4].sets == ("refine.iters=2",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,promt\ntoy.png,a toy", "unknown column 'promt'"),
        ("prompt\na toy is spinning", "row 1 has no image"),
        ("", "is empty"),
        ("image,prompt\n", "holds no rows"),
        ("image,prompt\ntoy.png,a toy,spinning", "3 values for 2 columns"),
    ],
)
def test_a_bad_jobs_file_is_a_usage_error(images, text, message):
    with pytest.raises(ConfigError, match=message):
        jobs_mod.read_rows(_csv(images / "jobs.csv", text) if text else _empty(images))


def _empty(images: Path) -> Path:
    (images / "jobs.csv").write_text("")
    return images / "jobs.csv"


def test_a_folder_with_a_prompt_or_a_prompts_file(images, tmp_path):
    rows = jobs_mod.read_rows(images, prompt="a thing is spinning")
    assert [(r.name, r.prompt) for r in rows] == [
        ("bad", "a thing is spinning"),
        ("robot", "a thing is spinning"),
        ("toy", "a thing is spinning"),
    ]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one per image\ntoy.png: a toy is spinning\nrobot: a robot: dancing\n")
    rows = {r.name: r for r in jobs_mod.read_rows(images, prompts_file=prompts)}
    assert rows["toy"].prompt == "a toy is spinning" and rows["robot"].prompt == "a robot: dancing"
    assert rows["bad"].problem == f"no prompt for bad.png in {prompts}"
    prompts.write_text("cat.png: a cat\n")
    with pytest.raises(ConfigError, match="names images that are not in"):
        jobs_mod.read_rows(images, prompts_file=prompts)
    with pytest.raises(ConfigError, match="needs --prompt or --prompts"):
        jobs_mod.read_rows(images)


# --- run-all's checks per row, and what a rerun decides -------------------------------------------
def test_rows_are_checked_with_run_alls_checks_before_anything_is_written(images, tmp_path):
    out = tmp_path / "out"
    other = out / "robot"  # a project made from another image
    Project(other).create(images / "bad.png", "0" * 64)
    long_prompt = "a toy is spinning " + " ".join(["and jumping"] * 40)
    from PIL import Image

    Image.new("RGBA", (256, 256), (255, 0, 0, 0)).save(images / "clear.png")  # alpha with no object
    f = images / "jobs.jsonl"
    rows = [
        {"image": "clear.png", "prompt": "a toy is spinning"},
        {"image": "toy.png", "prompt": "a toy is spinning"},
        {"image": "bad.png", "prompt": "a cat is jumping"},
        {"image": "toy.png", "prompt": "🐼", "name": "emoji"},
        {"image": "toy.png", "prompt": long_prompt, "name": "long"},
        {"image": "toy.png", "prompt": "a toy is spinning", "name": "badset", "set": ["static.iterz=2"]},
        {"image": "toy.png", "prompt": "a toy is spinning", "name": "device", "set": ["run.device=cpu"]},
        {"image": "robot.png", "prompt": "a robot is dancing"},
        {"image": "missing.png", "prompt": "a toy is spinning"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    assets = {
        a.name: a
        for a in plan_assets(jobs_mod.read_rows(f), out, make_config, until=None, retry_failed=False)
    }
    assert assets["toy"].action == RUN and assets["toy"].error is None and assets["toy"].key
    assert assets["toy"].cfg.static.prompt == "a high-resolution DSLR image of a toy"
    assert assets["toy"].image_alpha is True  # toy.png has an alpha channel: no matting model needed
    reasons = {n: (a.action, a.error["type"], a.error["message"]) for n, a in assets.items() if n != "toy"}
    assert reasons["bad"] == (
        "invalid",
        "InputError",
        f"not an image (or an unsupported format): {images / 'bad.png'}",
    )
    assert reasons["emoji"][:2] == ("invalid", "ConfigError") and "which object" in reasons["emoji"][2]
    # run-all's pre-flight, word for word: the prompt counted as its prior encodes it, the empty alpha
    assert reasons["long"][:2] == ("invalid", "InputError")
    assert reasons["long"][2].startswith("the dynamic prompt with its suffix")
    assert reasons["clear"][:2] == ("invalid", "InputError") and "no foreground" in reasons["clear"][2]
    for name, image, prompt in (
        ("long", "toy.png", long_prompt),
        ("clear", "clear.png", "a toy is spinning"),
    ):
        r = CliRunner().invoke(
            app,
            ["run-all", str(images / image), prompt, "-p", str(tmp_path / "solo"), "--preset", "tiny"],
            env={"COLUMNS": "1000"},
        )
        assert r.exit_code == 2 and f"error: {reasons[name][2]}" in r.output, r.output
    assert reasons["badset"][:2] == ("invalid", "ConfigError") and "iterz" in reasons["badset"][2]
    assert reasons["device"][2] == "run.device is the batch's (--device, --gpus-per-run), not a row's"
    assert (
        reasons["robot"][:2] == ("invalid", "InputError") and "made from another image" in reasons["robot"][2]
    )
    assert reasons["missing"][:2] == ("invalid", "InputError")
    assert all("\n" not in r[2] for r in reasons.values())  # one line each
    assert sorted(p.name for p in out.iterdir()) == ["robot"]  # nothing written by the checks


def _done_project(
    root: Path, stages=("preprocess", "invert", "static", "dynamic", "refine", "render", "report")
):
    p = Project(root)
    p.create(TOY, file_sha256(TOY))
    for s in stages:
        p.update_stage(s, status="done")
    return p


def test_a_rerun_skips_finished_assets_leaves_failed_ones_and_runs_the_rest(images, tmp_path):
    out = tmp_path / "out"
    f = _csv(images / "jobs.csv", "image,prompt\ntoy.png,a toy is spinning\nrobot.png,a robot is dancing")

    def plan(retry=False):
        return {
            a.name: a
            for a in plan_assets(jobs_mod.read_rows(f), out, make_config, until=None, retry_failed=retry)
        }

    first = plan()
    assert {a.action for a in first.values()} == {RUN}
    key = first["toy"].key
    assert plan()["toy"].key == key  # the key depends on the row, the config and the image only
    _done_project(out / "toy")
    write_state(state_dir(out) / "toy.json", {"key": key, "status": "done"})
    error = {"type": "InputError", "message": "no foreground", "hint": None}
    write_state(
        state_dir(out) / "robot.json", {"key": first["robot"].key, "status": "failed", "error": error}
    )
    again = plan()
    assert again["toy"].action == "up-to-date"
    assert again["robot"].action == "failed" and again["robot"].error == error
    assert plan(retry=True)["robot"].action == RUN
    # a changed setting, a project that lost a stage, or a run killed mid-way ("running"): run again
    changed = plan_assets(
        jobs_mod.read_rows(f),
        out,
        lambda o, s: make_config(o, [*s, "static.iters=3"]),
        until=None,
        retry_failed=False,
    )
    assert changed[0].action == RUN and changed[0].key != key
    Project(out / "toy").update_stage("refine", status="interrupted")
    assert plan()["toy"].action == RUN
    write_state(state_dir(out) / "toy.json", {"key": key, "status": "running"})
    assert plan()["toy"].action == RUN
    # --until dynamic: the stages up to dynamic decide
    Project(out / "toy").update_stage("refine", status="done")
    short = plan_assets(jobs_mod.read_rows(f), out, make_config, until="dynamic", retry_failed=False)[0]
    assert short.key != key
    write_state(state_dir(out) / "toy.json", {"key": short.key, "status": "done"})
    assert (
        plan_assets(jobs_mod.read_rows(f), out, make_config, until="dynamic", retry_failed=False)[0].action
        == "up-to-date"
    )


def test_a_finished_asset_whose_initializer_the_preflight_replaced_is_up_to_date(images, tmp_path):
    """'robot' is not one token of the tiny tokenizer: the pre-flight runs invert with "object". Once the
    task has run, the same row is up to date (the decision does not change the row's key)."""
    out = tmp_path / "out"
    f = _csv(images / "jobs.csv", "image,prompt\nrobot.png,a robot is dancing")

    def plan():
        (a,) = plan_assets(jobs_mod.read_rows(f), out, lambda o, s: make_config(o, [*s, "invert.steps=2"]),
                           until="invert", retry_failed=False)  # fmt: skip
        return a

    first = plan()
    assert first.cfg.invert.initializer == "object" and first.prompts.initializer == "object"
    assert first.decisions == ("textual-inversion initializer: object ('robot' is not one token of the text "
                               "encoder, so 'object' is used)",)  # fmt: skip
    rec = run_asset(first.job("invert"))
    assert rec["status"] == "done" and [s["stage"] for s in rec["stages"]] == ["preprocess", "invert"]
    assert Project(first.project).read_manifest()["prompts"]["initializer"] == "object"
    again = plan()
    assert again.action == "up-to-date" and again.key == first.key
    assert again.prompts.initializer == "robot"  # as run-all: invert will not run again


def test_models_are_fetched_once_and_offline_is_a_clear_error(images, tmp_path, monkeypatch):
    from animate124.errors import DownloadError

    f = _csv(images / "jobs.csv", "image,prompt\ntoy.png,a toy is spinning\nrobot.png,a robot is dancing")
    tiny = plan_assets(jobs_mod.read_rows(f), tmp_path / "o", make_config, until=None, retry_failed=False)
    assert fetch_models(tiny, None) == []  # the tiny models are built, not fetched
    cache = tmp_path / "cache"

    def paper(options, sets):
        return resolve_config("paper", None, options, [*sets, f"models.cache_dir={cache}"])

    assets = plan_assets(jobs_mod.read_rows(f), tmp_path / "o", paper, until="invert", retry_failed=False)
    with pytest.raises(DownloadError, match="offline"):  # tests run with HF_HUB_OFFLINE=1
        fetch_models(assets, "invert")
    calls = []
    from animate124.models.store import ModelStore

    monkeypatch.setattr(
        ModelStore, "download", lambda self, role, progress=True, alternative=None: calls.append(role)
    )
    assert fetch_models(assets, "invert") == ["depth", "sd"]  # toy.png has alpha: no matting; once each
    assert calls == ["depth", "sd"]


# --- placement -------------------------------------------------------------------------------------
def test_where_runs_go():
    gpus = {"CPU": 16.0, "GPU": 2.0}
    p = placement("auto", None, None, gpus, local=True)
    assert (p.num_gpus, p.num_cpus, p.device) == (1.0, 8.0, "auto")  # a GPU each and its share of CPUs
    assert placement("auto", 0.5, None, gpus, local=True).num_cpus == 4.0
    assert placement("cpu", None, None, gpus, local=True) == placement("auto", 0, None, gpus, local=True)
    assert placement("auto", None, None, {"CPU": 2.0}, local=True).device == "cpu"  # no GPU: CPU runs
    assert placement("auto", None, 2, {"CPU": 2.0}, local=True).num_cpus == 2
    for args, message in [
        (("cuda:1", None, None, gpus), "Ray gives each run its GPU"),
        (("cpu", 1, None, gpus), "--device cpu with --gpus-per-run"),
        (("cuda", 0, None, gpus), "needs a GPU per run"),
        (("auto", 4, None, gpus), "this machine has 2"),
        (("auto", None, 32, gpus), "this machine has 16 CPUs"),
        (("auto", -1, None, gpus), ">= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            placement(*args, local=True)
    assert placement("auto", 4, None, gpus, local=False).num_gpus == 4  # a cluster may grow: Ray waits


# --- one task, in this process ---------------------------------------------------------------------
def _job(tmp_path: Path, image: Path = TOY, **cfg_sets) -> AssetJob:
    from animate124.stages.pipeline import derive_prompts

    prompts = derive_prompts("a toy is spinning")
    cfg = make_config(
        {"invert": {"initializer": prompts.initializer}}, [f"{k}={v}" for k, v in cfg_sets.items()]
    )
    return AssetJob(
        name="toy", row=1, project=str(tmp_path / "out" / "toy"), image=str(image), cfg=cfg, prompts=prompts,
        until="preprocess", key="k1", state_file=str(tmp_path / "out" / ".batch" / "toy.json"),
    )  # fmt: skip


def test_a_task_records_its_stages_and_a_rerun_is_up_to_date(tmp_path):
    job = _job(tmp_path)
    rec = run_asset(job)
    assert rec["status"] == "done" and rec["error"] is None and rec["key"] == "k1"
    assert [s["stage"] for s in rec["stages"]] == ["preprocess"] and rec["threads"] >= 1
    assert read_state(job.state_file) == rec
    assert (Path(job.project) / "logs" / "batch.log").is_file()
    again = run_asset(job)
    assert again["status"] == "up-to-date" and again["stages"][0]["skipped"] is True


def test_a_task_that_fails_records_one_line_and_logs_the_traceback(tmp_path, monkeypatch):
    import torch

    from animate124.stages import pipeline

    job = _job(tmp_path)
    for exc, kind, words in [
        (RuntimeError("boom\nsecond line"), "RuntimeError", "internal error: RuntimeError: boom second line"),
        (
            torch.OutOfMemoryError("CUDA out of memory"),
            "OutOfMemoryError",
            "out of GPU memory during asset toy",
        ),
    ]:

        def fail(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(pipeline, "run_pipeline", fail)
        rec = run_asset(job)
        assert rec["status"] == "failed" and rec["error"]["type"] == kind
        assert rec["error"]["message"].startswith(words) and "\n" not in rec["error"]["message"]
    log = (Path(job.project) / "logs" / "batch.log").read_text()
    assert "Traceback" in log and "boom" in log and "raymarch.checkpoint_field" in rec["error"]["hint"]

    def interrupted(*a, on_start, **k):
        on_start(type("S", (), {"name": "static"})())
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    rec = run_asset(job)
    assert rec["status"] == "interrupted" and rec["stage"] == "static"


def test_progress_is_read_from_the_record_and_the_stage_log(tmp_path):
    out = tmp_path / "out"
    f = _csv(tmp_path / "jobs.csv", f"image,prompt\n{TOY},a toy is spinning")
    (asset,) = plan_assets(jobs_mod.read_rows(f), out, make_config, until=None, retry_failed=False)
    now = time.time()
    assert asset_progress(asset, now) == Progress("toy", "queued")
    write_state(asset.state_file, {"key": asset.key, "status": "running", "stage": "static",
                                   "started": now - 65, "stage_started": now - 5})  # fmt: skip
    log = asset.project / "logs" / "static.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(
        json.dumps({"step": 900, "time": now - 100, "it_s": 9.0})
        + "\n"  # an older run of the stage
        + json.dumps({"step": 3, "time": now - 1, "it_s": 2.5})
        + "\n"
    )
    p = asset_progress(asset, now)
    assert (p.state, p.stage, p.step, p.total, p.it_s) == ("running", "static", 3, 8, 2.5)
    assert 64 < p.elapsed < 66
    log.write_text(json.dumps({"step": 900, "time": now - 100}) + "\n")
    assert last_log_line(log, since=now - 5) is None and asset_progress(asset, now).step is None


def test_the_live_table_shows_running_queued_and_finished(tmp_path):
    from animate124.cli.batch import BatchTable

    console = Console(record=True, width=100, height=30, force_terminal=False)
    t = BatchTable(console, ["a", "b", "c"], {})
    t.update([Progress("a", "running", "dynamic", 40, 300, 1.25, 3725.0), Progress("b", "queued")])
    t.result("c", {"status": "failed", "stage": "static", "stages": [], "ran": True, "seconds": 12.0})
    console.print(t)
    lines = [" ".join(x.split()) for x in console.export_text().splitlines()]
    assert "a dynamic 40/300 1.25 1:02:05 running" in lines
    assert "b queued" in lines and "c static 0:00:12 failed" in lines
    assert "1 running, 1 queued, 1 failed" in lines


# --- the summary and the index page ----------------------------------------------------------------
def test_summary_exit_code_and_the_index_page(images, tmp_path):
    out = tmp_path / "out"
    f = _csv(
        images / "jobs.csv",
        'image,prompt,name\ntoy.png,a toy is spinning,"a <b>&"\nbad.png,a cat is jumping,',
    )
    assets = plan_assets(jobs_mod.read_rows(f), out, make_config, until=None, retry_failed=False)
    proj = out / "a-b"
    (proj / "renders" / "dynamic").mkdir(parents=True)
    (proj / "renders" / "dynamic" / "orbit.mp4").write_bytes(b"")
    (proj / "report.html").write_text("")
    records = [
        asset_record(assets[0], {"status": "done", "seconds": 61.5, "stages": []}),
        asset_record(assets[1], None),
    ]
    assert [r["status"] for r in records] == ["done", "invalid"] and records[1]["ran"] is False
    data = summary(records, jobs=f, out=out, exit_code=exit_code(records))
    assert data["exit_code"] == 3 and data["counts"]["done"] == 1 and data["counts"]["invalid"] == 1
    assert exit_code(records[:1]) == 0
    page = index_page(data, out)
    assert '<video src="a-b/renders/dynamic/orbit.mp4"' in page and 'href="a-b/report.html"' in page
    assert "not an image" in page and "a toy is spinning" in page and "<b>" not in page


def test_sigterm_stops_the_batch_as_ctrl_c_does_and_exits_143(images, tmp_path, monkeypatch):
    """SIGTERM (a scheduler's preemption) while the tasks run: the driver's wait ends as after Ctrl-C (the
    runs are cancelled and checkpoint: test_batch_ray.py), batch.json records it, the exit code is 143."""
    pytest.importorskip("ray", reason='Ray is not installed: pip install "animate124[batch]"')
    import signal

    from animate124.batch import driver
    from animate124.engine.interrupt import Interrupted

    class NoRay:  # what the CLI asks of Ray before the tasks (the tasks themselves are run_tasks's)
        down = False

        def cluster_resources(self):
            return {"CPU": 2.0}

        def shutdown(self):
            self.down = True

    ray = NoRay()

    def terminated(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(driver, "start_ray", lambda address: (ray, True))
    monkeypatch.setattr(driver, "run_tasks", terminated)
    f = _csv(images / "jobs.csv", "image,prompt\ntoy.png,a toy is spinning\nbad.png,a cat is jumping")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["batch", str(f), "--out", str(out), "--preset", "tiny", "--json"])
    assert r.exit_code == 143, r.output
    assert "stopped by SIGTERM: progress is saved; run the same command again to resume" in r.output
    data = json.loads((out / "batch.json").read_text())
    assert data["exit_code"] == 143 and ray.down
    assert {a["asset"]: a["status"] for a in data["assets"]} == {"toy": "not-started", "bad": "invalid"}
    assert json.loads(r.stdout.splitlines()[-1])["exit_code"] == 143  # --json: the summary last


def test_the_ray_tests_skip_without_ray_and_say_how_to_install_it(without_ray):
    """The README's test command where Ray is not installed: the batch's Ray tests skip, naming the extra."""
    import os
    import subprocess

    path = os.pathsep.join(p for p in (without_ray, str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    tests = ["tests/test_batch_ray.py", "tests/test_batch.py::test_where_runs_go"]  # (a skip alone exits 5)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
        cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0 and "1 passed, 1 skipped" in r.stdout, r.stdout + r.stderr
    assert 'Ray is not installed: pip install "animate124[batch]"' in r.stdout


def test_batch_without_ray_says_how_to_install_it(images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    r = CliRunner().invoke(app, ["batch", str(images), "--prompt", "a toy", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "needs Ray, which is not installed" in r.output and 'pip install "animate124[batch]"' in r.output
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["batch", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--gpus-per-run" in r.output and "every node sees" in r.output


def test_a_second_batch_on_the_same_folder_is_refused_and_told_who_holds_it(tmp_path):
    """``batch_lock`` held by another process: refused at once with its pid; free again once it exits."""
    import os
    import subprocess

    from animate124.batch.summary import batch_lock
    from animate124.errors import ProjectLockedError

    out = tmp_path / "runs"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from animate124.batch.summary import batch_lock\n"
         f"with batch_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with (
            pytest.raises(
                ProjectLockedError, match=rf"another batch is running on .*runs \(pid {holder.pid}\)"
            ),
            batch_lock(out),
        ):
            pytest.fail("the lock was taken while another process held it")
        assert time.perf_counter() - t0 < 5  # refused at once, not after waiting
    finally:
        holder.kill()
        holder.wait()
    with batch_lock(out):  # the kernel dropped the dead holder's lock
        assert (state_dir(out) / "lock").read_text() == f"pid {os.getpid()}"
