"""Runs are reproducible at the default thread count, and so are interrupted ones (issue 23).

Through the installed command, in subprocesses that keep PyTorch's default thread count (2 on CI): two
uninterrupted runs of static, dynamic and the orbit render with the same seed write the same bytes
(weights, checkpoints, orbit.mp4); a static or dynamic stage killed with SIGKILL, or stopped with SIGTERM
(checkpoint at the current step, stage "interrupted", exit 143), then run again, writes the same
weights as the uninterrupted run, and its log has each step once, with the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animate124.project import Project

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
SETS = ("--set", "static.iters=12", "--set", "dynamic.iters=12", "--set", "run.checkpoint_every=3")
PROMPTS = {"static": "a toy", "dynamic": "a toy is spinning"}


def _command() -> list[str]:
    script = Path(sys.executable).with_name("animate124")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "animate124.cli.app"]


def _env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "PYTHONPATH": path, "ANIMATE124_STATE_DIR": str(tmp / "state"), "COLUMNS": "200"}


def _stage_args(stage: str, project: Path) -> list[str]:
    return [*_command(), stage, "-p", str(project), "--preset", "tiny", "--prompt", PROMPTS[stage], *SETS]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _stop(
    stage: str, project: Path, env: dict[str, str], sig: int
) -> tuple[subprocess.CompletedProcess, int]:
    """Start the stage, send ``sig`` once its first checkpoint exists; returns (the finished process, the
    step of the newest checkpoint when the signal was sent)."""
    from animate124.engine.checkpoint import load_latest_checkpoint

    proc = subprocess.Popen(
        _stage_args(stage, project), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = project / stage / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list(ckpt.glob("ckpt-*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, f"the stage ended before it could be stopped: {proc.communicate()}"
    at = load_latest_checkpoint(ckpt).step
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
    _run([*_command(), "render", "-p", str(project), "--orbit"], env)
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


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
@pytest.mark.parametrize("stage", ["static", "dynamic"])
def test_a_stopped_stage_run_again_gives_the_same_bytes(stage, sig, uninterrupted, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(uninterrupted, project)
    for gone in ("static", "dynamic", "render") if stage == "static" else ("dynamic", "render"):
        _without(project, gone)
    env = _env(tmp_path)
    r, at = _stop(stage, project, env, sig)
    rec = Project(project).stage_record(stage)
    if sig == signal.SIGTERM:
        assert r.returncode == 143, r.stderr[-2000:]
        assert "stopped by SIGTERM" in r.stderr and "run the same command again to resume" in r.stderr
        assert rec["status"] == "interrupted"
        from animate124.engine.checkpoint import load_latest_checkpoint

        stopped = load_latest_checkpoint(project / stage / "checkpoints").step
        assert at <= stopped < 12  # a checkpoint at the step it stopped (the work since the last one kept)
    else:
        assert r.returncode == -signal.SIGKILL and rec["status"] == "running"
    again = _run(_stage_args(stage, project), env)
    assert "resumed" in again.stdout
    rec = Project(project).stage_record(stage)
    assert rec["status"] == "done" and rec["metrics"]["resumed_from_step"] >= at
    assert _files(project, stage) == _files(uninterrupted, stage)
    assert _losses(project, stage) == _losses(uninterrupted, stage)  # each step once, the same losses
