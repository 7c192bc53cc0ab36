"""What a batch leaves in ``--out`` besides the projects: ``batch.json`` and ``index.html``, and its lock.

``batch.json`` is the object ``animate124 batch --json`` prints last: the command, the jobs, the output
folder, the counts of each status, one record per asset (row order) and the exit code. ``index.html``
shows one card per asset: its orbit video (the newest trained stage's, with the cut-out image as poster)
or the cut-out image, its status, prompt, time and error, and a link to the asset's ``report.html``. The
page is a Jinja2 template (``templates/index.html.j2``) and uses relative links, so the output folder can
be moved or served as it is. Both files are rewritten only when their content changes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from animate124.batch.jobs import Row
from animate124.batch.plan import RUN, Asset, state_dir
from animate124.batch.task import (
    DONE,
    FAILED,
    INTERRUPTED,
    INVALID,
    NOT_STARTED,
    UP_TO_DATE,
)
from animate124.errors import ProjectLockedError
from animate124.fileio import LockBusy, atomic_write_text, file_lock

#: The exit code of a batch in which some asset did not finish (failed, invalid, not started).
EXIT_SOME_FAILED = 3
STATUSES = (DONE, UP_TO_DATE, FAILED, INVALID, INTERRUPTED, NOT_STARTED)
_NEWEST_FIRST = ("refine", "dynamic", "static")


@contextlib.contextmanager
def batch_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.batch/lock`` for the block: a second batch on the same folder is refused at once
    (the kernel drops the lock when its holder exits or is killed)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(state_dir(out) / "lock", wait=False, note=f"pid {os.getpid()}"))
        except LockBusy as busy:
            raise ProjectLockedError(
                f"another batch is running on {out} ({busy.holder or 'another process'})",
                hint="wait for it to finish; each folder holds one batch at a time",
            ) from None
        yield


def asset_record(asset: Asset, rec: dict[str, Any] | None) -> dict[str, Any]:
    """The asset's entry in ``batch.json`` and its ``--json`` line. ``rec`` is its task's record when a
    task ran this time (``ran`` is true), else the batch's decision is described (``ran`` false)."""
    out: dict[str, Any] = {
        "asset": asset.name,
        "row": asset.row.number,
        "image": str(asset.row.image),
        "project": str(asset.project) if asset.action != INVALID else None,
        "prompt": asset.row.prompt,
        "prompts": asset.prompts.as_dict() if asset.prompts is not None else None,
        "status": NOT_STARTED if asset.action == RUN else asset.action,
        "stage": None,  # where a failed or interrupted run stopped
        "ran": rec is not None,
        "seconds": 0.0,
        "stages": [],
        "report": None,
        "error": asset.error,
        "decisions": list(asset.decisions),  # the pre-flight's lines (e.g. the initializer it chose)
    }
    if rec is not None:
        out.update(
            status=rec.get("status"),
            stage=rec.get("stage"),
            seconds=rec.get("seconds"),
            stages=rec.get("stages", []),
            report=rec.get("report"),
            error=rec.get("error"),
        )
        for k in ("host", "cuda_visible_devices", "log"):
            if rec.get(k) is not None:
                out[k] = rec[k]
    elif asset.previous:
        out["report"] = asset.previous.get("report")
    if out["report"] is None and asset.action != INVALID and (asset.project / "report.html").is_file():
        out["report"] = str(asset.project / "report.html")
    return out


def summary(records: Sequence[dict[str, Any]], *, jobs: Path, out: Path, exit_code: int) -> dict[str, Any]:
    """The batch's summary object (``batch.json``, and the last line of ``--json``)."""
    counts = {s: 0 for s in STATUSES}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "command": "batch",
        "jobs": str(jobs),
        "out": str(Path(out).resolve()),
        "counts": counts,
        "assets": list(records),
        "exit_code": exit_code,
    }


def exit_code(records: Sequence[dict[str, Any]]) -> int:
    """0 when every asset finished (done or up to date), else :data:`EXIT_SOME_FAILED`."""
    return 0 if all(r["status"] in (DONE, UP_TO_DATE) for r in records) else EXIT_SOME_FAILED


def _write_if_changed(path: Path, text: str) -> bool:
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return False
    atomic_write_text(path, text)
    return True


def summary_file(out: Path) -> Path:
    """``<out>/batch.json``."""
    return Path(out) / "batch.json"


def write_summary(out: Path, data: dict[str, Any]) -> bool:
    """Write ``<out>/batch.json`` (when it changed); returns whether it was written."""
    return _write_if_changed(summary_file(out), json.dumps(data, indent=1) + "\n")


def likely_to_run(rows: Iterable[Row], out: Path, *, retry_failed: bool) -> bool:
    """Whether the batch will probably start runs, guessed before the rows' checks from the summary the
    last batch left (``<out>/batch.json``): a row it did not list as done, up to date or invalid (or as
    failed, unless ``--retry-failed``) will likely run, so Ray is worth starting while the rows are checked
    (:func:`animate124.batch.driver.start_ray_beside`). A wrong guess costs only time: a row that turns out
    to need a run starts Ray after the checks; Ray started for rows that then need none is shut down."""
    try:
        last = json.loads(summary_file(out).read_text())
        status = {str(a["asset"]): a["status"] for a in last["assets"]}
    except (OSError, ValueError, KeyError, TypeError):
        return True  # no batch here yet (or an unreadable summary): the rows are new
    settled = {DONE, UP_TO_DATE, INVALID} | (set() if retry_failed else {FAILED})
    return any(status.get(row.name) not in settled for row in rows)


# --- the index page ----------------------------------------------------------------------------------
def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _card(rec: dict[str, Any], out: Path) -> dict[str, Any]:
    project = Path(rec["project"]) if rec.get("project") else None
    card: dict[str, Any] = {
        "name": rec["asset"],
        "row": rec["row"],
        "status": rec["status"],
        "prompt": rec.get("prompt") or "",
        "seconds": rec.get("seconds") or 0.0,
        "error": rec.get("error"),
        "video": None,
        "poster": None,
        "report": None,
    }
    if project is None:
        return card
    rgba = project / "preprocess" / "rgba.png"
    card["poster"] = _rel(rgba, out) if rgba.is_file() else None
    for stage in _NEWEST_FIRST:
        video = project / "renders" / stage / "orbit.mp4"
        if video.is_file():
            card["video"] = _rel(video, out)
            break
    report = project / "report.html"
    card["report"] = _rel(report, out) if report.is_file() else None
    return card


def index_page(data: dict[str, Any], out: Path) -> str:
    """The HTML of ``<out>/index.html`` for the summary ``data``."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    cards = [_card(rec, Path(out)) for rec in data["assets"]]
    counts = {k: v for k, v in data["counts"].items() if v}
    return env.get_template("index.html.j2").render(
        title=f"animate124 batch: {Path(data['out']).name}", jobs=data["jobs"], counts=counts, cards=cards
    )


def write_index(out: Path, data: dict[str, Any]) -> bool:
    """Write ``<out>/index.html`` (when it changed); returns whether it was written."""
    return _write_if_changed(Path(out) / "index.html", index_page(data, out))
