"""Which project a command works on, and that it says so.

The order (the same for every command): ``-p``; the working directory if it is a project; the only
project under ``./runs`` (of several, the newest, named); only then the remembered project, which a run
records when it starts (so a failed run is the one remembered).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animate124.cli.app import app
from animate124.project import Project, resolve_project

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
OUTPUT_COMMANDS = (("render", "--orbit"), ("export",), ("evaluate",), ("report",))
runner = CliRunner()


def invoke(cwd: Path, *args: str):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, list(args), env={"COLUMNS": "200"})
    finally:
        os.chdir(old)


def _project(path: Path) -> Project:
    p = Project(path)
    p.create()
    return p


@pytest.fixture()
def three_dirs(tmp_path, monkeypatch):
    """A and B each hold a project under runs/; in C a run-all started and failed in its invert stage."""
    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "state"))
    dirs = {name: tmp_path / name for name in "ABCD"}
    for d in dirs.values():
        d.mkdir()
    _project(dirs["A"] / "runs" / "apple")
    _project(dirs["B"] / "runs" / "bear")
    import animate124.stages.invert as invert

    def fail(*args, **kwargs):
        raise RuntimeError("the invert stage broke")

    monkeypatch.setattr(invert, "run_invert", fail)
    r = invoke(dirs["C"], "run-all", str(TOY), "a toy is spinning", "--preset", "tiny")
    assert r.exit_code == 1 and "the invert stage broke" in r.output, r.output
    assert (dirs["C"] / "runs" / "toy" / "manifest.json").is_file()
    return dirs


def test_every_output_command_picks_the_project_of_its_directory_and_names_it(three_dirs):
    cases = {
        "A": "project: runs/apple (the only project under ./runs)",
        "B": "project: runs/bear (the only project under ./runs)",
        "C": "project: runs/toy (the only project under ./runs)",
    }
    for d, line in cases.items():
        for cmd in OUTPUT_COMMANDS:
            r = invoke(three_dirs[d], *cmd)
            assert line in r.output, (d, cmd, r.output)
            others = {"A": "apple", "B": "bear", "C": "toy"}
            assert not any(f"runs/{n}" in r.output for k, n in others.items() if k != d), (d, cmd, r.output)
    # report works on any project: it writes the page of that directory's project, no other
    assert (three_dirs["A"] / "runs" / "apple" / "report.html").is_file()
    assert (three_dirs["B"] / "runs" / "bear" / "report.html").is_file()


def test_the_remembered_project_is_the_last_run_started_and_is_named_as_such(three_dirs):
    """The run in C failed, yet it is the one remembered; an empty directory falls back to it and says so."""
    for cmd in OUTPUT_COMMANDS:
        r = invoke(three_dirs["D"], *cmd)
        toy = three_dirs["C"] / "runs" / "toy"
        assert f"project: {toy} (the last run started" in r.output, (cmd, r.output)
    # render says there is nothing trained in that project: the failed run trained nothing
    r = invoke(three_dirs["D"], "render", "--orbit")
    assert r.exit_code == 1 and "no training stage has finished" in r.output


def test_of_several_projects_under_runs_the_newest_is_used_and_the_others_named(three_dirs):
    time.sleep(0.05)
    newer = _project(three_dirs["A"] / "runs" / "avocado")
    os.utime(newer.manifest_path, (time.time() + 5, time.time() + 5))
    r = invoke(three_dirs["A"], "report")
    assert r.exit_code == 0, r.output
    assert "project: runs/avocado (the newest of 2 projects under ./runs (also there: apple" in r.output
    assert newer.artifact("report").is_file()


def test_p_and_the_working_directory_come_first(three_dirs):
    apple = three_dirs["A"] / "runs" / "apple"
    r = invoke(three_dirs["B"], "report", "-p", str(apple))
    assert r.exit_code == 0 and f"project: {apple}\n" in r.output, r.output
    r = invoke(apple, "report")
    assert r.exit_code == 0 and "project: . (the working directory)" in r.output, r.output
    assert resolve_project(None, cwd=apple).project.root == apple.resolve()


def test_no_project_anywhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATE124_STATE_DIR", str(tmp_path / "state"))
    r = invoke(tmp_path, "report")
    assert r.exit_code == 1 and "no project given and none found" in r.output
