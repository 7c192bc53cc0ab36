"""Trusting the project directory, piece by piece: the reader that names damaged files, the manifest's
file records, full disks, damaged checkpoints, logs after a resume, config bounds and text, signals,
the order of the grid's gradient sums, pinned models (issue 23; the whole CLI over a damaged project is
tests/test_battery.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from animate124.config import resolve_config
from animate124.config.validation import check_text
from animate124.errors import ConfigError, DamagedFileError, DiskFullError, ProjectError
from animate124.project import Project


# --- the reader -----------------------------------------------------------------------------------------
def _safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"a": torch.arange(100.0)}, str(path))
    return path


def test_reader_names_the_file_and_what_is_wrong(tmp_path):
    from animate124.readers import read_safetensors, read_yaml

    good = _safetensors(tmp_path / "m.safetensors")
    tensors, _ = read_safetensors(good)
    assert torch.equal(tensors["a"], torch.arange(100.0))
    cases = {
        "missing": (tmp_path / "none.safetensors", "does not exist"),
        "folder": (tmp_path, "is a directory, not a file"),
    }
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "cut.safetensors", "is damaged (truncated:")
    (tmp_path / "rnd.safetensors").write_bytes(os.urandom(len(data)))
    cases["random"] = (tmp_path / "rnd.safetensors", "is damaged (")
    for name, (path, words) in cases.items():
        with pytest.raises(DamagedFileError) as ei:
            read_safetensors(path, "trained field", hint="redo it")
        assert str(path) in ei.value.message and words in ei.value.message, (name, ei.value.message)
        assert ei.value.path == str(path)
    (tmp_path / "c.yaml").write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError, match="c.yaml is damaged"):
        read_yaml(tmp_path / "c.yaml", error=ConfigError)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_bin_is_a_torch_zip_or_a_legacy_torch_pickle_or_damaged(tmp_path, protocol):
    """``.bin`` weights: a zip archive (checked whole), a legacy ``torch.save`` pickle (its magic number first:
    accepted, not checkable cheaply), anything else damaged, also random bytes that start with the pickle
    PROTO byte 0x80 (one random file in 256; they used to pass as legacy and fail later at load time)."""
    from animate124.readers import check_file

    zipped, legacy, rnd = tmp_path / "z.bin", tmp_path / "l.bin", tmp_path / "r.bin"
    torch.save({"a": torch.arange(8.0)}, zipped)
    torch.save(
        {"a": torch.arange(8.0)}, legacy, _use_new_zipfile_serialization=False, pickle_protocol=protocol
    )
    assert check_file(zipped) is None and check_file(legacy) is None
    rnd.write_bytes(b"\x80" + bytes([protocol]) + os.urandom(4096))
    assert "not a complete torch archive" in check_file(rnd)
    zipped.write_bytes(zipped.read_bytes()[:-40])  # a truncated archive
    assert "not a complete torch archive" in check_file(zipped)


def test_reader_says_permission_denied_not_no_such_file(tmp_path, monkeypatch):
    """A file the user may not read (chmod 000; simulated, since root reads everything) is 'permission
    denied' with a chmod hint, whatever the library said."""
    import builtins

    from animate124.readers import check_file, read_safetensors

    path = _safetensors(tmp_path / "m.safetensors")
    real_open = builtins.open

    def no_read(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_read)
    monkeypatch.setattr("safetensors.torch.load_file", lambda *a, **k: (_ for _ in ()).throw(
        FileNotFoundError("No such file or directory (os error 2)")))  # fmt: skip
    with pytest.raises(DamagedFileError) as ei:
        read_safetensors(path, "model file")
    assert "permission denied" in ei.value.message and "No such file" not in ei.value.message
    assert "chmod" in (ei.value.hint or "")
    assert check_file(path) == "cannot be read: permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file")
def test_chmod_000_file_is_permission_denied(tmp_path):
    from animate124.readers import read_safetensors

    path = _safetensors(tmp_path / "m.safetensors")
    path.chmod(0)
    with pytest.raises(DamagedFileError, match="permission denied"):
        read_safetensors(path)


