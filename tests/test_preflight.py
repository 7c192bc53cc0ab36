"""The pre-flight: every check before any stage runs, failing in seconds with nothing written.

Each failure runs the installed command in a fresh process (as a user types it) and must end in under
5 s of CPU time (the process's user + system time, imports included: what it costs on an idle CPU, and
the same on a machine shared with other jobs, where its wall time is longer), with the project
directory not created or its manifest unchanged.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from helpers_cli import animate124_command

from animate124.config import resolve_config
from animate124.fileio import file_sha256
from animate124.project import Project
from animate124.stages.preflight import needed_roles, output_bytes, planned_runs

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
LIMIT_S = 5.0
#: 49 words: the length of prompt that used to pass the first check and fail in the dynamic stage.
LONG_PROMPT = (
    "a toy is spinning slowly on a wooden table in a sunny kitchen while the camera circles around it "
    "and soft light falls through the window onto the bright red paint of its wheels and the small "
    "silver bell on its roof rings as it turns again and again"
)


def animate(cwd: Path, *args: str, cache: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "COLUMNS": "200", "ANIMATE124_STATE_DIR": str(cwd / ".state")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if cache is not None:
        env["ANIMATE124_CACHE"] = str(cache)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(
        [*animate124_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_long_prompt_fails_in_seconds_with_nothing_written(tmp_path):
    assert len(LONG_PROMPT.split()) == 49
    r, dt = animate(tmp_path, "run-all", str(TOY), LONG_PROMPT, "--preset", "tiny")
    assert r.returncode == 2, r.stdout + r.stderr
    assert dt < LIMIT_S, f"took {dt:.1f} s of CPU time"
    assert (
        "the dynamic prompt with its suffix" in r.stderr and "the text encoder reads at most 75" in r.stderr
    )
    assert not (tmp_path / "runs").exists()
    # transformers' own "Token indices sequence length ..." warning only with --verbose, through our handler
    assert "Token indices" not in r.stdout + r.stderr
    r, _ = animate(tmp_path, "run-all", str(TOY), LONG_PROMPT, "--preset", "tiny", "--verbose")
    assert r.returncode == 2 and "transformers warning: Token indices sequence length" in r.stderr, r.stderr


def test_missing_models_at_paper_preset_are_named_together_in_seconds(tmp_path):
    r, dt = animate(
        tmp_path, "run-all", str(TOY), "a toy is spinning", "--device", "cpu", cache=tmp_path / "empty-cache"
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert dt < LIMIT_S, f"took {dt:.1f} s of CPU time"
    err = " ".join(r.stderr.split())
    for role in ("depth", "sd", "zero123", "video", "controlnet"):
        assert f"{role} (" in err, (role, err)
    assert "segment" not in err and "matting" not in err  # toy.png has alpha: no background removal
    assert "5 models needed by" in err and "animate124 models download all" in err and " GB for these" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("🐼 is dancing",), "--subject"),
        (("a toy is spinning", "--subject", "  "), "--subject is empty"),
        (("a <token> is spinning",), "<token>"),
    ],
)
def test_bad_subject_fails_in_seconds_with_nothing_written(tmp_path, args, message):
    r, dt = animate(tmp_path, "run-all", str(TOY), *args, "--preset", "tiny")
    assert r.returncode == 2 and message in r.stderr, r.stdout + r.stderr
    assert dt < LIMIT_S, f"took {dt:.1f} s of CPU time"
    assert not (tmp_path / "runs").exists()


def _preprocessed(root: Path) -> Project:
    """A project whose preprocess stage is recorded as done (the image copy and the manifest only)."""
    p = Project(root)
    p.create(source_image=TOY.resolve(), source_sha256=file_sha256(TOY))
    p.update_stage("preprocess", status="done")
    return p


def test_an_initializer_typed_by_the_user_must_be_one_token(tmp_path):
    p = _preprocessed(tmp_path / "p")
    before = p.manifest_path.read_bytes()
    r, dt = animate(tmp_path, "invert", "-p", str(p.root), "--initializer", "fox", "--preset", "tiny")
    assert r.returncode == 2 and "'fox' is not one token of the text encoder" in r.stderr, r.stderr
    assert dt < LIMIT_S, f"took {dt:.1f} s of CPU time"
    assert p.manifest_path.read_bytes() == before and not (p.root / "invert").exists()


def test_run_all_from_checks_every_earlier_stage_before_the_first_one_runs(tmp_path):
    """--from static on a project without invert: refine needs it, so nothing runs."""
    p = _preprocessed(tmp_path / "p")
    before = p.manifest_path.read_bytes()
    r, dt = animate(
        tmp_path,
        "run-all",
        str(TOY),
        "a toy is spinning",
        "-p",
        str(p.root),
        "--from",
        "static",
        "--preset",
        "tiny",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert "stage 'invert' (needed by 'refine') has not finished" in err, err
    assert "--from invert" in err
    assert dt < LIMIT_S, f"took {dt:.1f} s of CPU time"
    assert p.manifest_path.read_bytes() == before and not (p.root / "static").exists()


def test_derived_initializer_that_is_not_one_token_is_one_decision_said_once(tmp_path):
    """'fox' is two tokens of the tiny tokenizer: the pre-flight picks 'object', says so once (not under
    --quiet), and invert trains from it; no warning from the stage itself."""
    r, _ = animate(tmp_path, "run-all", str(TOY), "a fox is running", "--preset", "tiny", "--until", "invert")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    line = "textual-inversion initializer: object ('fox' is not one token of the text encoder, so 'object' is used)"
    assert out.count(line) == 1, out
    assert out.count("not one token") == 1 and "warning" not in out
    import json

    m = json.loads((tmp_path / "runs" / "toy" / "manifest.json").read_text())
    assert m["stages"]["invert"]["metrics"]["initializer"] == "object"
    assert m["prompts"]["initializer"] == "object" and m["prompts"]["subject"] == "fox"
    r, _ = animate(
        tmp_path, "run-all", str(TOY), "a fox is running", "--preset", "tiny", "--until", "invert", "-q"
    )
    assert r.returncode == 0 and "not one token" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "up to date" in r.stdout


def test_planned_runs_leave_out_up_to_date_stages(tmp_path):
    """A finished stage with the same config is not planned (it needs neither models nor disk)."""
    from animate124.engine.runner import run_stage
    from animate124.stages.spec import get_stage

    cfg = resolve_config("tiny")
    p = Project(tmp_path / "p")
    p.create(source_image=TOY.resolve(), source_sha256=file_sha256(TOY))
    sha = file_sha256(TOY)
    run_stage(p, get_stage("preprocess"), cfg, lambda ctx: {}, extra_hash=sha)
    assert planned_runs(p, cfg, ("preprocess", "invert", "static"), sha, force=False) == ("invert", "static")
    assert planned_runs(p, cfg, ("preprocess", "invert"), sha, force=True) == ("preprocess", "invert")
    assert planned_runs(p, cfg, ("preprocess",), "another image", force=False) == ("preprocess",)


def test_needed_roles_and_disk_estimate_follow_the_config():
    cfg = resolve_config("paper")
    assert needed_roles(cfg, ("preprocess",), image_alpha=False) == [
        ("depth", None),
        ("segment", None),
        ("matting", None),
    ]
    assert needed_roles(cfg, ("refine",), image_alpha=True) == [
        ("video", None),
        ("zero123", None),
        ("sd", None),
        ("controlnet", None),
    ]
    no_zero = resolve_config("paper", sets=["static.zero123_weight=0"])
    assert needed_roles(no_zero, ("static",), True) == [("sd", None)]
    # the 4D field is the big one: 115.6 M parameters x 28 bytes + its occupancy grids, about 3.8 GB
    assert 3.0e9 < output_bytes(cfg, ("dynamic",)) < 5.0e9
    assert output_bytes(cfg, ("static",)) < 0.2e9


def test_a_usage_error_after_the_project_changed_exits_1(tmp_path, monkeypatch):
    """Exit 2 promises that nothing was changed: an input error raised once a stage has written to the
    project exits 1 (the message stays)."""
    from typer.testing import CliRunner

    import animate124.stages.static as static
    from animate124.cli.app import app
    from animate124.errors import InputError

    p = _preprocessed(tmp_path / "p")

    def fail_after_writing(project, *args, **kwargs):
        project.update_stage("static", status="running")
        raise InputError("something about the input, found late")

    monkeypatch.setattr(static, "run_static", fail_after_writing)
    r = CliRunner().invoke(app, ["static", "-p", str(p.root), "--preset", "tiny", "--prompt", "a toy"])
    assert r.exit_code == 1 and "found late" in r.output, r.output

    def fail_before_writing(project, *args, **kwargs):
        raise InputError("something about the input")

    monkeypatch.setattr(static, "run_static", fail_before_writing)
    q = _preprocessed(tmp_path / "q")
    r = CliRunner().invoke(app, ["static", "-p", str(q.root), "--preset", "tiny", "--prompt", "a toy"])
    assert r.exit_code == 2, r.output
