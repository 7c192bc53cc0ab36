"""Project directory: manifest atomicity under SIGKILL, the lock, stage bookkeeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from animate124.config import resolve_config
from animate124.engine.runner import run_stage
from animate124.errors import ProjectError, ProjectLockedError
from animate124.project import Project, atomic_write_json, find_project, remember_project
from animate124.stages.spec import get_stage


def test_create_and_paths(tmp_path):
    p = Project(tmp_path / "proj")
    assert not p.exists()
    p.create()
    assert p.exists() and p.read_manifest()["stages"] == {}
    assert p.rgba == p.root / "preprocess" / "rgba.png"
    assert p.stage("static").model == p.root / "static" / "model.safetensors"
    with pytest.raises(ProjectError):
        p.stage("../outside")


def test_manifest_write_killed_leaves_previous_intact(tmp_path):
    """A writer SIGKILLed in the middle of rewriting the manifest never leaves a torn file."""
    p = Project(tmp_path / "proj")
    p.create()
    big_n = 2_000_000
    script = textwrap.dedent(
        f"""
        import sys
        from animate124.project import Project
        p = Project({str(p.root)!r})
        i = 0
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        while True:
            m = p.read_manifest()
            m["counter"] = i
            m["payload"] = "x" * {big_n}
            p.write_manifest(m)
            i += 1
        """
    )
    for delay in (0.05, 0.2, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = json.loads(p.manifest_path.read_text())  # must parse: old or new, never torn
        assert data["manifest_version"] == 1
        assert "payload" not in data or len(data["payload"]) == big_n
    leftovers = [f for f in p.root.iterdir() if f.name.endswith(".tmp")]
    # temp files of a killed writer may remain; they never replace the manifest
    assert all(f.name.startswith(".manifest.json.") for f in leftovers)


def test_lock_blocks_second_live_process(tmp_path):
    p = Project(tmp_path / "proj")
    p.create()
    script = textwrap.dedent(
        f"""
        import sys, time
        from animate124.project import Project
        with Project({str(p.root)!r}).lock():
            sys.stdout.write("locked\\n"); sys.stdout.flush()
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(ProjectLockedError, match=str(proc.pid)), p.lock():
            pass
    finally:
        proc.kill()
        proc.wait()
    # the owner is dead now: its stale lock is taken over
    assert p.lock_path.exists()
    with p.lock():
        assert json.loads(p.lock_path.read_text())["pid"] == os.getpid()
    assert not p.lock_path.exists()


def test_stale_lock_from_dead_pid_taken_over(tmp_path):
    p = Project(tmp_path / "proj")
    p.create()
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(p.lock_path, {"pid": dead.pid, "host": socket.gethostname(), "started": "x"})
    with p.lock():
        owner = json.loads(p.lock_path.read_text())
        assert owner["pid"] == os.getpid() and owner["pid"] != dead.pid  # taken over, not blocked
    assert not p.lock_path.exists()  # and released afterwards
    # a live owner on another host is never taken over
    atomic_write_json(p.lock_path, {"pid": os.getpid(), "host": "elsewhere", "started": "x"})
    with pytest.raises(ProjectLockedError, match="elsewhere"), p.lock():
        pass


def test_run_stage_bookkeeping(tmp_path):
    p = Project(tmp_path / "proj")
    p.create()
    cfg = resolve_config("tiny")
    calls = []

    def body(ctx):
        calls.append(ctx.resume)
        (p.root / "x").write_bytes(b"result")
        return {"artifacts": {"x": p.root / "x"}, "metrics": {"m": 1.0}}

    r = run_stage(p, get_stage("preprocess"), cfg, body)
    assert not r.skipped and calls == [False]
    rec = p.stage_record("preprocess")
    assert rec["status"] == "done" and rec["metrics"] == {"m": 1.0} and "torch" in rec["versions"]
    sha = __import__("hashlib").sha256(b"result").hexdigest()
    assert rec["files"] == {"x": {"size": 6, "sha256": sha}}
    assert p.config_path("preprocess").is_file()
    # same config: no-op
    assert run_stage(p, get_stage("preprocess"), cfg, body).skipped and len(calls) == 1
    # force: runs again
    run_stage(p, get_stage("preprocess"), cfg, body, force=True)
    assert len(calls) == 2
    # a different config reruns
    cfg2 = resolve_config("tiny", sets=["preprocess.framing=recenter"])
    run_stage(p, get_stage("preprocess"), cfg2, body)
    assert len(calls) == 3


