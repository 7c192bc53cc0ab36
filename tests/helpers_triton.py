"""Run a test module's checks under Triton's CPU interpreter, in a subprocess (``TRITON_INTERPRET=1`` must be
set before Triton decorates the kernels, so it cannot be switched on inside the test process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover
    HAS_TRITON = False

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


_TESTS = Path(__file__).parent  # the subprocesses import the test modules from here, run in the repo root


def _command(module: str, func: str) -> list[str]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(_TESTS)!r}); import {module} as m; "
        f"print('@@' + json.dumps(m.{func}()))"
    )
    return [sys.executable, "-c", code]


def _result(key: tuple[str, str], returncode: int, stdout: str, stderr: str) -> dict:
    assert returncode == 0, f"{key}: exit {returncode}\n{stderr[-3000:]}"
    line = [ln for ln in stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


#: Interpreter jobs started in the background when the session starts (``prefetch_interpreted``, called by
#: conftest.py), run one at a time beside the other tests: each is a single-threaded Python process, so on
#: CI's two cores most of its time overlaps with the main process's tests instead of adding to them.
#: key (module, func) -> {"state": queued | taken | running | done | cancelled, "done": Event, ...}
_JOBS: dict[tuple[str, str], dict] = {}
_LOCK = threading.Lock()


def _interp_env(background: bool) -> dict[str, str]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    if background:  # one core's worth, beside the main process's torch threads
        env["OMP_NUM_THREADS"] = "1"
    return env


def _worker() -> None:
    while True:
        with _LOCK:
            key = next((k for k, j in _JOBS.items() if j["state"] == "queued"), None)
            if key is None:
                return
            job = _JOBS[key]
            job["state"] = "running"
            job["proc"] = subprocess.Popen(
                _command(*key),
                env=_interp_env(background=True),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=_TESTS.parent,
            )
        out, err = job["proc"].communicate()
        job["result"] = (job["proc"].returncode, out, err)
        job["state"] = "done"
        job["done"].set()


def prefetch_interpreted(keys: list[tuple[str, str]]) -> None:
    """Start ``run_interpreted``'s jobs for ``keys`` in the background, in that order, one at a time (a
    no-op without Triton). A job that a test asks for before it has started runs in the test instead."""
    if not HAS_TRITON or not keys:
        return
    with _LOCK:
        for key in keys:
            _JOBS.setdefault(key, {"state": "queued", "done": threading.Event()})
    threading.Thread(target=_worker, name="interpreter-prefetch", daemon=True).start()


def stop_prefetch() -> None:
    """Cancel the queued jobs and kill a running one (the session is ending)."""
    with _LOCK:
        for job in _JOBS.values():
            if job["state"] == "queued":
                job["state"] = "cancelled"
            elif job["state"] == "running":
                job["proc"].kill()


def prefetch_keys(source: str) -> list[tuple[str, str]]:
    """The ``run_interpreted("module"[, "func"])`` calls written in a test module's source, in order."""
    pattern = r'run_interpreted\(\s*"(\w+)"(?:\s*,\s*"(\w+)")?'
    return [(m, f or "_interp_checks") for m, f in re.findall(pattern, source)]


def run_interpreted(module: str, func: str = "_interp_checks", timeout: float = 900) -> dict:
    """``tests/<module>.py``'s ``func()`` (a JSON-able dict) evaluated with ``TRITON_INTERPRET=1`` (the test
    is skipped without Triton): the background job's result when ``prefetch_interpreted`` has started it,
    else a subprocess run here and now."""
    if not HAS_TRITON:
        pytest.skip("triton is not importable")
    key = (module, func)
    with _LOCK:
        job = _JOBS.get(key)
        if job is not None and job["state"] == "queued":
            job["state"] = "taken"
        if job is not None and job["state"] in ("taken", "cancelled"):
            job = None
    if job is not None:
        if not job["done"].wait(timeout):
            job["proc"].kill()
            pytest.fail(f"the interpreter job {key} ran past {timeout} s")
        return _result(key, *job["result"])
    proc = subprocess.run(
        _command(module, func),
        env=_interp_env(background=False),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=_TESTS.parent,
    )
    return _result(key, proc.returncode, proc.stdout, proc.stderr)