# --- the manifest's file records ---------------------------------------------------------------------------
def _project_with_stage(tmp_path: Path) -> tuple[Project, object]:
    from animate124.engine.runner import run_stage
    from animate124.stages.spec import get_stage

    p = Project(tmp_path / "proj")
    p.create()
    cfg = resolve_config("tiny")

    def body(ctx):
        (p.root / "preprocess").mkdir(exist_ok=True)
        (p.root / "preprocess" / "depth.npy").write_bytes(b"x" * 100)
        return {"artifacts": {"depth_npy": p.root / "preprocess" / "depth.npy"}}

    run_stage(p, get_stage("preprocess"), cfg, body)
    return p, body


def test_a_damaged_artifact_makes_its_stage_stale_with_one_line(tmp_path, caplog):
    from animate124.engine.runner import run_stage
    from animate124.stages.spec import get_stage

    p, body = _project_with_stage(tmp_path)
    cfg = resolve_config("tiny")
    rec = p.stage_record("preprocess")
    assert rec["files"] == {
        "preprocess/depth.npy": {"size": 100, "sha256": hashlib.sha256(b"x" * 100).hexdigest()}
    }
    assert run_stage(p, get_stage("preprocess"), cfg, body).skipped
    for damage, words in (
        (lambda f: f.write_bytes(b"x" * 99 + b"y"), "its content changed"),
        (lambda f: f.write_bytes(b"x" * 10), "truncated: 10 bytes, 100 when it was made"),
        (lambda f: f.unlink(), "does not exist"),
    ):
        damage(p.root / "preprocess" / "depth.npy")
        assert p.stage_problems("preprocess")[0][1].startswith(("is damaged", "does not exist"))
        caplog.clear()
        with caplog.at_level("WARNING"):
            r = run_stage(p, get_stage("preprocess"), cfg, body)
        assert not r.skipped and r.resumed  # the same config: it resumes (its checkpoints, if any)
        lines = [rec.getMessage() for rec in caplog.records]
        assert len(lines) == 1 and "preprocess/depth.npy" in lines[0] and words in lines[0], lines
        assert "will be redone" in lines[0]
        assert p.stage_problems("preprocess") == []


def test_an_old_record_without_hashes_is_checked_by_structure(tmp_path):
    """Projects made before the hashes: their artifacts are read as what they are (no write)."""
    p, _ = _project_with_stage(tmp_path)
    m = p.read_manifest()
    del m["stages"]["preprocess"]["files"]
    npy = p.root / "preprocess" / "depth.npy"
    import numpy as np

    np.save(npy, np.zeros((4, 4), np.float32))
    m["stages"]["preprocess"]["artifacts"] = {"depth_npy": str(npy)}
    p.write_manifest(m)
    assert p.stage_problems("preprocess") == []
    npy.write_bytes(npy.read_bytes()[:-7])
    assert p.stage_problems("preprocess") == [
        ("preprocess/depth.npy", "is damaged (truncated: 185 bytes, its header declares 192)")
    ]


def test_a_stage_whose_inputs_changed_starts_over(tmp_path):
    from animate124.engine.runner import run_stage
    from animate124.stages.spec import get_stage

    p, _ = _project_with_stage(tmp_path)
    cfg = resolve_config("tiny", None, {"static": {"prompt": "a toy"}}, [])
    calls = []

    def static_body(ctx):
        calls.append(ctx.resume)
        (p.root / "static").mkdir(exist_ok=True)
        (p.root / "static" / "model.safetensors").write_bytes(b"m")
        return {"artifacts": {"static_model": p.root / "static" / "model.safetensors"}}

    run_stage(p, get_stage("static"), cfg, static_body)
    assert p.stage_record("static")["inputs"] == {
        "preprocess/depth.npy": hashlib.sha256(b"x" * 100).hexdigest()
    }
    assert run_stage(p, get_stage("static"), cfg, static_body).skipped
    # preprocess made again with other content: static is stale and starts over (no resume)
    m = p.read_manifest()
    m["stages"]["preprocess"]["files"]["preprocess/depth.npy"]["sha256"] = "0" * 64
    p.write_manifest(m)
    assert p.changed_inputs("static", ("preprocess",)) == ["preprocess/depth.npy"]
    r = run_stage(p, get_stage("static"), cfg, static_body, check_requirements=False)
    assert not r.skipped and calls == [False, False]


