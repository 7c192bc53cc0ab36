"""Small file utilities used everywhere: atomic writes, an inter-process file lock and file hashing
(one of each).

Every write of a file that another process may read (manifest, configs, checkpoints, final artifacts)
goes through :func:`atomic_write_bytes` or :func:`atomic_path`: a temporary file in the same directory,
fsync, then ``os.replace``, so a crash or SIGKILL leaves either the old file or the new one, never a
torn one. Files get mode ``0644`` minus the umask (``tempfile.mkstemp`` alone would leave ``0600``).

:func:`file_lock` serialises processes that build or download into a shared directory (the model
cache): ``fcntl.flock`` on a lock file, released by the kernel when its holder dies, so a killed
process never leaves a stale lock behind.

A write that fails because the file system is full raises :class:`~animate124.errors.DiskFullError`
naming the file, however the writing library words it (numpy says "1048576 requested and 131040
written", safetensors wraps the OS error in its own type): the free space is measured while the torn
temporary file still holds its blocks. :func:`ensure_space` refuses a write of known size up front.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from animate124.errors import Animate124Error, DiskFullError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_path",
    "file_lock",
    "file_sha256",
    "free_bytes",
    "ensure_space",
]

#: Below this many free bytes after a failed write, the file system is taken to be full.
FULL_BELOW = 1 << 20


def free_bytes(directory: str | Path) -> int | None:
    """Bytes the current user may still write on the file system of ``directory`` (None if unknown)."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows) or a vanished folder
        return None
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _disk_full(path: Path, needed: int | None = None, free: int | None = None) -> DiskFullError:
    free = free_bytes(path.parent) if free is None else free
    left = f"{_mib(free)} free" if free is not None else "no space left"
    need = f"; it needs {_mib(needed)}" if needed else ""
    return DiskFullError(
        f"the disk is full: cannot write {path} ({left} on its file system{need})",
        hint="free some space there (or move the project with -p to another disk) and run the same command "
        "again: finished stages and the last checkpoint are kept",
    )


def ensure_space(path: str | Path, needed: int, margin: int = 16 << 20) -> None:
    """Raise DiskFullError before writing ``needed`` bytes to ``path`` when they (plus ``margin``) do not fit."""
    path = Path(path)
    free = free_bytes(path.parent)
    if free is not None and free < needed + margin:
        raise _disk_full(path, needed, free)


def _is_full(exc: BaseException, directory: Path) -> bool:
    """Whether a failed write failed for lack of space: the OS said so, or (for libraries that word it
    their own way) the file system has next to nothing left while the torn temporary file still exists."""
    if isinstance(exc, Animate124Error):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # libraries written in Rust (safetensors) remove their torn file and report the OS error in their own
    # exception type, as Rust's io::Error prints it
    if any(f"(os error {code})" in str(exc) for code in (errno.ENOSPC, errno.EDQUOT)):
        return True
    free = free_bytes(directory)
    return free is not None and free < FULL_BELOW


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, 0o644 & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _is_full(exc, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise _disk_full(path, len(data)) from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    For writers that need a filename (imageio, safetensors, PIL): write to the yielded path, which keeps
    ``path``'s suffix so format detection works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        _chmod_default(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        if _is_full(exc, path.parent):
            raise _disk_full(path) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LockBusy(OSError):
    """:func:`file_lock` with ``wait=False`` found the lock held; ``holder`` is the note its holder wrote."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.holder = holder


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True, note: str | None = None) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` (created if needed) for the block.

    Blocks until the lock is free, or with ``wait=False`` raises :class:`LockBusy` (carrying the holder's
    ``note``) at once. ``note`` (e.g. ``"pid 123"``) is written into the file while it is held, for the message
    another process gets. ``fcntl.flock`` locks belong to the open file, so the kernel drops the lock when the
    holder exits or is killed. Not re-entrant: a process must not take the same lock twice. On platforms
    without ``fcntl`` the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            raise LockBusy(path, fh.read().decode(errors="replace").strip()) from None
        if note is not None:
            fh.seek(0)
            fh.truncate()
            fh.write(note.encode())
            fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
