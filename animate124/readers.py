"""Every file the tool reads goes through here: damage becomes one line that names the file and what to do.

A reader opens and parses a file inside :func:`reading`. When anything goes wrong, the file system is asked
why (:func:`diagnose`), so the message does not depend on the library that failed (safetensors, PIL,
numpy, PyYAML and json all word their errors differently, and some say "No such file" for a file they
may not read): the file does not exist, is a directory, may not be read (permission denied), or it is
there and readable but its content is damaged (truncated, random bytes, not UTF-8). The error class and
the hint come from the caller, who knows what the file is for (a project artifact: redo the stage that
made it; a config file: fix it; a model: download it again).

:func:`check_file` is the structural check behind the manifest's verification of old records (no
content hash) and ``animate124 models verify``: it reads only headers where it can (safetensors, npy)
and decodes small images fully.

Imports stay light (no torch at import time): the CLI reads configs through this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from animate124.errors import Animate124Error, DamagedFileError

__all__ = [
    "reading",
    "diagnose",
    "read_bytes",
    "read_text",
    "read_json",
    "read_yaml",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_image",
    "read_npy",
    "check_file",
    "unreadable_phrase",
    "check_safetensors",
    "check_torch_zip",
]

ErrorType = type[Animate124Error]


def diagnose(path: str | Path) -> str | None:
    """Why ``path`` cannot be read, from the file system ("does not exist", "is a directory, not a file",
    "permission denied", an OS error); None when it opens for reading."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist" if not path.is_symlink() else "is a broken link"
    except PermissionError:
        return "permission denied (a folder on its path may not be entered)"
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@contextlib.contextmanager
def reading(
    path: str | Path,
    what: str = "file",
    *,
    hint: str | None = None,
    error: ErrorType = DamagedFileError,
    missing_hint: str | None = None,
) -> Iterator[Path]:
    """Run the block that reads ``path``; any failure becomes ``error`` with a message naming the file.

    ``what`` says what the file is ("trained field", "config file"); ``hint`` what to do about a damaged
    or unreadable file, ``missing_hint`` about a missing one (default: ``hint``). Errors the block raises
    on purpose (:class:`~animate124.errors.Animate124Error`) pass through unchanged.
    """
    path = Path(path)
    try:
        yield path
    except Animate124Error:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library words a bad file differently; see the docstring
        why = diagnose(path)
        if why == "does not exist":
            raise _make(error, f"{what} {path} does not exist", missing_hint or hint, path) from exc
        if why is not None:
            message = f"{what} {path} {unreadable_phrase(why)}"
            raise _make(error, message, _access_hint(why, path, hint), path) from exc
        if isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):
            raise _make(error, f"{what} {path} cannot be read: {exc.strerror or exc}", hint, path) from exc
        raise _make(error, f"{what} {path} is damaged ({_short(exc)})", hint, path) from exc


def _access_hint(why: str, path: Path, hint: str | None) -> str | None:
    if why.startswith("permission denied"):
        return f"make it readable (chmod u+r '{path}'), or run as the user who owns it"
    return hint


def _make(error: ErrorType, message: str, hint: str | None, path: Path) -> Animate124Error:
    if issubclass(error, DamagedFileError):
        return error(message, hint, path=str(path))
    return error(message, hint)


# --- readers --------------------------------------------------------------------------------------
def read_bytes(path: str | Path, what: str = "file", **kw: Any) -> bytes:
    with reading(path, what, **kw) as p:
        return p.read_bytes()


def read_text(path: str | Path, what: str = "file", **kw: Any) -> str:
    """The file as UTF-8 text (strict: bytes that are not UTF-8 are damage, named as such)."""
    with reading(path, what, **kw) as p:
        return p.read_bytes().decode("utf-8")


def read_json(path: str | Path, what: str = "JSON file", **kw: Any) -> Any:
    with reading(path, what, **kw) as p:
        return json.loads(p.read_bytes().decode("utf-8"))


def read_yaml(path: str | Path, what: str = "YAML file", **kw: Any) -> Any:
    import yaml

    with reading(path, what, **kw) as p:
        return yaml.safe_load(p.read_bytes().decode("utf-8"))