def test_a_required_file_missing_is_refused_before_anything_changes(tmp_path):
    from animate124.engine.runner import run_stage
    from animate124.stages.spec import get_stage

    p, _ = _project_with_stage(tmp_path)
    (p.root / "preprocess" / "depth.npy").unlink()
    before = p.manifest_path.read_bytes()
    with pytest.raises(ProjectError) as ei:
        run_stage(p, get_stage("static"), resolve_config("tiny"), lambda ctx: {}, force=True)
    assert "preprocess/depth.npy, which does not exist" in ei.value.message
    assert "animate124 preprocess" in ei.value.hint and "nothing was changed" in ei.value.hint
    assert p.manifest_path.read_bytes() == before


# --- full disks -------------------------------------------------------------------------------------------
def test_a_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import numpy as np

    from animate124.fileio import atomic_path, atomic_write_bytes, ensure_space

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="the disk is full: cannot write .*x.bin"):
        monkeypatch.setattr(os, "fsync", full)
        atomic_write_bytes(tmp_path / "x.bin", b"123")
    monkeypatch.undo()
    assert not list(tmp_path.glob(".x.bin*"))  # no temporary file left
    # numpy's own wording ("N requested and M written", no errno): the file system's free space says it
    monkeypatch.setattr("animate124.fileio.free_bytes", lambda d: 0)

    def torn(path, arr):
        Path(path).write_bytes(b"\x93NUMPY")
        raise OSError("1048576 requested and 131040 written")

    with pytest.raises(DiskFullError, match="depth.npy"), atomic_path(tmp_path / "depth.npy") as tmp:
        torn(tmp, np.zeros(3))
    assert not (tmp_path / "depth.npy").exists()
    with pytest.raises(DiskFullError, match="it needs 1.0 MiB"):
        ensure_space(tmp_path / "ckpt.safetensors", 1 << 20)


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path, monkeypatch):
    from animate124.engine.checkpoint import load_latest_checkpoint, save_checkpoint

    state = {"optimizer": {"param_groups": [], "scalars": {}}}
    save_checkpoint(tmp_path, 5, {"w": torch.ones(4)}, state)
    monkeypatch.setattr("animate124.fileio.free_bytes", lambda d: 1000)
    with pytest.raises(DiskFullError, match="ckpt-0000010.safetensors"):
        save_checkpoint(tmp_path, 10, {"w": torch.ones(4)}, state)
    monkeypatch.undo()
    assert load_latest_checkpoint(tmp_path).step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000005.json", "ckpt-0000005.safetensors"]


def _can_mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_a_real_full_disk(tmp_path):
    """On a 1 MiB tmpfs (root only): numpy, PIL and safetensors writes all become DiskFullError."""
    import numpy as np
    from PIL import Image

    from animate124.fileio import atomic_path

    mnt = tmp_path / "small"
    if os.geteuid() != 0 or not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tmpfs needs root")
    try:
        with pytest.raises(DiskFullError, match="depth.npy"), atomic_path(mnt / "depth.npy") as tmp:
            np.save(tmp, np.zeros(500_000))
        with pytest.raises(DiskFullError, match="rgba.png"), atomic_path(mnt / "rgba.png") as tmp:
            Image.frombytes("RGB", (800, 800), os.urandom(3 * 800 * 800)).save(tmp)
        from animate124.engine.checkpoint import save_checkpoint

        with pytest.raises(DiskFullError, match="ckpt-0000001"):
            save_checkpoint(mnt / "ckpt", 1, {"w": torch.zeros(500_000)}, {"optimizer": {}})
        assert not [p for p in mnt.rglob("*") if p.is_file()]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --- checkpoints and logs ------------------------------------------------------------------------------------
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_used(tmp_path, caplog):
    from animate124.engine.checkpoint import load_latest_checkpoint, save_checkpoint

    state = {"optimizer": {"param_groups": [], "scalars": {}}}
    save_checkpoint(tmp_path, 5, {"w": torch.full((4,), 5.0)}, state)
    keep = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    save_checkpoint(tmp_path, 10, {"w": torch.full((4,), 10.0)}, state)
    for name, data in keep.items():  # as if the run died before deleting the older pair
        (tmp_path / name).write_bytes(data)
    newest = tmp_path / "ckpt-0000010.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])
    with caplog.at_level("WARNING"):
        ck = load_latest_checkpoint(tmp_path)
    assert ck.step == 5 and torch.equal(ck.tensors["w"], torch.full((4,), 5.0))
    assert (tmp_path / "ckpt-0000010.safetensors.corrupt").is_file()
    assert (tmp_path / "ckpt-0000010.json.corrupt").is_file()
    assert "truncated" in caplog.text and "resuming from the previous checkpoint" in caplog.text
    (tmp_path / "ckpt-0000005.json").write_bytes(os.urandom(50))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert load_latest_checkpoint(tmp_path) is None
    assert "the stage starts over" in caplog.text


