"""The rows of a batch: a jobs file (CSV or JSONL) or a folder of images, and a project name per row.

A jobs file has one row per asset. Columns (CSV header / JSONL keys; ``-`` and spaces read as ``_``):

============== ========================================================================================
``image``      the input image; a relative path is relative to the jobs file's folder (required)
``prompt``     the motion prompt (required unless ``--prompt`` gives a default)
``subject``    ``run-all --subject``; ``static_prompt``, ``refine_prompt``: ``run-all``'s overrides
``name``       the project's name under ``--out`` (default: the image's file name without extension)
``set``        config overrides for this row only, after the batch's ``--set``: CSV ``a.b=1; c.d=x``,
               JSONL a list ``["a.b=1"]`` or a mapping ``{"a.b": 1}``
============== ========================================================================================

A folder of images (PNG, JPEG, WebP) gives one row per image, sorted by file name, with the prompt of
``--prompt`` or of a prompts file: one ``<image file name or stem>: <prompt>`` per line (``#`` comments
and blank lines are skipped).

Project names are the ``name`` column or the image's stem, reduced to letters, digits, ``_`` and ``-``.
Different rows that would share a name get ``-<6 hex digits>`` of their image path and prompt appended, so
a name depends only on the rows themselves and stays the same when the jobs file is reordered. A row that
repeats an earlier one, or takes an explicit name another row has, cannot run (its ``problem`` says why).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from animate124.errors import ConfigError

#: Columns a jobs file may have.
COLUMNS = ("image", "prompt", "subject", "static_prompt", "refine_prompt", "name", "set")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Row:
    """One asset of the batch, as the user wrote it (checked later, see :mod:`animate124.batch.plan`).

    ``number`` is the row's line in the jobs file (1 = the first data row), or its place in the
    folder; ``problem`` is set for a row that cannot run at all (no prompt, a name used twice).
    """

    number: int
    image: Path
    prompt: str
    subject: str | None = None
    static_prompt: str | None = None
    refine_prompt: str | None = None
    name: str = ""
    sets: tuple[str, ...] = ()
    problem: str | None = None
    explicit_name: bool = field(default=False, compare=False)


def read_rows(jobs: Path, *, prompt: str | None = None, prompts_file: Path | None = None) -> list[Row]:
    """The rows of ``jobs`` (a CSV/JSONL file or a folder of images), each with its project name.

    ``prompt`` is the default motion prompt (for rows without one); ``prompts_file`` gives one per image
    of a folder. Raises ConfigError (a usage error: nothing starts) for a file that cannot be read, an
    unknown or missing column, or a folder without images.
    """
    jobs = Path(jobs)
    if jobs.is_dir():
        rows = _folder_rows(jobs, prompt, prompts_file)
    elif jobs.is_file():
        if prompts_file is not None:
            raise ConfigError("--prompts is for a folder of images", hint="put the prompts in the jobs file")
        rows = _file_rows(jobs, prompt)
    else:
        raise ConfigError(
            f"{jobs} is neither a jobs file nor a folder of images",
            hint="pass a CSV or JSONL file (columns image, prompt, ...) or a folder of images with --prompt",
        )
    if not rows:
        raise ConfigError(f"{jobs} holds no rows", hint="one row per asset: image, prompt")
    return name_rows(rows)


# --- files ---------------------------------------------------------------------------------------
def _file_rows(path: Path, default_prompt: str | None) -> list[Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the jobs file {path}: {exc}") from exc
    records = _jsonl(path, text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv(path, text)
    return [_row(path, n, rec, path.parent, default_prompt) for n, rec in records]


def _csv(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise ConfigError(
            f"the jobs file {path} is empty", hint="its first line names the columns: image,prompt"
        )
    keys = [_column(path, h) for h in header]
    out = []
    for n, values in enumerate(reader, 1):
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(keys):
            raise ConfigError(
                f"{path}, row {n}: {len(values)} values for {len(keys)} columns",
                hint='quote a value that holds a comma: "a panda, dancing"',
            )
        out.append((n, dict(zip(keys, values, strict=False))))
    return out


def _jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {n} is not JSON: {exc.msg}") from exc
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}, line {n}: expected an object with image and prompt")
        out.append((n, {_column(path, k): v for k, v in rec.items()}))
    return out


def _column(path: Path, name: str) -> str:
    key = re.sub(r"[\s-]+", "_", str(name).strip().lower())
    if key not in COLUMNS:
        raise ConfigError(
            f"the jobs file {path} has an unknown column {name!r}",
            hint=f"the columns are: {', '.join(COLUMNS)}",
        )
    return key


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _sets(path: Path, n: int, value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, Mapping):
        return tuple(f"{k}={_yaml_scalar(v)}" for k, v in value.items())
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(";") if s.strip())
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s.strip() for s in value if s.strip())
    raise ConfigError(f"{path}, row {n}: set must be 'a.b=1; c.d=2', a list of such strings or a mapping")


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool | list | dict) or value is None else str(value)


def _row(path: Path, n: int, rec: dict[str, Any], base: Path, default_prompt: str | None) -> Row:
    image = _text(rec.get("image"))
    if image is None:
        raise ConfigError(f"{path}, row {n} has no image", hint="every row needs the image column")
    prompt = rec.get("prompt")
    problem = None
    if _text(prompt) is None:
        if default_prompt is None:
            problem = "the motion prompt is empty" if "prompt" in rec else "no prompt (and no --prompt)"
        prompt = default_prompt or ""
    name = _text(rec.get("name"))
    return Row(
        number=n,
        image=(base / Path(str(rec["image"]).strip()).expanduser()),
        prompt=str(prompt),
        subject=_text(rec.get("subject")),
        static_prompt=_text(rec.get("static_prompt")),
        refine_prompt=_text(rec.get("refine_prompt")),
        name=name or "",
        explicit_name=name is not None,
        sets=_sets(path, n, rec.get("set")),
        problem=problem,
    )


# --- a folder of images --------------------------------------------------------------------------
def _folder_rows(folder: Path, default_prompt: str | None, prompts_file: Path | None) -> list[Row]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(
            f"no images in {folder}", hint=f"the folder's {', '.join(IMAGE_SUFFIXES)} files are used"
        )
    prompts = read_prompts_file(prompts_file) if prompts_file else {}
    if default_prompt is None and prompts_file is None:
        raise ConfigError(
            "a folder of images needs --prompt or --prompts FILE",
            hint='e.g. --prompt "a toy is spinning", or a file of "image.png: prompt" lines',
        )
    known = {k for p in images for k in (p.name, p.stem)}
    unused = sorted(k for k in prompts if k not in known)
    if unused:
        raise ConfigError(
            f"{prompts_file} names images that are not in {folder}: {', '.join(unused)}",
            hint="each line is '<image file name or stem>: <prompt>'",
        )
    rows = []
    for n, image in enumerate(images, 1):
        prompt = prompts.get(image.name, prompts.get(image.stem, default_prompt))
        problem = None if prompt is not None else f"no prompt for {image.name} in {prompts_file}"
        rows.append(Row(number=n, image=image, prompt=prompt or "", problem=problem))
    return rows


def read_prompts_file(path: Path) -> dict[str, str]:
    """``{image name or stem: prompt}`` from lines ``toy.png: a toy is spinning``."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the prompts file {path}: {exc}") from exc
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, prompt = line.partition(":")
        if not sep or not key.strip():
            raise ConfigError(
                f"{path}, line {n}: expected '<image>: <prompt>'", hint="e.g. toy.png: a toy is spinning"
            )
        out[key.strip()] = prompt.strip()
    return out


