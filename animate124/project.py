"""The project directory: every artifact path in one place, the manifest, atomic writes, the lock.

Layout (all stages share it; stages find their inputs here, never through user-typed paths)::

    <project>/
      manifest.json              stage status, config hash, artifacts, metrics, timings, versions
      .lock                      {"pid", "host", "started"} while a stage runs
      input/<source image>       a copy of the image the project was made from
      preprocess/                rgba.png, depth.png, depth.npy, preview.png
      invert/                    learned_embeds.safetensors, checkpoints/
      static/ dynamic/ refine/   model.safetensors (final), checkpoints/ (resumable)
      renders/<stage>/           `render` output: videos, grids and PNG frames of a trained stage
      export/<stage>/            `export` output: mesh.glb (animated), frames/*.ply|obj or mesh.ply
      metrics.json               `evaluate` output: CLIP and reference-view metrics
      report.html                `report` output: one self-contained page over the whole project
      config/<stage>.yaml        the resolved config of the stage's last run (schema version inside)
      logs/<stage>.jsonl         scalars, one JSON object per line

Every file a stage produced is recorded in its manifest record with its size and sha256
(``stages.<stage>.files``), and the files of the stages it read with their sha256 (``inputs``). A stage
is up to date only while its files are there and match (:meth:`Project.stage_problems`); a stage whose
inputs were made again with other content is stale. Records written before the hashes existed (no
``files``) are checked by reading the files' structure (:func:`animate124.readers.check_file`: headers
against file sizes, images decoded); they get hashes the next time the stage runs.

Every write of a file that another process may read (manifest, configs, final artifacts) goes
through :func:`atomic_write_bytes`: a temporary file in the same directory, fsync, then
``os.replace``, so a crash or SIGKILL leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate124.errors import DiskFullError, ProjectError, ProjectLockedError
from animate124.fileio import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
)

__all__ = [
    "Project",
    "StagePaths",
    "ARTIFACTS",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "find_project",
    "resolve_project",
    "FoundProject",
    "remember_project",
    "default_project_for_image",
    "now_iso",
]

MANIFEST_VERSION = 1

#: Every artifact a stage produces, by key, relative to the project root (the only place names live).
ARTIFACTS: dict[str, str] = {
    "rgba": "preprocess/rgba.png",
    "depth": "preprocess/depth.png",
    "depth_npy": "preprocess/depth.npy",
    "preview": "preprocess/preview.png",
    "learned_embeds": "invert/learned_embeds.safetensors",
    "static_model": "static/model.safetensors",
    "dynamic_model": "dynamic/model.safetensors",
    "refine_model": "refine/model.safetensors",
    "metrics": "metrics.json",
    "report": "report.html",
}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fs_error(exc: OSError, path: Path, doing: str) -> ProjectError:
    """A ProjectError that says in words why ``doing`` failed on ``path`` (permissions, a file in the way,
    a full disk)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"cannot {doing} {path}: the disk is full",
            hint="free some space there (or move the project with -p to another disk) and run the same "
            "command again: finished stages and the last checkpoint are kept",
        )
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return ProjectError(
            f"cannot {doing} {path}: {why}",
            hint="pass a project directory you can write to with -p DIR, or fix the permissions of this one",
        )
    if isinstance(exc, FileExistsError | NotADirectoryError) or exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return ProjectError(
            f"cannot {doing} {path}: {exc.filename or path} is a file, not a directory",
            hint="-p must name a project directory (it is created if missing), not a file",
        )
    return ProjectError(f"cannot {doing} {path}: {exc.strerror or exc}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Child:
    """A read-only path attribute: ``<owner>.root / name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, owner: Any, cls: type | None = None) -> Path:
        return owner.root / self.name


class _Artifact:
    """A read-only path attribute: the project's artifact ``key`` (see :data:`ARTIFACTS`)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, owner: Any, cls: type | None = None) -> Path:
        return owner.artifact(self.key)


@dataclass(frozen=True)
class StagePaths:
    """Paths of one stage's directory."""

    root: Path

    checkpoints = _Child("checkpoints")
    model = _Child("model.safetensors")
    state = _Child("state.json")
    previews = _Child("previews")


class Project:
    """A project directory. Cheap to construct; nothing is created until :meth:`create`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        # sha256 of files already hashed by this object, keyed by (path, size, mtime, inode): the checks of
        # one command hash each artifact once
        self._hashes: dict[tuple[str, int, int, int], str] = {}

    # --- paths -------------------------------------------------------------------------------
    manifest_path = _Child("manifest.json")
    lock_path = _Child(".lock")
    input_dir = _Child("input")
    preprocess_dir = _Child("preprocess")

    def artifact(self, key: str) -> Path:
        """The path of artifact ``key`` (see :data:`ARTIFACTS`)."""
        try:
            return self.root / ARTIFACTS[key]
        except KeyError:
            raise ProjectError(f"unknown artifact {key!r}") from None

    rgba = _Artifact("rgba")
    depth = _Artifact("depth")
    depth_npy = _Artifact("depth_npy")
    preview = _Artifact("preview")
    invert_dir = _Child("invert")
    learned_embeds = _Artifact("learned_embeds")

    def stage(self, name: str) -> StagePaths:
        """Paths of the stage directory ``<project>/<name>``."""
        if not name.isidentifier():
            raise ProjectError(f"bad stage name {name!r}")
        return StagePaths(self.root / name)

    render_dir = _Child("renders")  # `animate124 render` output, one sub-directory per trained stage
    export_dir = _Child("export")  # `animate124 export` meshes, one sub-directory per trained stage

    def config_path(self, stage: str) -> Path:
        return self.root / "config" / f"{stage}.yaml"

    def log_path(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.jsonl"

    # --- lifecycle ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def check_location(self) -> None:
        """Raise a ProjectError when the project path (or a parent) is a file, not a directory."""
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    raise ProjectError(
                        f"{self.root} cannot be a project directory: {path} is a file",
                        hint="-p must name a project directory (it is created if missing), not a file",
                    )
                return

    def create(self, source_image: Path | None = None, source_sha256: str | None = None) -> None:
        """Create the directory and an empty manifest (idempotent; an existing project is not written)."""
        self.check_location()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fs_error(exc, self.root, "create the project directory") from exc
        if not self.exists():
            self.write_manifest(
                {
                    "manifest_version": MANIFEST_VERSION,
                    "created": now_iso(),
                    "source_image": str(source_image) if source_image else None,
                    "source_sha256": source_sha256,
                    "stages": {},
                }
            )
        elif source_image is not None and self.read_manifest().get("source_image") is None:
            self.set_source(source_image, source_sha256)

    def source(self) -> tuple[str | None, str | None]:
        """``(path, sha256)`` of the image the project's outputs were made from (None when unknown)."""
        m = self.read_manifest()
        return m.get("source_image"), m.get("source_sha256")

    def set_source(self, path: Path, sha256: str | None) -> None:
        """Record the image the project's outputs are made from (path and content hash)."""
        m = self.read_manifest()
        m["source_image"], m["source_sha256"] = str(path), sha256
        self.write_manifest(m)

    def record(self, key: str, value: Any) -> None:
        """Store ``value`` under the manifest's top-level ``key`` (written only when it changes, so an
        up-to-date run in a read-only project writes nothing)."""
        m = self.read_manifest()
        if m.get(key) != value:
            m[key] = value
            self.write_manifest(m)

    def recorded(self, key: str, default: Any = None) -> Any:
        """The manifest's top-level ``key`` (e.g. ``"prompts"``, stored by ``run-all``)."""
        return self.read_manifest().get(key, default) if self.exists() else default

    def require(self) -> None:
        self.check_location()
        if not self.exists():
            raise ProjectError(
                f"{self.root} is not an animate124 project (no manifest.json)",
                hint="create one with `animate124 preprocess IMAGE -p DIR` or `animate124 run-all IMAGE PROMPT`",
            )

    # --- manifest ----------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        from animate124.readers import read_json

        self.require()
        data = read_json(
            self.manifest_path,
            "project manifest",
            hint="restore it from a backup, or start a new project (-p NEW_DIR); the stage outputs are intact",
            error=ProjectError,
        )
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            raise ProjectError(
                f"project manifest {self.manifest_path} is damaged (not a manifest object)",
                hint="restore it from a backup, or start a new project (-p NEW_DIR)",
            )
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise ProjectError(
                f"{self.manifest_path}: unsupported manifest_version {data.get('manifest_version')}"
            )
        data.setdefault("stages", {})
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.manifest_path, data)
        except OSError as exc:
            raise fs_error(exc, self.manifest_path, "write") from exc

    def stage_record(self, stage: str) -> dict[str, Any]:
        return dict(self.read_manifest()["stages"].get(stage, {}))

    def update_stage(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the stage's manifest record (read-modify-write under the project lock)."""
        m = self.read_manifest()
        rec = dict(m["stages"].get(stage, {}))
        rec.update(fields)
        m["stages"][stage] = rec
        self.write_manifest(m)
        return rec

    # --- artifact records -----------------------------------------------------------------------
    def relative(self, path: str | Path) -> str:
        """``path`` relative to the project root with forward slashes (as the manifest stores it)."""
        p = Path(path)
        p = p if p.is_absolute() else self.root / p
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def sha256(self, path: str | Path) -> str:
        """sha256 of a file, computed once per content version for this object."""
        p = Path(path)
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(p)
        return self._hashes[key]

    def file_records(self, paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
        """``{relative path: {"size", "sha256"}}`` of the files among ``paths`` (what a stage produced)."""
        out: dict[str, dict[str, Any]] = {}
        for path in paths:
            p = Path(path)
            p = p if p.is_absolute() else self.root / p
            if p.is_file():
                out[self.relative(p)] = {"size": p.stat().st_size, "sha256": self.sha256(p)}
        return out

    def file_problem(self, rel: str, expected: dict[str, Any] | None) -> str | None:
        """What is wrong with the recorded file ``rel``, as the end of a sentence that starts with its name
        (None when it matches ``expected`` = ``{"size", "sha256"}``; without ``expected``, an older record,
        when it reads as what its suffix says)."""
        from animate124.readers import check_file, diagnose, unreadable_phrase

        path = self.root / rel
        if not expected:
            return check_file(path)
        why = diagnose(path)
        if why is not None:
            return unreadable_phrase(why)
        size = path.stat().st_size
        if size != expected.get("size"):
            cut = "truncated: " if size < expected.get("size", 0) else ""
            return f"is damaged ({cut}{size} bytes, {expected.get('size')} when it was made)"
        try:
            digest = self.sha256(path)
        except OSError as exc:
            return f"cannot be read: {exc.strerror or exc}"
        if digest != expected.get("sha256"):
            return "is damaged (its content changed since it was made: sha256 differs)"
        return None

    def stage_problems(self, stage: str, rec: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """``(file, what is wrong)`` per missing or damaged file of ``stage``'s record ("does not exist",
        "is damaged (...)"; read as one sentence)."""
        rec = self.stage_record(stage) if rec is None else rec
        files: dict[str, Any] = rec.get("files") or {}
        if not files:  # a record from before the hashes: its artifacts, by structure
            files = {self.relative(p): None for p in (rec.get("artifacts") or {}).values()}
        problems = []
        for rel, expected in files.items():
            problem = self.file_problem(rel, expected)
            if problem:
                problems.append((rel, problem))
        return problems

    def inputs_of(self, requires: Iterable[str]) -> dict[str, str]:
        """``{relative path: sha256}`` of the recorded files of the stages in ``requires`` (what a stage
        reads); empty entries for records from before the hashes."""
        out: dict[str, str] = {}
        for need in requires:
            for rel, rec in (self.stage_record(need).get("files") or {}).items():
                out[rel] = rec.get("sha256", "")
        return out

    def changed_inputs(
        self, stage: str, requires: Iterable[str], rec: dict[str, Any] | None = None
    ) -> list[str]:
        """Files the stage read that were made again with other content since it ran (by the manifest)."""
        rec = self.stage_record(stage) if rec is None else rec
        before = rec.get("inputs")
        if not before:
            return []
        now = self.inputs_of(requires)
        return sorted(rel for rel, sha in now.items() if rel in before and before[rel] != sha and sha)

    def is_done(self, stage: str, config_hash: str | None = None) -> bool:
        rec = self.stage_record(stage) if self.exists() else {}
        if rec.get("status") != "done":
            return False
        return config_hash is None or rec.get("config_hash") == config_hash

    def redo_command(self, stage: str) -> str:
        """The command that runs ``stage`` on this project (preprocess: from the project's copy of its image)."""
        if stage != "preprocess":
            return f"animate124 {stage} -p {self.root}"
        copies = sorted(self.input_dir.glob("source.*")) if self.input_dir.is_dir() else []
        image = str(copies[0]) if copies else "IMAGE"
        return f"animate124 preprocess {image} -p {self.root}"

    def check_requirements(self, stage: str, requires: Iterable[str]) -> None:
        """Raise a ProjectError naming the earlier stage (of ``requires``) that has not finished, or the
        file of it that is missing or damaged (checked before the stage changes anything)."""
        self.require()
        for need in requires:
            if not self.is_done(need):
                raise ProjectError(
                    f"stage '{stage}' needs stage '{need}', which has not finished in {self.root}",
                    hint=f"run `{self.redo_command(need)}` first",
                )
            problems = self.stage_problems(need)
            if problems:
                rel, what = problems[0]
                more = f" (and {len(problems) - 1} more of its files)" if len(problems) > 1 else ""
                raise ProjectError(
                    f"stage '{stage}' needs {rel}, which {what}{more}",
                    hint=f"run `{self.redo_command(need)}` to make it again (`animate124 run-all` does it "
                    "for you); nothing was changed",
                )

    # --- lock ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project lock; a second live process gets ProjectLockedError, a dead owner's lock is
        taken over. A directory that cannot be written gives a ProjectError that says so."""
        self.check_location()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fs_error(exc, self.root, "create the project directory") from exc
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as exc:
                if not isinstance(exc, FileExistsError):
                    raise fs_error(exc, self.root, "write in the project directory") from exc
                owner = self._read_lock()
                same_host = owner.get("host") == me["host"]
                if owner and same_host and not _pid_alive(int(owner.get("pid", -1))):
                    # Stale lock from a dead process on this host: take it over.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path)
                    continue
                if not owner:  # unreadable / half-written lock: treat as stale after re-check
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.lock_path)
                    continue
                raise ProjectLockedError(
                    f"project {self.root} is in use by process {owner.get('pid')} on {owner.get('host')} "
                    f"(since {owner.get('started')})",
                    hint="wait for it to finish, or delete the .lock file if that process is gone",
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            break
        else:  # pragma: no cover - only on pathological races
            raise ProjectLockedError(f"could not acquire the lock on {self.root}")
        try:
            yield
        finally:
            owner = self._read_lock()
            if owner.get("pid") == me["pid"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)

    def _read_lock(self) -> dict[str, Any]:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, json.JSONDecodeError, ValueError):
            return {}


# --- finding a project -------------------------------------------------------------------------
def _state_file() -> Path:
    import platformdirs

    base = os.environ.get("ANIMATE124_STATE_DIR") or platformdirs.user_state_dir("animate124")
    return Path(base) / "last_project"


def remember_project(project: Project) -> None:
    """Record ``project`` as the last one a run started on (the last resort of :func:`resolve_project`);
    called when a run starts, so a run that fails is still the one remembered."""
    with contextlib.suppress(OSError):
        atomic_write_text(_state_file(), str(project.root) + "\n")


def default_project_for_image(image: Path) -> Path:
    """``./runs/<image stem>`` in the working directory."""
    return Path.cwd() / "runs" / Path(image).stem


@dataclass(frozen=True)
class FoundProject:
    """The project a command works on and why that one (``how``: a phrase for the line the CLI prints)."""

    project: Project
    how: str


def _runs_projects(base: Path) -> list[Project]:
    """The projects directly under ``base/runs``, newest first (by their manifest's modification time:
    the project most recently worked on)."""
    runs = base / "runs"
    try:
        found = [Project(d) for d in runs.iterdir() if d.is_dir() and (d / "manifest.json").is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: (-p.manifest_path.stat().st_mtime, p.root.name))


def resolve_project(explicit: str | Path | None, cwd: Path | None = None) -> FoundProject:
    """The project to work on, and why, in this order (the same for every command):

    1. ``-p`` (``explicit``), as given;
    2. the working directory, if it is a project;
    3. the only project under ``./runs/`` (of several, the newest, and the line says so);
    4. only then the remembered project (the last run started, :func:`remember_project`).

    Raises ProjectError when none of them is a project.
    """
    if explicit:
        return FoundProject(Project(explicit), "-p")
    here = Path(cwd) if cwd is not None else Path.cwd()
    if Project(here).exists():
        return FoundProject(Project(here), "the working directory")
    under_runs = _runs_projects(here)
    if len(under_runs) == 1:
        return FoundProject(under_runs[0], "the only project under ./runs")
    if under_runs:
        others = ", ".join(p.root.name for p in under_runs[1:4]) + (", ..." if len(under_runs) > 4 else "")
        return FoundProject(
            under_runs[0],
            f"the newest of {len(under_runs)} projects under ./runs (also there: {others}; pick one with -p)",
        )
    with contextlib.suppress(OSError):
        last = _state_file().read_text().strip()
        if last and Project(last).exists():
            return FoundProject(
                Project(last), "the last run started (no project in the working directory or under ./runs)"
            )
    raise ProjectError(
        "no project given and none found",
        hint="pass -p DIR, run the command inside a project directory or the directory holding runs/, "
        "or start one with `animate124 run-all IMAGE PROMPT`",
    )


def find_project(explicit: str | Path | None) -> Project:
    """The project to work on (see :func:`resolve_project`)."""
    return resolve_project(explicit).project
