"""Batch use from a shell: --json, --quiet, concurrent first runs on an empty model cache, read-only
projects, and a different image run into an existing project."""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from animate124.cli.app import app

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory) -> Path:
    """A project whose preprocess stage is done (tiny preset); tests copy it."""
    proj = tmp_path_factory.mktemp("batch") / "toy"
    r = invoke("preprocess", str(TOY), "-p", str(proj), "--preset", "tiny", "-q")
    assert r.exit_code == 0, r.output
    return proj


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_json_summary_is_the_only_stdout(preprocessed, tmp_path):
    proj = _copy(preprocessed, tmp_path / "p")
    r = invoke(
        "run-all",
        str(TOY),
        "a toy is spinning",
        "-p",
        str(proj),
        "--preset",
        "tiny",
        "--until",
        "preprocess",
        "--json",
    )
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout  # one JSON object, nothing else on stdout
    out = json.loads(lines[0])
    assert out["exit_code"] == 0 and out["error"] is None and out["command"] == "run-all"
    assert out["project"] == str(proj.resolve())
    assert out["prompts"]["static"] == "a high-resolution DSLR image of a toy"
    (stage,) = out["stages"]
    assert stage["stage"] == "preprocess" and stage["status"] == "up-to-date" and stage["skipped"] is True
    assert set(stage) >= {"seconds", "artifacts"} and stage["artifacts"]["rgba"].endswith("rgba.png")
    assert "project:" in r.stderr  # the human lines went to stderr


def test_json_on_failure_names_the_stage_and_the_exit_code(preprocessed, tmp_path):
    proj = _copy(preprocessed, tmp_path / "p")
    r = invoke(
        "run-all",
        str(TOY),
        "a toy is spinning",
        "-p",
        str(proj),
        "--preset",
        "tiny",
        "--from",
        "refine",
        "--json",
        "-q",
    )
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["exit_code"] == 1
    assert out["stages"] == []  # the pre-flight found it: no stage started
    err = out["error"]
    assert err["type"] == "ProjectError" and "'dynamic' (needed by 'refine')" in err["message"]
    assert "'invert' (needed by 'refine')" in err["message"] and "--from " in err["hint"]
    # usage errors found by the command itself also come back as JSON with exit code 2
    r = invoke("run-all", str(TOY), "🐼", "-p", str(proj), "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_quiet_prints_only_the_final_line(preprocessed, tmp_path):
    proj = _copy(preprocessed, tmp_path / "p")
    r = invoke(
        "run-all",
        str(TOY),
        "a toy is spinning",
        "-p",
        str(proj),
        "--preset",
        "tiny",
        "--until",
        "preprocess",
        "-q",
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 1 and "up to date" in r.stdout and r.stderr == ""


def test_concurrent_first_runs_share_an_empty_model_cache(tmp_path):
    """Three jobs started together on an empty cache all succeed (the tiny models are built once,
    under a lock, and renamed into place; nobody sees a half-built cache)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "ANIMATE124_STATE_DIR": str(tmp_path / "state")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "animate124.cli.app",
                "preprocess",
                str(TOY),
                "-p",
                str(tmp_path / f"p{i}"),
                "--preset",
                "tiny",
                "--cache-dir",
                str(cache),
                "-q",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, out + err
    for i in range(3):
        assert (tmp_path / f"p{i}" / "preprocess" / "rgba.png").is_file()
    snapshots = list((cache / "tiny-models" / "hub").glob("models--*/snapshots/*"))
    assert snapshots and not [s for s in snapshots if ".tmp" in s.name]  # no half-built leftovers


@contextlib.contextmanager
def read_only(directory: Path, monkeypatch):
    """Make ``directory`` unwritable: chmod for a normal user; for root (which ignores modes) every
    call that would create, replace or remove something inside it fails with EACCES, as the kernel
    would."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    root = str(directory.resolve())

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(root)
        except TypeError:
            return False

    def deny(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
        real = getattr(os, name)

        def fake(path, *args, _real=real, **kwargs):
            if inside(path) or (args and inside(args[0])):
                deny(path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, fake)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    yield


def test_read_only_project_no_op_succeeds_and_a_write_is_a_clear_error(preprocessed, tmp_path, monkeypatch):
    proj = _copy(preprocessed, tmp_path / "p")
    before = {p: p.stat().st_mtime_ns for p in proj.rglob("*")}
    with read_only(proj, monkeypatch):
        r = invoke("preprocess", str(TOY), "-p", str(proj), "--preset", "tiny")
        assert r.exit_code == 0 and "up to date" in r.output, r.output
        r = invoke("preprocess", str(TOY), "-p", str(proj), "--preset", "tiny", "--force")
        assert r.exit_code == 1, r.output
        assert "permission denied" in r.output and "internal error" not in r.output
    assert {p: p.stat().st_mtime_ns for p in proj.rglob("*")} == before


def test_read_only_parent_directory_is_a_clear_error(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent, monkeypatch):
        r = invoke("preprocess", str(TOY), "-p", str(parent / "p"), "--preset", "tiny")
    assert r.exit_code == 1, r.output
    assert "permission denied" in r.output and "internal error" not in r.output


def test_different_image_into_an_existing_project_is_refused(preprocessed, tmp_path):
    proj = _copy(preprocessed, tmp_path / "p")
    other = tmp_path / "other.png"
    img = Image.open(TOY).convert("RGBA")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    rgba_before = (proj / "preprocess" / "rgba.png").read_bytes()
    for cmd in (
        ["preprocess", str(other)],
        ["run-all", str(other), "a toy is spinning", "--until", "preprocess"],
    ):
        r = invoke(*cmd, "-p", str(proj), "--preset", "tiny")
        assert r.exit_code == 2, r.output
        assert "was made from another image" in r.output and "--force" in r.output
    assert (proj / "preprocess" / "rgba.png").read_bytes() == rgba_before
    manifest = json.loads((proj / "manifest.json").read_text())
    assert manifest["source_image"] == str(TOY.resolve())
    # --force replaces the image, and the manifest says so
    r = invoke("preprocess", str(other), "-p", str(proj), "--preset", "tiny", "--force")
    assert r.exit_code == 0, r.output
    manifest = json.loads((proj / "manifest.json").read_text())
    assert manifest["source_image"] == str(other.resolve())
    from animate124.fileio import file_sha256

    assert manifest["source_sha256"] == file_sha256(other)
    assert (proj / "preprocess" / "rgba.png").read_bytes() != rgba_before
