"""The kit of the bad-input battery (``tests/battery.py``): what a case is, where it runs, the ways it
damages a project or the model cache, the patches that make the disk full or press Ctrl-C, and the checks
of the project afterwards. The cases themselves are in ``battery_cases.py``.

A case's ``setup`` changes the copy of the finished tiny project (``Ctx.project``) or the working directory
(``Ctx.work``) before the command runs; ``patch`` is a context manager around the command (a full disk, an
interrupt); ``damaged`` names the stage whose file it damaged, ``verify_after`` asks that an exit 0 leave
every finished stage verified, ``check`` adds a case's own check of the project.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a toy is spinning"
TINY = ("--preset", "tiny")
BAD_UTF8 = b"a toy \xff\xfe is spinning".decode("utf-8", "surrogateescape")  # what Linux argv gives Python


@dataclass
class Ctx:
    """Where a case runs: ``work`` (the working directory, holding ``toy.png`` and ``runs/toy``)."""

    work: Path
    cache: Path

    @property
    def project(self) -> Path:
        return self.work / "runs" / "toy"

    def p(self, rel: str) -> Path:
        return self.project / rel


@dataclass
class Case:
    name: str
    args: list[str] | Callable[[Ctx], list[str]]
    codes: tuple[int, ...]
    expect: tuple[str, ...] = ()
    setup: Callable[[Ctx], None] | None = None
    damaged: str | None = None  # the stage whose file the setup damaged
    verify_after: bool = False  # exit 0 must leave every finished stage verified
    own_cache: bool = False  # the case damages the model cache: it gets its own copy
    check: Callable[[Ctx, str], str | None] | None = None  # extra check: an error text or None
    patch: Callable[[Ctx], AbstractContextManager[object]] | None = None  # around the command (full disk...)


# --- damage -----------------------------------------------------------------------------------------
def truncate(rel: str, keep: float = 0.5) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        p = c.p(rel)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])

    return f


def randomize(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        p = c.p(rel)
        p.write_bytes(os.urandom(max(p.stat().st_size, 64)))

    return f


def flip_byte(rel: str) -> Callable[[Ctx], None]:
    """Same size, one byte near the end changed (only a content hash sees it)."""

    def f(c: Ctx) -> None:
        p = c.p(rel)
        data = bytearray(p.read_bytes())
        data[-5] ^= 0xFF
        p.write_bytes(bytes(data))

    return f


def delete(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        c.p(rel).unlink()

    return f


def to_directory(rel: str) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        c.p(rel).unlink()
        c.p(rel).mkdir()

    return f


def write(rel: str, data: bytes, base: str = "project") -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        root = c.project if base == "project" else c.work
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return f


def edit_manifest(fn: Callable[[dict], object]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        m = json.loads(c.p("manifest.json").read_text())
        fn(m)
        c.p("manifest.json").write_text(json.dumps(m))

    return f


def both(*fns: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        for fn in fns:
            fn(c)

    return f


def interrupted(stage: str) -> Callable[[Ctx], None]:
    """The stage as a killed run leaves it: status "running", its result gone, a checkpoint kept."""

    def f(c: Ctx) -> None:
        c.p(f"{stage}/model.safetensors").unlink()
        m = json.loads(c.p("manifest.json").read_text())
        m["stages"][stage]["status"] = "running"
        c.p("manifest.json").write_text(json.dumps(m))

    return f


def ckpt(stage: str, suffix: str) -> Callable[[Ctx], str]:
    def f(c: Ctx) -> str:
        found = sorted(c.p(f"{stage}/checkpoints").glob(f"ckpt-*.{suffix}"))
        return str(found[-1].relative_to(c.project))

    return f


def on_ckpt(stage: str, suffix: str, damage: Callable[[str], Callable[[Ctx], None]]) -> Callable[[Ctx], None]:
    def f(c: Ctx) -> None:
        damage(ckpt(stage, suffix)(c))(c)

    return f


def cache_file(pattern: str, damage: str) -> Callable[[Ctx], None]:
    """Damage the first file matching ``pattern`` under the case's own tiny model cache (following the
    snapshot's link to its blob where there is one)."""

    def f(c: Ctx) -> None:
        hits = sorted(c.cache.glob(pattern))
        target = Path(os.path.realpath(hits[0]))
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))

    return f