def test_the_log_of_a_resumed_run_has_each_step_once(tmp_path):
    from animate124.engine.scalars import ScalarLog

    path = tmp_path / "static.jsonl"
    with ScalarLog(path) as log:
        for step in range(1, 11):
            log.write(step, {"loss": step})
    with path.open("a") as fh:
        fh.write('{"step": 11, "lo')  # a torn line from a killed process
    with ScalarLog(path, resume_from=6) as log:
        for step in range(7, 13):
            log.write(step, {"loss": step})
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == list(range(1, 13))
    with ScalarLog(path) as log:  # a new run (--force): a new log
        log.write(1, {"loss": 0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1]


def test_tensorboard_hides_the_steps_a_resumed_run_repeats(tmp_path, monkeypatch):
    """TensorBoard's event files cannot be cut: the writer of a run resumed after step k purges steps > k
    (a new run: every step)."""
    from animate124.engine import scalars

    made = []

    class Writer:
        def __init__(self, directory, purge_step=None):
            made.append((Path(directory).name, purge_step))

        def close(self):
            pass

    monkeypatch.setattr(scalars, "tensorboard_writer", Writer)
    with scalars.ScalarLog(tmp_path / "static.jsonl", resume_from=6, tensorboard=True):
        pass
    with scalars.ScalarLog(tmp_path / "static.jsonl", tensorboard=True):
        pass
    assert made == [("static", 7), ("static", 1)]


# --- config values and text ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("run.checkpoint_every=0", "run.checkpoint_every: 0 is below the minimum 1"),
        ("static.iters=99999999999999999999", "static.iters: 99999999999999999999 is above the maximum"),
        ("invert.steps=1e30", "invert.steps"),
        ("static.lr=.nan", "static.lr: nan is not a finite number"),
        ("loss.rgb=-.inf", "loss.rgb"),
        ("camera.polar_range=[-5,90]", "camera.polar_range[0]: -5.0 is below the minimum 0.0"),
        ("render.size=0", "render.size"),
        ("run.seed=4294967296", "run.seed"),
        ("raymarch.update_interval=0", "raymarch.update_interval"),
    ],
)
def test_config_values_out_of_range_name_the_field(item, words):
    with pytest.raises(ConfigError) as ei:
        resolve_config("tiny", None, None, [item])
    assert words in ei.value.message


def test_text_that_is_not_text_is_refused():
    bad = b"a panda \xff dances".decode("utf-8", "surrogateescape")
    with pytest.raises(
        ConfigError, match=r"the motion prompt: not valid UTF-8 text \(byte 0xff at position 8\)"
    ):
        check_text("the motion prompt", bad)
    with pytest.raises(ConfigError, match="static.prompt: not valid UTF-8"):
        resolve_config("tiny", None, {"static": {"prompt": bad}}, [])
    with pytest.raises(ConfigError, match="static.prompt: contains the control character U\\+0007"):
        resolve_config("tiny", None, {"static": {"prompt": "a\tb\x07"}}, [])
    assert check_text("p", "a panda\tdances\n, 🐼") == "a panda\tdances\n, 🐼"