def read_safetensors(path: str | Path, what: str = "safetensors file", **kw: Any) -> tuple[dict, dict]:
    """``(tensors on the CPU, metadata)`` of a safetensors file; its header is checked against the file
    size first, so a truncated file is named as such instead of failing somewhere in the library."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with reading(path, what, **kw) as p:
        problem = check_safetensors(p)
        if problem:
            raise ValueError(problem)
        with safe_open(str(p), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(str(p)), meta


def read_safetensors_metadata(path: str | Path, what: str = "safetensors file", **kw: Any) -> dict:
    from safetensors import safe_open

    with reading(path, what, **kw) as p:
        problem = check_safetensors(p)
        if problem:
            raise ValueError(problem)
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})


def read_image(path: str | Path, what: str = "image", **kw: Any) -> Any:
    """A fully decoded PIL image (truncated data fails here, not later)."""
    from PIL import Image

    with reading(path, what, **kw) as p:
        img = Image.open(p)
        img.load()
        return img


def read_npy(path: str | Path, what: str = "array file", **kw: Any) -> Any:
    import numpy as np

    with reading(path, what, **kw) as p:
        return np.load(p, allow_pickle=False)


# --- structural checks ------------------------------------------------------------------------------
def check_safetensors(path: Path) -> str | None:
    """Header parse + size check: 8-byte little-endian header length, JSON header, data offsets."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return f"truncated: {size} bytes, no header"
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            return f"truncated: {size} bytes, shorter than its header"
        try:
            header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "not a safetensors file (unreadable header)"
    expected = 8 + n + end
    if expected != size:
        return (
            f"truncated: {size} bytes, its header declares {expected}"
            if size < expected
            else (f"{size} bytes, its header declares {expected}")
        )
    return None


#: torch's legacy (pre-zip) ``torch.save`` format begins with its magic number pickled as a LONG1 (opcode 0x8a, 10
#: bytes: 0x1950a86a20f9469cfc6c little-endian), after the PROTO opcode (and a FRAME header from protocol 4 on)
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def check_torch_zip(path: Path) -> str | None:
    """torch >= 1.6 pickles are zip archives; a truncated download loses the central directory.
    Legacy (pre-zip) pickles, which start with a pickle protocol byte and torch's magic number, cannot be checked
    cheaply. A file that is neither is damaged (before 2026-12-07 any first byte 0x80 passed as legacy, so one
    random file in 256 went on to fail at load time without naming itself)."""
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head and not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except zipfile.BadZipFile as err:
        return f"not a complete torch archive ({err})"
    return None


def _check_npy(path: Path) -> str | None:
    import numpy as np

    version_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with open(path, "rb") as fh:
        try:
            read = version_header.get(np.lib.format.read_magic(fh), np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(fh)
        except ValueError as exc:
            return f"not a .npy array ({_short(exc)})"
        start = fh.tell()
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size == expected:
        return None
    return (
        f"truncated: {size} bytes, its header declares {expected}"
        if size < expected
        else (f"{size} bytes, its header declares {expected}")
    )


def unreadable_phrase(why: str) -> str:
    """:func:`diagnose`'s reason as the end of a sentence that starts with the file's name."""
    if why in ("does not exist", "is a broken link", "is a directory, not a file"):
        return why
    return f"cannot be read: {why}"


def check_file(path: str | Path) -> str | None:
    """What is wrong with ``path``, as the end of a sentence that starts with its name ("does not exist",
    "cannot be read: permission denied", "is empty", "is damaged (truncated: ...)"); None when it reads
    as what its suffix says. Safetensors, npy and torch archives are checked against the sizes their
    headers declare, images are decoded, JSON is parsed; other kinds (videos, meshes, HTML) are checked
    for being there, readable and not empty."""
    path = Path(path)
    why = diagnose(path)
    if why is not None:
        return unreadable_phrase(why)
    try:
        if path.stat().st_size == 0:
            return "is empty"
        suffix = path.suffix.lower()
        problem = None
        if suffix == ".safetensors":
            problem = check_safetensors(path)
        elif suffix == ".bin":
            problem = check_torch_zip(path)
        elif suffix == ".npy":
            problem = _check_npy(path)
        elif suffix in (".png", ".jpg", ".jpeg", ".webp"):
            from PIL import Image

            with Image.open(path) as img:
                img.load()
        elif suffix == ".json":
            json.loads(path.read_bytes().decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - any failure to parse is damage; diagnose() says if it is not
        why = diagnose(path)
        return unreadable_phrase(why) if why else f"is damaged ({_short(exc)})"
    return f"is damaged ({problem})" if problem else None