# --- names ---------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """A project name: letters, digits, ``_`` and ``-`` (others become ``-``); never empty."""
    return re.sub(r"[^\w-]+", "-", text, flags=re.ASCII).strip("-_") or "asset"


def _fingerprint(row: Row) -> str:
    blob = "\n".join([str(row.image.resolve()), row.prompt, row.subject or ""])
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def name_rows(rows: Iterable[Row]) -> list[Row]:
    """Give every row its project name (see the module docstring). A row whose explicit name another
    row already has, or which repeats an earlier row exactly, gets a ``problem`` instead."""
    rows = list(rows)
    base = [slug(r.name) if r.explicit_name else slug(r.image.stem) for r in rows]
    kinds: dict[str, set[str]] = {}  # base name -> the different rows that would have it
    for row, b in zip(rows, base, strict=True):
        kinds.setdefault(b, set()).add(_fingerprint(row))
    out: list[Row] = []
    taken: dict[str, int] = {}
    for row, b in zip(rows, base, strict=True):
        name = b if row.explicit_name or len(kinds[b]) == 1 else f"{b}-{_fingerprint(row)}"
        problem = row.problem
        if name in taken and problem is None:
            first = taken[name]
            problem = (
                f"the name {name!r} is also the name of row {first}"
                if row.explicit_name
                else f"the same image and prompt as row {first}"
            )
        taken.setdefault(name, row.number)
        out.append(replace(row, name=name, problem=problem))
    return out
