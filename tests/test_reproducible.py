"""Runs are reproducible at the default thread count, and so are interrupted ones (issue 23).

Through the installed command, in subprocesses that keep PyTorch's default thread count (2 on CI): two
uninterrupted runs of static, dynamic and the orbit render with the same seed write the same bytes
(weights, checkpoints, orbit.mp4); a static or dynamic stage stopped with SIGTERM (checkpoint at the
current step, stage "interrupted", exit 143), run again and killed with SIGKILL once it has written a newer
checkpoint (stage left "running"), then run again to the end, writes the same weights as the uninterrupted
run, and its log has each step once, with the uninterrupted run's losses. (One chain of both signals per
stage: each resume is tested, and the suite starts three processes per stage instead of four.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers_cli import animate124_command

from animate124.project import Project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
ITERS = 12  # checkpoints at steps 3, 6, 9 and 12
SETS = (
    "--set",
    f"static.iters={ITERS}",
    "--set",
    f"dynamic.iters={ITERS}",
    "--set",
    "run.checkpoint_every=3",
)
PROMPTS = {"static": "a toy", "dynamic": "a toy is spinning"}


def _env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": path, "ANIMATE124_STATE_DIR": str(tmp / "state"), "COLUMNS": "200"}


def _stage_args(stage: str, project: Path) -> list[str]:
    return [
        *animate124_command(),
        stage,
        "-p",
        str(project),
        "--preset",
        "tiny",
        "--prompt",
        PROMPTS[stage],
        *SETS,
    ]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _newest_step(ckpt: Path) -> int:
    """The step of the newest checkpoint, by its name (reading it could race the trainer's clean-up)."""
    return max((int(p.name[5:12]) for p in ckpt.glob("ckpt-*.json")), default=0)


def _stop(
    stage: str, project: Path, env: dict[str, str], sig: int, after: int = 0
) -> tuple[subprocess.CompletedProcess, int]:
    """Start the stage, send ``sig`` once it has a checkpoint newer than step ``after``; returns (the
    finished process, the step of the newest checkpoint when the signal was sent)."""
    proc = subprocess.Popen(
        _stage_args(stage, project), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = project / stage / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and _newest_step(ckpt) <= after:
        time.sleep(0.02)
    assert proc.poll() is None, f"the stage ended before it could be stopped: {proc.communicate()}"
    at = _newest_step(ckpt)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), at


def _files(project: Path, stage: str) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in (project / stage).rglob("*.safetensors")}


def _losses(project: Path, stage: str) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"])
        for r in map(json.loads, (project / "logs" / f"{stage}.jsonl").read_text().splitlines())
    ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with preprocess and invert done (copied by each run)."""
    from animate124.config import resolve_config
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("repro") / "base"
    cfg = resolve_config("tiny")
    run_preprocess(Project(root), cfg, TOY)
    run_invert(Project(root), cfg, show_progress=False)
    return root


def _full_run(prepared: Path, where: Path) -> Path:
    project = where / "p"
    shutil.copytree(prepared, project)
    env = _env(where)
    for stage in ("static", "dynamic"):
        _run(_stage_args(stage, project), env)
    _run([*animate124_command(), "render", "-p", str(project), "--orbit"], env)
    return project


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> Path:
    return _full_run(prepared, tmp_path_factory.mktemp("a"))


def test_two_runs_give_the_same_bytes(prepared, uninterrupted, tmp_path):
    import torch
    from safetensors.torch import load_file

    other = _full_run(prepared, tmp_path)
    for stage in ("static", "dynamic"):
        a, b = _files(uninterrupted, stage), _files(other, stage)
        assert a.keys() == b.keys() and f"{stage}/model.safetensors" in a
        ta, tb = (
            load_file(str(uninterrupted / stage / "model.safetensors")),
            load_file(str(other / stage / "model.safetensors")),
        )
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (stage, k)
        for name in a:
            assert a[name] == b[name], name
        assert _losses(uninterrupted, stage) == _losses(other, stage)
    orbit = "renders/dynamic/orbit.mp4"
    assert (uninterrupted / orbit).read_bytes() == (other / orbit).read_bytes()


def _without(project: Path, stage: str) -> None:
    """``project`` as it was before ``stage`` ran (the earlier stages kept)."""
    shutil.rmtree(project / stage, ignore_errors=True)
    (project / "logs" / f"{stage}.jsonl").unlink(missing_ok=True)
    m = json.loads((project / "manifest.json").read_text())
    m["stages"].pop(stage, None)
    (project / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("stage", ["static", "dynamic"])
def test_a_stage_stopped_then_killed_then_run_again_gives_the_same_bytes(stage, uninterrupted, tmp_path):
    from animate124.engine.checkpoint import load_latest_checkpoint

    project = tmp_path / "p"
    shutil.copytree(uninterrupted, project)
    for gone in ("static", "dynamic", "render") if stage == "static" else ("dynamic", "render"):
        _without(project, gone)
    env = _env(tmp_path)
    # SIGTERM once the first checkpoint exists: a checkpoint at the step it stopped, "interrupted", 143
    r, at = _stop(stage, project, env, signal.SIGTERM)
    assert r.returncode == 143, r.stderr[-2000:]
    assert "stopped by SIGTERM" in r.stderr and "run the same command again to resume" in r.stderr
    assert Project(project).stage_record(stage)["status"] == "interrupted"
    stopped = load_latest_checkpoint(project / stage / "checkpoints").step
    assert at <= stopped < ITERS  # the work since the last periodic checkpoint is kept
    # run again, SIGKILL once it has written a newer checkpoint: nothing is recorded, "running" stays
    r, killed_at = _stop(stage, project, env, signal.SIGKILL, after=stopped)
    assert r.returncode == -signal.SIGKILL and stopped < killed_at < ITERS
    assert Project(project).stage_record(stage)["status"] == "running"
    # run again to the end: resumed, the uninterrupted run's bytes, each step once in the log
    again = _run(_stage_args(stage, project), env)
    assert "resumed" in again.stdout
    rec = Project(project).stage_record(stage)
    assert rec["status"] == "done" and rec["metrics"]["resumed_from_step"] >= killed_at
    assert _files(project, stage) == _files(uninterrupted, stage)
    assert _losses(project, stage) == _losses(uninterrupted, stage)
