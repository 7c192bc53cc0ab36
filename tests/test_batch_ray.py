"""``animate124 batch`` on a local Ray (CPU, tiny preset with a few steps per stage), as a user types it.

A batch of three rows, one of them a bad image: the two good assets finish, the bad one is reported with a
one-line reason, and the command exits 3; the same command again does no work and says so; a second batch
whose driver is killed with SIGKILL mid-training, then run again, ends with the same tensors as the
uninterrupted one (``torch.equal``); the index page loads in headless Chromium; two Ray tasks building the
tiny model cache at once share it. No Ray process of a batch is left once it has ended.

Skipped when Ray is not installed (``pip install "animate124[batch]"``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "animate124[batch]"')
import torch  # noqa: E402
from helpers_cli import animate124_command  # noqa: E402
from helpers_outputs import MEDIA_CHECK_JS, HeadlessChromium, find_chromium  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Few steps per stage; static runs long enough to be killed in the middle of it: the kill comes at its first
#: checkpoint (step 5, the tiny preset's cadence), and the workers outlive the driver by a few seconds.
SETTINGS = ["--preset", "tiny", "--set", "invert.steps=2", "--set", "static.iters=30",
            "--set", "dynamic.iters=2", "--set", "refine.iters=2"]  # fmt: skip
LIMIT_S = 600


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the batch's driver is started as a session leader)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


#: Ray's per-node agents, which outlive a SIGKILLed driver by up to a minute before they notice.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


class Batch:
    """``animate124 batch ...`` in one folder, each run in its own session (so that its Ray processes
    can be found and, after a SIGKILL of the driver, ended)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {
            **os.environ,
            "PYTHONPATH": path,
            "ANIMATE124_STATE_DIR": str(cwd / ".state"),
            "COLUMNS": "200",
        }

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*animate124_command(), "batch", *args], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.start(*args)
        try:
            out, err = proc.communicate(timeout=LIMIT_S)
        finally:
            self.end(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    @staticmethod
    def end(proc: subprocess.Popen, wait_s: float = 20.0, but: tuple[str, ...] = ()) -> list[int]:
        """Wait for the session's processes to go (Ray's shutdown), except those whose command line
        starts with one of ``but``; kill what is left; return those pids."""
        if proc.poll() is None:
            proc.kill()
        deadline = time.time() + wait_s
        while time.time() < deadline and any(
            not _cmdline(p).startswith(but) for p in _session_pids(proc.pid)
        ):
            time.sleep(0.2)
        left = [p for p in _session_pids(proc.pid) if not but or not _cmdline(p).startswith(but)]
        for pid in _session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return left


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    work = tmp_path_factory.mktemp("batch")
    shutil.copy(REPO / "examples" / "toy.png", work / "toy.png")
    shutil.copy(REPO / "examples" / "toy.png", work / "robot.png")
    (work / "bad.png").write_text("this is not an image\n")
    (work / "jobs.csv").write_text(
        "image,prompt\ntoy.png,a toy is spinning\nbad.png,a cat is jumping\nrobot.png,a robot is dancing\n"
    )
    return Batch(work)


@pytest.fixture(scope="module")
def first(batch) -> tuple[subprocess.CompletedProcess, list[int]]:
    """The uninterrupted batch (``--json``), and the processes of its session left after it ended."""
    proc = batch.start("jobs.csv", "--out", "runs", *SETTINGS, "--json")
    out, err = proc.communicate(timeout=LIMIT_S)
    left = batch.end(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left


def _lines(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(x) for x in r.stdout.splitlines()]


def test_a_bad_row_fails_alone_and_the_batch_exits_3(first, batch):
    r, left = first
    assert r.returncode == 3, f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr[-4000:]}"
    *assets, summary = _lines(r)
    by = {a["asset"]: a for a in assets}
    assert len(assets) == 3 and set(by) == {
        "toy",
        "bad",
        "robot",
    }  # one JSON line per asset, then the summary
    for name in ("toy", "robot"):
        a = by[name]
        assert a["status"] == "done" and a["ran"] is True and a["error"] is None, a
        assert [s["stage"] for s in a["stages"]] == [
            "preprocess",
            "invert",
            "static",
            "dynamic",
            "refine",
            "render",
            "report",
        ]
        assert (
            Path(a["report"]).is_file()
            and (batch.cwd / "runs" / name / "renders" / "refine" / "orbit.mp4").is_file()
        )
    bad = by["bad"]
    assert bad["status"] == "invalid" and bad["ran"] is False and bad["project"] is None
    assert bad["error"]["message"] == "not an image (or an unsupported format): bad.png"  # as the row says
    assert "warning: bad (row 2) invalid: not an image" in r.stderr  # said before the runs start
    assert summary["exit_code"] == 3 and summary["counts"]["done"] == 2 and summary["counts"]["invalid"] == 1
    assert [a["asset"] for a in summary["assets"]] == ["toy", "bad", "robot"]  # row order
    assert summary["error"] is None
    assert json.loads((batch.cwd / "runs" / "batch.json").read_text()) == {
        k: v for k, v in summary.items() if k != "error"
    }
    assert not (batch.cwd / "runs" / "bad").exists()
    assert left == [], f"Ray processes left after the batch ended: {left}"
    # each run went through a Ray task in its own worker process, one CPU thread each (num_cpus=1)
    recs = [json.loads((batch.cwd / "runs" / ".batch" / f"{n}.json").read_text()) for n in ("toy", "robot")]
    assert recs[0]["pid"] != recs[1]["pid"] and {r["threads"] for r in recs} == {1}


def test_the_same_command_again_does_no_work_and_says_so(first, batch):
    runs = batch.cwd / "runs"
    before = {str(p): p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    r = batch("jobs.csv", "--out", "runs", *SETTINGS)
    took = time.perf_counter() - t0
    assert r.returncode == 3, r.stderr[-3000:]
    text = " ".join(r.stdout.split())
    assert "3 assets: 0 to run, 2 up to date, 0 failed earlier, 1 invalid" in text
    assert "nothing to run" in text and "no work done" in text and "2 up-to-date, 1 invalid" in text
    assert "Ray:" not in text  # Ray was not even started
    after = {str(p): p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    changed = sorted(p for p in after if before.get(p) != after[p])
    # the statuses (done -> up-to-date) and the lock's holder; no project file
    assert changed == sorted(str(runs / n) for n in (".batch/lock", "batch.json", "index.html")), changed
    assert took < 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_bad_device_exits_2_before_any_run_and_leaves_no_ray(batch):
    """``--device cuda`` on a machine without one: the device check runs beside Ray's start (it imports torch),
    yet the batch still exits 2 with run-all's message before any task, and the Ray it started is gone."""
    proc = batch.start("jobs.csv", "--out", "runs-bad-device", *SETTINGS, "--device", "cuda")
    out, err = proc.communicate(timeout=LIMIT_S)
    left = batch.end(proc, but=RAY_AGENTS)
    assert proc.returncode == 2, err[-3000:]
    assert "run.device is cuda but this machine has no usable CUDA GPU" in " ".join(err.split())
    assert not left, [_cmdline(p) for p in left]
    runs = batch.cwd / "runs-bad-device"
    assert not (runs / ".batch").exists() or not list((runs / ".batch").glob("*.json"))
    assert not (runs / "toy").exists() and not (runs / "batch.json").exists()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


#: What the killed batch is compared on: the stages up to the one it was killed in (static, --until static).
RESULTS = (
    "invert/learned_embeds.safetensors",
    "static/model.safetensors",
    "static/checkpoints/ckpt-0000030.safetensors",
)


def _lock_pid(project: Path) -> int | None:
    """The pid in a project's lock (the process running its stage), or None when there is none."""
    try:
        return int(json.loads((project / ".lock").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _start_and_wait_for_a_checkpoint(
    batch: Batch, out: str, *args: str
) -> tuple[subprocess.Popen, list[Path]]:
    """Start a batch (--until static) and return once a static checkpoint of an asset exists."""
    proc = batch.start("jobs.csv", "--out", out, *SETTINGS, "--until", "static", *args)
    ckpts = [batch.cwd / out / n / "static" / "checkpoints" for n in ("toy", "robot")]
    deadline = time.time() + LIMIT_S
    while (
        time.time() < deadline and proc.poll() is None and not any(list(c.glob("ckpt-*.json")) for c in ckpts)
    ):
        time.sleep(0.05)
    assert proc.poll() is None, f"the batch ended before a checkpoint: {proc.stderr.read()[-3000:]}"
    return proc, ckpts


def test_sigkill_of_the_driver_then_a_rerun_equals_the_uninterrupted_batch(first, batch):
    """Killed mid-static (--until static keeps it short); the rerun resumes from the checkpoint and ends with
    the tensors of the uninterrupted batch's stages up to static."""
    assert first[0].returncode == 3
    proc, ckpts = _start_and_wait_for_a_checkpoint(batch, "killed", "-q")
    # The training task's worker holds its project's lock. Ray ends a dead driver's workers only once it notices
    # (up to seconds), time in which a tiny static stage can finish: so that the kill is mid-training, as a lost
    # host's would be, that worker is killed at once with the driver. The rest of the driver's Ray processes and
    # tasks must die with it (checked below).
    workers = [_lock_pid(c.parent.parent) for c in ckpts if c.exists()]
    os.kill(proc.pid, signal.SIGKILL)
    for pid in filter(None, workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = batch.end(proc, wait_s=60, but=RAY_AGENTS)
    assert left == [], f"processes of the killed batch still running after 60 s: {left}"
    static = [
        json.loads((c.parent.parent / "manifest.json").read_text())["stages"]["static"]
        for c in ckpts
        if c.exists()
    ]
    assert any(s["status"] == "running" for s in static)  # killed mid-training: the manifest still says so
    r = batch("jobs.csv", "--out", "killed", *SETTINGS, "--until", "static", "--json")
    assert r.returncode == 3, r.stderr[-4000:]
    summary = _lines(r)[-1]
    assert summary["counts"]["done"] >= 1 and summary["counts"]["done"] + summary["counts"]["up-to-date"] == 2
    resumed = [s for a in summary["assets"] for s in a["stages"] if s["stage"] == "static" and s["resumed"]]
    assert resumed, "the killed static stage did not resume from its checkpoint"
    for name in ("toy", "robot"):
        for rel in RESULTS:
            a, b = _tensors(batch.cwd / "runs" / name / rel), _tensors(batch.cwd / "killed" / name / rel)
            assert a.keys() == b.keys(), (name, rel)
            for k in a:
                assert torch.equal(a[k], b[k]), (name, rel, k)


def test_ctrl_c_lets_the_runs_checkpoint_and_exits_130(batch):
    proc, ckpts = _start_and_wait_for_a_checkpoint(batch, "stopped", "--json")
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends the driver
    out, err = proc.communicate(timeout=LIMIT_S)
    # Ray's own shutdown (raylet, GCS, agents) can take tens of seconds on a loaded 2-core machine (CI
    # failed at the 20 s default once): the same 60 s the SIGKILL test allows
    left = batch.end(proc, wait_s=60)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: progress is saved" in err
    summary = json.loads(out.splitlines()[-1])
    assert (
        summary["exit_code"] == 130
        and json.loads((batch.cwd / "stopped" / "batch.json").read_text())["exit_code"] == 130
    )
    states = {a["asset"]: a["status"] for a in summary["assets"]}
    assert states["bad"] == "invalid" and {states["toy"], states["robot"]} <= {
        "interrupted",
        "done",
        "not-started",
    }
    assert "interrupted" in states.values()
    from animate124.engine.checkpoint import load_latest_checkpoint

    for c in ckpts:  # a static stage stopped by the cancel saved the step it had reached
        project = c.parent.parent
        if not project.exists():
            continue
        static = json.loads((project / "manifest.json").read_text())["stages"].get("static", {})
        log = project / "logs" / "static.jsonl"
        steps = [json.loads(x)["step"] for x in log.read_text().splitlines()] if log.exists() else []
        if static.get("status") == "interrupted" and steps:
            assert load_latest_checkpoint(c).step == steps[-1], project.name
    assert left == [], f"Ray processes left after Ctrl-C: {left}"


def test_the_index_page_links_every_asset_and_loads_in_headless_chromium(first, batch, tmp_path):
    page = (batch.cwd / "runs" / "index.html").read_text()
    for name in ("toy", "robot"):
        assert f'href="{name}/report.html"' in page and f'src="{name}/renders/refine/orbit.mp4"' in page
    assert "not an image" in page
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    browser = HeadlessChromium(exe, Path(tempfile.mkdtemp(prefix="a124-chromium-")))
    try:
        session = browser.open((batch.cwd / "runs" / "index.html").as_uri(), width=1000, height=700)
        result = browser.evaluate(session, MEDIA_CHECK_JS)
        shot = browser.screenshot(session, tmp_path / "index.png")
    finally:
        browser.close()
    videos = {v["src"]: v for v in result["videos"]}
    assert set(videos) == {"toy/renders/refine/orbit.mp4", "robot/renders/refine/orbit.mp4"}
    assert all(v["ok"] and v["width"] == 32 for v in videos.values()), videos
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def local_ray():
    """A Ray on this machine with 2 CPUs, shut down after the test. ``ray.init`` sets SIGTERM/SIGINT handlers
    in this (pytest's) process that ``ray.shutdown`` leaves: they are put back, so later tests see pytest's."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_two_ray_tasks_share_an_empty_model_cache(local_ray, tmp_path):
    def build_and_read(cache: str, barrier: str) -> tuple[float, float, dict[str, str]]:
        """In a Ray task: wait until both tasks are there, then build the tiny model cache (if missing)
        and resolve every role from it."""
        from animate124.config import resolve_config
        from animate124.engine.runtime import model_store
        from animate124.models.registry import ROLES

        Path(barrier, str(os.getpid())).touch()
        deadline = time.time() + 120
        while len(list(Path(barrier).iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.01)
        t0 = time.time()
        store = model_store(resolve_config("tiny", None, {"models": {"cache_dir": cache}}, []))
        paths = {role: str(store.resolve(role)) for role in ROLES}
        return t0, time.time(), paths

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    task = local_ray.remote(num_cpus=1)(build_and_read)  # a local function travels by value
    a, b = local_ray.get([task.remote(str(tmp_path / "cache"), str(barrier)) for _ in range(2)])
    assert len(list(barrier.iterdir())) == 2 and a[0] < b[1] and b[0] < a[1], "the two tasks did not overlap"
    assert a[2] == b[2] and all(Path(p).is_dir() for p in a[2].values())