# --- patches: what the machine does to a command --------------------------------------------------------
def full_disk_under(
    folder: str, numpy_wording: bool = False
) -> Callable[[Ctx], AbstractContextManager[None]]:
    """The file system of the project's ``folder`` is full: it has no free bytes, and (``numpy_wording``)
    ``numpy.save`` fails as numpy does on a full disk, with a torn file and no errno ("N requested and M
    written"). Checkpoints and trained fields check the free space before writing; the rest find out."""

    @contextmanager
    def patched(c: Ctx) -> Iterator[None]:
        from unittest import mock

        import numpy as np

        target = c.p(folder)

        def free(directory: str | os.PathLike[str]) -> int:
            return 0 if Path(directory).resolve().is_relative_to(target.resolve()) else 1 << 40

        def torn_save(file: object, arr: object, *args: object, **kwargs: object) -> None:
            if hasattr(file, "write"):
                file.write(b"\x93NUMPY\x01\x00" + b"\x00" * 120)  # type: ignore[union-attr]
            raise OSError("1048576 requested and 131040 written")

        with mock.patch("animate124.fileio.free_bytes", free):
            if not numpy_wording:
                yield
                return
            with mock.patch.object(np, "save", torn_save):
                yield

    return patched


def ctrl_c_in_stage(c: Ctx) -> AbstractContextManager[object]:
    """Ctrl-C once the stage has started (its record says "running"): the stage body raises
    KeyboardInterrupt where it would begin its work."""
    from unittest import mock

    def interrupt(cfg: object) -> object:
        raise KeyboardInterrupt

    return mock.patch("animate124.engine.runner.deterministic_algorithms", interrupt)


# --- checks ------------------------------------------------------------------------------------------
def verifies(c: Ctx) -> list[str]:
    """Problems of every finished stage of the project (empty: it verifies)."""
    from animate124.project import Project

    p = Project(c.project)
    if not p.exists():
        return []
    out = []
    for stage, rec in p.read_manifest()["stages"].items():
        if rec.get("status") == "done":
            out += [f"{stage}: {rel} {what}" for rel, what in p.stage_problems(stage, rec)]
    return out


def unchanged_files(c: Ctx, before: dict[str, bytes]) -> str | None:
    now = {str(q.relative_to(c.project)): q.read_bytes() for q in c.project.rglob("*") if q.is_file()}
    return None if now == before else "the project changed"


# --- commands and artifacts ----------------------------------------------------------------------------
STAGE_CMDS = {
    "preprocess": lambda c: ["preprocess", "toy.png", "-p", str(c.project), *TINY],
    "invert": lambda c: ["invert", "-p", str(c.project), *TINY],
    "static": lambda c: ["static", "-p", str(c.project), *TINY],
    "dynamic": lambda c: ["dynamic", "-p", str(c.project), *TINY],
    "refine": lambda c: ["refine", "-p", str(c.project), *TINY],
    "run-all": lambda c: ["run-all", "toy.png", PROMPT, *TINY],
    "render": lambda c: ["render", "-p", str(c.project), "--orbit"],
    "export": lambda c: ["export", "-p", str(c.project)],
    "evaluate": lambda c: ["evaluate", "-p", str(c.project)],
    "report": lambda c: ["report", "-p", str(c.project)],
}