def compile_for_sm90(
    fn,
    constexprs: dict,
    types: dict[str, str] | None = None,
    num_warps: int = 4,
    divisible: tuple[str, ...] = (),
):
    """``fn`` (a ``@triton.jit`` kernel) lowered to an sm_90 cubin by Triton's own compiler, without a GPU:
    a kernel that the CPU interpreter runs but the GPU compiler rejects fails here. ``types`` gives an
    argument's Triton type (``*fp32``, ``i32``, ``fp32``, ...); the rest: ``*_ptr`` -> ``*fp32``, the others
    ``i32``; a constexpr parameter with a default and not in ``constexprs`` takes its default. ``divisible``
    names the arguments specialised as multiples of 16 (as a launch specialises a 16-byte aligned pointer or an
    integer divisible by 16; the others compile as a launch with odd values would). Skips where this Triton
    has no NVIDIA backend."""
    if not HAS_TRITON:
        pytest.skip("triton is not importable")
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:  # pragma: no cover - another Triton layout
        pytest.skip("this Triton has no ASTSource / GPUTarget")
    types = types or {}
    # a constexpr parameter with a default (a switch added later, e.g. ``ZMERGE``) takes its default
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}
    constexprs = {**defaults, **constexprs}
    sig = {
        a: "constexpr" if a in constexprs else types.get(a, "*fp32" if a.endswith("_ptr") else "i32")
        for a in fn.arg_names
    }
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in divisible}
    try:
        return triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs), attrs=attrs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps},
        )
    except RuntimeError as exc:  # pragma: no cover - no NVIDIA backend / ptxas in this install
        if "backend" in str(exc).lower() or "ptxas" in str(exc).lower():
            pytest.skip(f"Triton cannot compile for CUDA here: {exc}")
        raise


def ptxas_report(ptx: str) -> dict[str, int]:
    """``ptxas -v`` of ``ptx`` for sm_90a: registers, stack frame and spill bytes per thread."""
    import triton

    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    version = re.search(r"^\.version (\d+)\.(\d+)", ptx, re.M)
    # Triton emits the PTX version of its newest ptxas (named ptxas-blackwell in this wheel) when it has one
    candidates = [bindir / "ptxas-blackwell", bindir / "ptxas"]
    errors = []
    for exe in (c for c in candidates if c.exists()):
        with tempfile.TemporaryDirectory() as d:
            src = Path(d, "k.ptx")
            src.write_text(ptx)
            r = subprocess.run(
                [str(exe), "-v", "--gpu-name", "sm_90a", str(src), "-o", str(Path(d, "k.o"))],
                capture_output=True, text=True,
            )  # fmt: skip
        if r.returncode == 0:
            return {
                key: int(m.group(1)) if (m := re.search(pat, r.stderr)) else 0
                for key, pat in (
                    ("registers", r"Used (\d+) registers"),
                    ("stack_bytes", r"(\d+) bytes stack frame"),
                    ("spill_store_bytes", r"(\d+) bytes spill stores"),
                    ("spill_load_bytes", r"(\d+) bytes spill loads"),
                )
            }
        errors.append(f"{exe.name}: {r.stderr.strip()[-200:]}")
    raise RuntimeError(f"no ptxas here assembles PTX {version.group(0) if version else '?'}: {errors}")


_LAYOUT_ALIAS = re.compile(r"^(#[\w.]+) = (#ttg\.\w+<\{.*\}>)\s*$", re.M)
_ASM_RESULT = re.compile(r"tt\.elementwise_inline_asm.*-> tensor<((?:\d+x)+)\w+, (.*)> loc\(")


def _ints(layout: str, key: str) -> list[int]:
    return [int(v) for v in re.search(key + r" = \[([\d, ]+)\]", layout).group(1).split(",")]


def inline_asm_replication(ttgir: str) -> list[int]:
    """For each inline-asm op of a compiled kernel (``k.asm["ttgir"]``): how many threads hold each element of
    its result, i.e. how many times the asm runs per element (1 = once; Triton runs an ``inline_asm_elementwise``
    in every thread that holds the element, so a reduction issued in asm on a replicated layout adds twice).
    Reads blocked layouts and slices of them; any other layout fails the caller's check loudly."""
    aliases = dict(_LAYOUT_ALIAS.findall(ttgir))
    out = []
    for shape_s, layout in _ASM_RESULT.findall(ttgir):
        shape = [int(v) for v in shape_s.rstrip("x").split("x")]
        dims = None
        m = re.fullmatch(r"#ttg\.slice<\{dim = (\d+), parent = (#[\w.]+)\}>", layout)
        if m:
            sliced, parent = int(m.group(1)), aliases[m.group(2)]
            dims = [d for d in range(len(_ints(parent, "sizePerThread"))) if d != sliced]
            layout = parent
        else:
            layout = aliases.get(layout, layout)
        if not layout.startswith("#ttg.blocked"):
            raise AssertionError(f"inline asm on a layout this check cannot read: {layout}")
        spt, tpw, wpc = (_ints(layout, k) for k in ("sizePerThread", "threadsPerWarp", "warpsPerCTA"))
        factor = 1
        if dims is None:
            dims = list(range(len(spt)))
        else:  # every thread along the sliced dimension holds the same element
            factor *= tpw[sliced] * wpc[sliced]
        for d, size in zip(dims, shape, strict=True):
            factor *= max(1, spt[d] * tpw[d] * wpc[d] // size)
        out.append(factor)
    return out
