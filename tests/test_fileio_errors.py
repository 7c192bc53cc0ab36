"""fileio (atomic writes, the inter-process lock) and errors (oom_guard, exit codes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from animate124.errors import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    MEMORY_HINT,
    ConfigError,
    InputError,
    OutOfMemoryError,
    ProjectError,
    oom_guard,
)
from animate124.fileio import atomic_write_text, file_lock


def test_oom_guard_turns_torch_oom_into_the_library_error():
    import torch

    with pytest.raises(OutOfMemoryError) as ei, oom_guard("static stage, step 12"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "static stage, step 12" in ei.value.message and "2.00 GiB" in ei.value.message
    assert ei.value.hint == MEMORY_HINT and "--preset low-vram" in MEMORY_HINT
    assert isinstance(ei.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(OutOfMemoryError) as ei, oom_guard("refine", hint="lower refine.image_size"):
        raise torch.cuda.OutOfMemoryError("x")
    assert ei.value.hint == "lower refine.image_size"
    # anything else passes through unchanged, even with "out of memory" in its text
    with pytest.raises(RuntimeError, match="out of memory"), oom_guard():
        raise RuntimeError("out of memory")


def test_exit_codes_of_the_error_classes():
    assert ConfigError("x").exit_code == InputError("x").exit_code == EXIT_USAGE == 2
    assert ProjectError("x").exit_code == OutOfMemoryError("x").exit_code == EXIT_RUNTIME == 1


def test_atomic_write_mode_is_0644(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_file_lock_serialises_processes(tmp_path):
    lock = tmp_path / "x.lock"
    script = textwrap.dedent(
        f"""
        import sys, time
        from animate124.fileio import file_lock
        with file_lock({str(lock)!r}):
            sys.stdout.write("held\\n"); sys.stdout.flush()
            time.sleep(1.0)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    t0 = time.perf_counter()
    with file_lock(lock):
        waited = time.perf_counter() - t0
    proc.wait()
    assert waited > 0.5  # we waited for the other process to let go
    proc = subprocess.Popen([sys.executable, "-c", script.replace("time.sleep(1.0)", "time.sleep(60)")],
                            stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline().strip() == b"held"
    proc.kill()
    proc.wait()
    t0 = time.perf_counter()
    with file_lock(lock):  # a killed holder's lock is released by the kernel
        pass
    assert time.perf_counter() - t0 < 5