def test_run_stage_failure_then_resume(tmp_path):
    p = Project(tmp_path / "proj")
    p.create()
    cfg = resolve_config("tiny")

    def boom(ctx):
        raise RuntimeError("kaput")

    with pytest.raises(RuntimeError):
        run_stage(p, get_stage("preprocess"), cfg, boom)
    rec = p.stage_record("preprocess")
    assert rec["status"] == "failed" and "kaput" in rec["error"]
    seen = []
    run_stage(p, get_stage("preprocess"), cfg, lambda ctx: seen.append(ctx.resume) or {})
    assert seen == [True]  # same config after a failure: resume


def test_requirements_and_upstream_invalidation(tmp_path):
    p = Project(tmp_path / "proj")
    p.create()
    cfg = resolve_config("tiny")
    with pytest.raises(ProjectError, match="needs stage 'preprocess'"):
        run_stage(p, get_stage("invert"), cfg, lambda ctx: {})
    run_stage(p, get_stage("preprocess"), cfg, lambda ctx: {})
    assert not run_stage(p, get_stage("invert"), cfg, lambda ctx: {}).skipped
    assert run_stage(p, get_stage("invert"), cfg, lambda ctx: {}).skipped
    run_stage(p, get_stage("preprocess"), cfg, lambda ctx: {}, extra_hash="new image")
    assert not run_stage(p, get_stage("invert"), cfg, lambda ctx: {}).skipped  # upstream changed


def test_find_project(tmp_path, monkeypatch):
    a = Project(tmp_path / "a")
    a.create()
    monkeypatch.chdir(tmp_path)
    remember_project(a)
    assert find_project(None).root == a.root
    assert find_project(tmp_path / "b").root == (tmp_path / "b").resolve()
    monkeypatch.chdir(a.root)
    assert find_project(None).root == a.root


def test_manifest_and_config_files_are_world_readable(tmp_path):
    """Everything the project writes gets 0644 (minus the umask), like any other file; mkstemp's
    0600 must not leak into the manifest or the saved configs."""
    old = os.umask(0o022)
    try:
        p = Project(tmp_path / "proj")
        p.create()
        run_stage(p, get_stage("preprocess"), resolve_config("tiny"), lambda ctx: {})
    finally:
        os.umask(old)
    for f in (p.manifest_path, p.config_path("preprocess")):
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_up_to_date_run_writes_nothing_and_takes_no_lock(tmp_path, monkeypatch):
    p = Project(tmp_path / "proj")
    p.create()
    cfg = resolve_config("tiny")
    run_stage(p, get_stage("preprocess"), cfg, lambda ctx: {})
    before = {f: f.stat().st_mtime_ns for f in p.root.rglob("*")}

    def no_writes(*a, **k):
        raise AssertionError("an up-to-date run must not write")

    monkeypatch.setattr(Project, "lock", no_writes)
    monkeypatch.setattr(Project, "write_manifest", no_writes)
    assert run_stage(p, get_stage("preprocess"), cfg, lambda ctx: {}).skipped
    assert {f: f.stat().st_mtime_ns for f in p.root.rglob("*")} == before


def test_project_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for root in (f, f / "sub"):
        with pytest.raises(ProjectError, match="is a file"):
            Project(root).create()
        with pytest.raises(ProjectError, match="is a file"):
            Project(root).require()
        with pytest.raises(ProjectError, match="is a file"), Project(root).lock():
            pass


def test_unwritable_project_directory_is_a_project_error(tmp_path, monkeypatch):
    p = Project(tmp_path / "proj")
    p.create()
    real_open = os.open

    def denied(path, flags, *args):
        if str(path) == str(p.lock_path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ProjectError, match="permission denied") as ei, p.lock():
        pass
    assert "-p" in ei.value.hint


def test_source_image_is_recorded(tmp_path):
    p = Project(tmp_path / "proj")
    p.create(source_image=tmp_path / "a.png", source_sha256="abc")
    assert p.source() == (str(tmp_path / "a.png"), "abc")
    p.create(source_image=tmp_path / "b.png", source_sha256="def")  # create never replaces it
    assert p.source() == (str(tmp_path / "a.png"), "abc")
    p.set_source(tmp_path / "b.png", "def")
    assert p.source() == (str(tmp_path / "b.png"), "def")
    mtime = p.manifest_path.stat().st_mtime_ns
    p.record("prompts", {"static": "x"})
    assert p.recorded("prompts") == {"static": "x"}
    mtime = p.manifest_path.stat().st_mtime_ns
    p.record("prompts", {"static": "x"})  # unchanged: not written
    assert p.manifest_path.stat().st_mtime_ns == mtime
