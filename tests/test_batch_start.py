"""Ray's start beside the rows' checks (issue 28: the driver's fixed time was most of Ray's overhead on an
H100, BENCHMARKS §13): the overlap itself, when the batch guesses that runs will start, and what is shut
down or raised when one side fails. Ray is replaced by a stand-in here (no Ray process starts); the batch
on a real local Ray is tests/test_batch_ray.py."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animate124.batch import driver
from animate124.batch import plan as plan_mod
from animate124.batch.jobs import read_rows
from animate124.batch.summary import likely_to_run
from animate124.cli.app import app
from animate124.errors import ConfigError

pytest.importorskip("ray", reason='Ray is not installed: pip install "animate124[batch]"')

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy.png"
WAIT_S = 60.0  # far above a thread's start; a batch that checks the rows first never sets the event


class StandInRay:
    """What the CLI asks of Ray outside the tasks (the tasks are run_tasks's, replaced in each test)."""

    def __init__(self) -> None:
        self.down = False
        self.thread = ""

    def cluster_resources(self):
        return {"CPU": 2.0}

    def shutdown(self):
        self.down = True


@pytest.fixture
def jobs(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(TOY, d / "toy.png")
    (d / "bad.png").write_text("not an image")
    f = d / "jobs.csv"
    f.write_text("image,prompt\ntoy.png,a toy is spinning\nbad.png,a cat is jumping\n")
    return f


def _batch(jobs: Path, out: Path):
    return CliRunner().invoke(app, ["batch", str(jobs), "--out", str(out), "--preset", "tiny", "--json"])


def test_ray_starts_while_the_rows_are_checked(jobs, tmp_path, monkeypatch):
    """Each side waits for the other to have begun: run one after the other, the first would wait
    WAIT_S in vain and the test fails. Ray starts on the main thread (its signal handlers as before), the
    checks on another; the tasks then get that Ray, and it is shut down once."""
    ray = StandInRay()
    checking, starting = threading.Event(), threading.Event()
    real_plan = plan_mod.plan_assets

    def start(address):
        ray.thread = threading.current_thread().name
        starting.set()
        assert checking.wait(WAIT_S), "Ray was started only after the rows were checked"
        return ray, True

    def plan(*args, **kwargs):
        checking.set()
        assert starting.wait(WAIT_S), "the rows were checked only after Ray had started"
        return real_plan(*args, **kwargs)

    ran: list[list[str]] = []
    monkeypatch.setattr(driver, "start_ray", start)
    monkeypatch.setattr(plan_mod, "plan_assets", plan)
    monkeypatch.setattr(
        driver, "run_tasks", lambda r, jobs, where, **kw: ran.append([a.name for a, _ in jobs])
    )
    r = _batch(jobs, tmp_path / "out")
    assert r.exit_code == 3, r.output  # toy not started (the stand-in ran nothing), bad invalid
    assert ray.thread == threading.main_thread().name and ray.down
    assert ran == [["toy"]]
    assert "while the rows were checked" in r.output


def test_the_guess_that_runs_will_start_reads_the_last_batch(jobs, tmp_path):
    rows = read_rows(jobs)
    out = tmp_path / "out"
    out.mkdir()
    assert likely_to_run(rows, out, retry_failed=False)  # no batch here yet
    (out / "batch.json").write_text("{not json")
    assert likely_to_run(rows, out, retry_failed=False)

    def last(**status):
        (out / "batch.json").write_text(
            json.dumps({"assets": [{"asset": k, "status": v} for k, v in status.items()]})
        )

    last(toy="done", bad="invalid")  # a rerun of a finished batch: no Ray unless the checks find work
    assert not likely_to_run(rows, out, retry_failed=False)
    last(toy="up-to-date", bad="invalid")
    assert not likely_to_run(rows, out, retry_failed=False)
    last(toy="failed", bad="invalid")
    assert not likely_to_run(rows, out, retry_failed=False)
    assert likely_to_run(rows, out, retry_failed=True)
    for status in ("interrupted", "not-started", "running"):
        last(toy=status, bad="invalid")
        assert likely_to_run(rows, out, retry_failed=False), status
    last(toy="done")  # a row the last batch did not have
    assert likely_to_run(rows, out, retry_failed=False)


def test_a_finished_batch_does_not_start_ray_beside_the_checks(jobs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch.json").write_text(json.dumps({"assets": [{"asset": "toy", "status": "done"},
                                                           {"asset": "bad", "status": "invalid"}]}))  # fmt: skip
    ray = StandInRay()
    started: list[str] = []

    def start(address):
        started.append(threading.current_thread().name)
        return ray, True

    monkeypatch.setattr(driver, "start_ray", start)
    monkeypatch.setattr(driver, "run_tasks", lambda *a, **kw: None)
    r = _batch(jobs, out)
    # the guess was wrong (toy has no project: it must run), so Ray starts after the checks, as before
    assert r.exit_code == 3, r.output
    assert started == [threading.main_thread().name] and ray.down
    assert "while the rows were checked" not in r.output


def test_checks_that_fail_shut_the_early_ray_down(jobs, tmp_path, monkeypatch):
    ray = StandInRay()
    monkeypatch.setattr(driver, "start_ray", lambda address: (ray, True))

    def plan(*args, **kwargs):
        raise ConfigError("the checks failed")

    monkeypatch.setattr(plan_mod, "plan_assets", plan)
    r = _batch(jobs, tmp_path / "out")
    assert r.exit_code == 2 and "the checks failed" in r.output, r.output
    assert ray.down


def test_a_ray_that_cannot_start_is_reported_after_the_checks(jobs, tmp_path, monkeypatch):
    """Ray's error, kept while the rows were checked, is raised where the batch starts Ray: the rows'
    report comes first and batch.json records every asset."""

    def start(address):
        raise driver.BatchError("cannot start or reach a local Ray instance: no room")

    monkeypatch.setattr(driver, "start_ray", start)
    r = _batch(jobs, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "cannot start or reach a local Ray instance" in r.output
    assert "2 assets: 1 to run" in " ".join(r.output.split())
    data = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert {a["asset"]: a["status"] for a in data["assets"]} == {"toy": "not-started", "bad": "invalid"}


def test_an_early_ray_with_nothing_to_run_is_shut_down(jobs, tmp_path, monkeypatch):
    """The guess was wrong the other way: only the bad row, new, so Ray started beside the checks, which
    found nothing to run; Ray is shut down and no task is asked for."""
    jobs.write_text("image,prompt\nbad.png,a cat is jumping\n")
    ray = StandInRay()
    monkeypatch.setattr(driver, "start_ray", lambda address: (ray, True))
    monkeypatch.setattr(driver, "run_tasks", lambda *a, **kw: pytest.fail("a task was started"))
    r = _batch(jobs, tmp_path / "out")
    assert r.exit_code == 3 and "nothing to run" in r.output, r.output
    assert ray.down