def test_config_file_problems_are_usage_errors(tmp_path):
    from animate124.config.loader import load_yaml

    (tmp_path / "bad.yaml").write_bytes(b"static:\n  prompt: \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff at offset 18\)"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_yaml(tmp_path)
    (tmp_path / "empty.yaml").write_text("static:\n")  # a section with nothing under it changes nothing
    assert resolve_config("tiny", tmp_path / "empty.yaml").static.iters == resolve_config("tiny").static.iters


# --- signals ----------------------------------------------------------------------------------------------------
def test_sigterm_stops_like_ctrl_c():
    from animate124.engine.interrupt import Interrupted, graceful_interrupt, terminate_like_interrupt

    before = signal.getsignal(signal.SIGTERM)  # not always SIG_DFL: a library (Ray) may have set one
    with pytest.raises(Interrupted) as ei, graceful_interrupt() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.signum == signal.SIGTERM  # the loop checkpoints and returns
    assert ei.value.signum == signal.SIGTERM and isinstance(ei.value, KeyboardInterrupt)
    with pytest.raises(Interrupted), graceful_interrupt():  # a second signal: at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the second signal did not stop the block")
    with pytest.raises(Interrupted) as ei, terminate_like_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert ei.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler that was there is put back


def test_a_warning_with_bytes_that_are_not_utf8_prints(capsys):
    """Command-line text that was not UTF-8 (lone surrogates) in a warning is shown escaped, not raised."""
    import logging

    from animate124.cli.logs import configure_logging

    configure_logging()
    try:
        logging.getLogger("animate124.test").warning("subject %s", "toy \udcff")
    finally:
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if type(h).__name__ != "_ConsoleHandler"
        ]
    assert "warning: subject toy \\udcff" in capsys.readouterr().err


def test_the_interrupted_line_names_the_command_that_resumes():
    from animate124.cli.common import interrupted_line
    from animate124.engine.interrupt import Interrupted

    assert "run the same command again to resume" in interrupted_line(KeyboardInterrupt(), force=False)
    line = interrupted_line(Interrupted(signal.SIGTERM), force=True)
    assert "stopped by SIGTERM" in line and "without --force to resume" in line


# --- the order of gradient sums -------------------------------------------------------------------------------
_GRADS = textwrap.dedent(
    """
    import sys, torch
    from animate124.render.marcher import composite
    from animate124.scene.grid import GridEncoding, GridEncodingConfig
    torch.manual_seed(0)
    cfg = GridEncodingConfig(grid_type="tiled", num_levels=8, level_dim=2, base_resolution=4,
                             desired_resolution=256, log2_table_size=14)
    enc = GridEncoding(cfg, backend="torch")
    x = torch.rand(200_000, 3) * 2 - 1
    (enc(x) * torch.randn(200_000, 16)).sum().backward()
    s = torch.rand(300_000, requires_grad=True)
    rays = torch.sort(torch.randint(0, 3000, (300_000,))).values
    composite(s, torch.full_like(s, 0.01), rays, 3000).weights.square().sum().backward()
    torch.save([enc.embeddings.grad, s.grad], sys.argv[1])
    """
)