def stage_cmd(name: str, *extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [*STAGE_CMDS[name](c), *extra]


ARTIFACTS = {  # file -> the stage that makes it
    "preprocess/rgba.png": "preprocess",
    "preprocess/depth.png": "preprocess",
    "preprocess/depth.npy": "preprocess",
    "preprocess/preview.png": "preprocess",
    "invert/learned_embeds.safetensors": "invert",
    "static/model.safetensors": "static",
    "dynamic/model.safetensors": "dynamic",
    "refine/model.safetensors": "refine",
}
DAMAGES = {"deleted": delete, "truncated": truncate, "random": randomize, "flipped": flip_byte}
UNTIL = {
    "preprocess": "static",
    "invert": "invert",
    "static": "dynamic",
    "dynamic": "refine",
    "refine": "refine",
}
DOWNSTREAM = {
    "preprocess": "static",
    "invert": "refine",
    "static": "dynamic",
    "dynamic": "refine",
    "refine": "render",
}


# --- checks of a case's project ------------------------------------------------------------------------
def without_invert(c: Ctx) -> None:
    """A copy of the project (``p2``) in which invert never ran."""
    p2 = c.work / "p2"
    shutil.copytree(c.project, p2)
    shutil.rmtree(p2 / "invert")
    m = json.loads((p2 / "manifest.json").read_text())
    m["stages"].pop("invert", None)
    (p2 / "manifest.json").write_text(json.dumps(m))


def not_marked(stage: str) -> Callable[[Ctx, str], str | None]:
    """A refused stage was not changed: its record still says done and its checkpoints are there."""

    def f(c: Ctx, out: str) -> str | None:
        if stage == "render":
            return None
        rec = json.loads(c.p("manifest.json").read_text())["stages"][stage]
        if rec.get("status") != "done":
            return f"{stage} was marked {rec.get('status')}"
        if not list(c.p(f"{stage}/checkpoints").glob("ckpt-*")):
            return f"{stage}'s checkpoints were deleted"
        return None

    return f


def next_up_to_date(stage: str) -> Callable[[Ctx, str], str | None]:
    """The stage after the redone one read the same bytes: it is up to date (not trained again)."""

    def f(c: Ctx, out: str) -> str | None:
        return None if f"{stage}: up to date" in out else f"{stage} was not up to date after the redo"

    return f


def corrupt_kept(stage: str) -> Callable[[Ctx, str], str | None]:
    def f(c: Ctx, out: str) -> str | None:
        # the set-aside files are gone only if the stage started over and cleared its folder
        return None if "starts over" in out or "previous" in out else "no word on how it goes on"

    return f


def status_is(stage: str, status: str) -> Callable[[Ctx, str], str | None]:
    """The stage's record says ``status`` and no temporary file of a torn write is left in the project."""

    def f(c: Ctx, out: str) -> str | None:
        rec = json.loads(c.p("manifest.json").read_text())["stages"].get(stage, {})
        if rec.get("status") != status:
            return f"{stage} is {rec.get('status')!r}, expected {status!r}"
        torn = [str(q.relative_to(c.project)) for q in c.project.rglob(".*tmp*")]
        return f"temporary files left: {torn}" if torn else None

    return f


def all_of(*checks: Callable[[Ctx, str], str | None]) -> Callable[[Ctx, str], str | None]:
    def f(c: Ctx, out: str) -> str | None:
        return next((p for p in (chk(c, out) for chk in checks) if p), None)

    return f


def unchanged(folder: str = "") -> tuple[Callable[[Ctx], None], Callable[[Ctx, str], str | None]]:
    """(setup, check): the files under ``work/folder`` (default: the project) are the same after the command."""
    before: dict[str, bytes] = {}

    def root(c: Ctx) -> Path:
        return c.work / folder if folder else c.project

    def files(c: Ctx) -> dict[str, bytes]:
        return {str(q.relative_to(root(c))): q.read_bytes() for q in root(c).rglob("*") if q.is_file()}

    def setup(c: Ctx) -> None:
        before.clear()
        before.update(files(c))

    def check(c: Ctx, out: str) -> str | None:
        now = files(c)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        return f"changed: {changed[:5]}" if changed else None

    return setup, check