def test_grid_and_compositing_gradients_are_the_same_in_two_runs_on_two_threads(tmp_path):
    """The gathers behind the grid encoder and the compositing differentiate to ``index_add_``, which
    sums in a fixed order: two processes on 2 threads give identical gradients (``tensor[index]`` gave
    different last bits: index_put_ with accumulate is threaded)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    grads = []
    for i in range(2):
        out = tmp_path / f"g{i}.pt"
        subprocess.run([sys.executable, "-c", _GRADS, str(out)], env=env, check=True, timeout=600)
        grads.append(torch.load(out))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
        assert a.abs().sum() > 0


def test_deterministic_algorithms_follow_run_deterministic():
    from animate124.engine.runtime import deterministic_algorithms

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(resolve_config("tiny")) as on:
        assert on and torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(resolve_config("tiny", sets=["run.deterministic=off"])) as on:
        assert not on and not torch.are_deterministic_algorithms_enabled()


def test_trained_field_files_are_the_same_bytes_for_the_same_tensors(tmp_path):
    """One metadata key with sorted JSON: safetensors writes a metadata map in per-process hash order."""
    script = textwrap.dedent(
        """
        import sys, torch
        from animate124.config import resolve_config
        from animate124.stages.build import build_field, build_occupancy
        from animate124.stages.artifacts import save_trained
        cfg = resolve_config("tiny")
        torch.manual_seed(0)
        save_trained(sys.argv[1], build_field(cfg.field, "static", "cpu"), build_occupancy(cfg, False, "cpu"),
                     kind="static", field_cfg=cfg.field, extra={"b": 1, "a": 2})
        """
    )
    files = []
    for seed in ("1", "2"):
        out = tmp_path / f"m{seed}.safetensors"
        subprocess.run(
            [sys.executable, "-c", script, str(out)], env={**os.environ, "PYTHONHASHSEED": seed}, check=True
        )
        files.append(out.read_bytes())
    assert files[0] == files[1]
    from animate124.stages.artifacts import load_trained

    assert load_trained(tmp_path / "m1.safetensors", "cpu").meta["extra"] == {"b": 1, "a": 2}


# --- models: pinned revisions, expected hashes, damaged files -----------------------------------------------
def test_every_pin_is_a_full_commit_or_main_with_a_reason():
    import re

    from animate124.models.registry import KNOWN_REPOS

    for spec in KNOWN_REPOS.values():
        assert spec.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", spec.revision), spec.repo_id
        for path, sha in spec.file_sha256.items():
            assert re.fullmatch(r"[0-9a-f]{64}", sha) and path in spec.allow_patterns, (spec.repo_id, path)


def test_verify_checks_the_expected_hashes(tmp_path, monkeypatch):
    """The registry's expected sha256 of a pinned file: a mismatch is a problem that names the file (the
    mechanism, on the tiny repos: the real hashes belong to the real weights)."""
    from dataclasses import replace

    import animate124.models.store as store_mod
    from animate124.models.registry import get_role
    from animate124.models.store import ModelStore
    from animate124.models.tiny import build_tiny_cache

    cache = tmp_path / "cache"
    build_tiny_cache(cache, ["clip"])
    (cache / "animate124-tiny-cache.json").unlink()  # held to the hashes like a real download
    store = ModelStore(cache, offline=True)
    weights = store.resolve("clip") / "model.safetensors"
    right = hashlib.sha256(weights.read_bytes()).hexdigest()
    spec = replace(get_role("clip"), file_sha256={"model.safetensors": right})
    monkeypatch.setitem(store_mod.get_role.__globals__["ROLES"], "clip", spec)
    assert store.verify("clip") == []
    spec = replace(spec, file_sha256={"model.safetensors": "0" * 64})
    monkeypatch.setitem(store_mod.get_role.__globals__["ROLES"], "clip", spec)
    (problem,) = store.verify("clip")
    assert "model.safetensors: sha256" in problem and "is not the expected 000000000000" in problem


def test_a_damaged_tiny_model_says_how_to_rebuild_it(tmp_path):
    from animate124.errors import ModelNotFoundError
    from animate124.models.loaders import load_clip
    from animate124.models.store import ModelStore
    from animate124.models.tiny import build_tiny_cache

    cache = tmp_path / "tiny-models"
    build_tiny_cache(cache, ["clip"])
    store = ModelStore(cache, offline=True)
    weights = Path(os.path.realpath(store.resolve("clip") / "model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelNotFoundError) as ei:
        load_clip(store)
    assert "model.safetensors of role 'clip' is damaged (truncated" in ei.value.message
    assert f"delete {cache}" in ei.value.hint and "models verify --tiny" in ei.value.hint
    assert any("is damaged (truncated" in p for p in store.verify("clip"))


def test_a_tiny_cache_built_before_a_pin_is_rebuilt_for_the_new_revision(tmp_path, monkeypatch):
    from dataclasses import replace

    import animate124.models.tiny as tiny
    from animate124.models.registry import ROLES
    from animate124.models.store import ModelStore

    cache = tmp_path / "tiny-models"
    tiny.ensure_tiny_cache(cache)
    assert tiny._stale_roles(cache) == []
    pinned = replace(ROLES["clip"], revision="1" * 40)
    monkeypatch.setitem(ROLES, "clip", pinned)
    assert tiny._stale_roles(cache) == ["clip"]
    tiny.ensure_tiny_cache(cache)
    assert tiny._stale_roles(cache) == []
    assert ModelStore(cache, offline=True).resolve("clip").name == "1" * 40
