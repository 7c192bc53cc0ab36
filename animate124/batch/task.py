"""One asset of a batch, as one Ray task: ``run-all``'s pipeline on the asset's project, in the worker.

:func:`run_asset` is what the driver hands to Ray. It does what ``run-all`` does (:func:`run_all`): the
pre-flight of :mod:`animate124.stages.preflight`, then :func:`animate124.stages.pipeline.run_pipeline` with
the arguments ``run-all`` gives it (:func:`pipeline_arguments`), in the worker process itself, without
progress bars; the library's log lines and the traceback of an unexpected error go to the asset's
``<project>/logs/batch.log`` (the worker's own output is not sent to the driver, whose terminal shows the
batch's table). Its state goes to ``<out>/.batch/<asset>.json`` (atomically) when it starts, at each stage
and at the end, where the driver reads it for the table and a later batch reads it to skip finished work.

It never raises for a problem of the asset (a bad image that slipped through, a stage error, CUDA out of
memory): the record says ``failed`` with the error. Ctrl-C reaches the task as the SIGINT that
:func:`ray.cancel` sends: the training loop checkpoints and stops, the stage is recorded as interrupted,
and the record says ``interrupted``; the next batch resumes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate124.errors import Animate124Error, oom_guard
from animate124.fileio import atomic_write_json

log = logging.getLogger(__name__)

#: The record statuses of an asset (``batch.json``, ``--json`` lines, ``<out>/.batch/<asset>.json``).
RUNNING, DONE, UP_TO_DATE, FAILED, INTERRUPTED = "running", "done", "up-to-date", "failed", "interrupted"
#: A row that did not pass the checks (never ran), and one not started because the batch was stopped.
INVALID, NOT_STARTED = "invalid", "not-started"
FINISHED = (DONE, UP_TO_DATE)


@dataclass(frozen=True)
class AssetJob:
    """Everything a task needs, resolved by the driver (plain data: it travels to the worker)."""

    name: str
    row: int
    project: str  # absolute paths: on a cluster they must mean the same on every node
    image: str
    cfg: Any  # the resolved Config
    prompts: Any  # the derived Prompts
    until: str | None
    key: str
    state_file: str
    cwd: str = ""  # the driver's working directory (relative paths in the config are relative to it)
    threads: int = 0  # CPU threads for torch: the CPUs Ray gave the task (0: torch's default)
    batch_id: str = ""  # which batch started the task (a record of another one is a killed batch's)


def pipeline_arguments(job: AssetJob, prompts: Any) -> dict[str, Any]:
    """The keyword arguments of ``run_pipeline`` for ``job``: those ``run-all`` passes."""
    return {
        "start": None,
        "stop": job.until,
        "options": {"preprocess": {"image": Path(job.image)}},
        "prompts": prompts,
        "force": False,
        "show_progress": False,
        "report": True,
    }


def run_all(job: AssetJob, project: Any, **callbacks: Any) -> list[Any]:
    """What ``run-all`` does once its options are parsed: the pre-flight (here on the node that runs the
    asset, with the device Ray gave the task and the models as this node sees them), then the pipeline."""
    from animate124.stages.pipeline import run_pipeline
    from animate124.stages.preflight import preflight, with_initializer
    from animate124.stages.spec import stage_range

    stages = tuple(s.name for s in stage_range(None, job.until))
    checked = preflight(
        project,
        job.cfg,
        stages,
        command="run-all",
        image=Path(job.image),
        initializer_auto=job.cfg.invert.initializer == job.prompts.initializer,
    )
    prompts = with_initializer(job.prompts, checked)
    return run_pipeline(project, checked.cfg, **callbacks, **pipeline_arguments(job, prompts))


# --- state files ---------------------------------------------------------------------------------
def read_state(path: str | Path) -> dict[str, Any] | None:
    """The asset's last record, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: str | Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def error_record(exc: BaseException, log_file: str | None = None) -> dict[str, Any]:
    """``{"type", "message", "hint"}`` of an error, one line each (the CLI's wording)."""
    if isinstance(exc, Animate124Error):
        message, hint = exc.message, exc.hint
    elif isinstance(exc, OSError):
        message = (exc.strerror or str(exc)) + (f": {exc.filename}" if exc.filename else "")
        hint = "check the path, its permissions and the free disk space"
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
        hint = f"the traceback is in {log_file}" if log_file else None
    return {"type": type(exc).__name__, "message": " ".join(str(message).split()), "hint": hint}


def stage_entry(result: Any) -> dict[str, Any]:
    """A finished stage as ``run-all --json`` lists it."""
    return {
        "stage": result.stage,
        "status": UP_TO_DATE if result.skipped else DONE,
        "skipped": bool(result.skipped),
        "resumed": bool(getattr(result, "resumed", False)),
        "seconds": float(result.seconds),
        "artifacts": {k: str(v) for k, v in result.artifacts.items()},
    }


@contextlib.contextmanager
def _log_to_file(path: Path) -> Iterator[None]:
    """The task's log records (warnings and up; animate124's info too) and Python warnings into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root, ours = logging.getLogger(), logging.getLogger("animate124")
    levels = (root.level, ours.level)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])
        handler.close()


def _where() -> dict[str, Any]:
    """Where the task runs: host, process, the GPUs Ray gave it, CPU threads (for the record)."""
    import torch

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": torch.get_num_threads(),
    }


# --- the task ------------------------------------------------------------------------------------
def run_asset(job: AssetJob) -> dict[str, Any]:
    """Run ``run-all`` on one asset and return its final record (also written to ``job.state_file``)."""
    from animate124.project import Project

    if job.cwd and os.path.isdir(job.cwd):
        os.chdir(job.cwd)  # a fresh worker process per task (max_calls=1): nothing else sees it
    if job.threads > 0:  # the task's share of the CPUs, whatever OMP_NUM_THREADS the node had
        import torch

        torch.set_num_threads(job.threads)
    project = Project(job.project)
    log_file = project.root / "logs" / "batch.log"
    t0 = time.time()
    rec: dict[str, Any] = {
        "asset": job.name,
        "row": job.row,
        "project": str(project.root),
        "image": job.image,
        "prompts": job.prompts.as_dict(),
        "key": job.key,
        "batch_id": job.batch_id,
        "status": RUNNING,
        "stage": None,
        "stage_started": None,
        "started": t0,
        "finished": None,
        "seconds": None,
        "stages": [],
        "report": None,
        "error": None,
        "log": str(log_file),
        **_where(),
    }
    write_state(job.state_file, rec)

    def on_start(stage: Any) -> None:
        rec.update(stage=getattr(stage, "name", str(stage)), stage_started=time.time())
        write_state(job.state_file, rec)

    def on_done(result: Any) -> None:
        rec["stages"].append(stage_entry(result))
        if result.stage == "report":
            rec["report"] = str(result.artifacts.get("report"))
        write_state(job.state_file, rec)

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with _log_to_file(log_file):
        log.info("batch asset %s (row %d): run-all %s", job.name, job.row, job.image)
        try:
            with oom_guard(f"asset {job.name}"):
                run_all(job, project, on_start=on_start, on_done=on_done)
            ran = any(not s["skipped"] for s in rec["stages"])
            rec.update(status=DONE if ran else UP_TO_DATE, stage=None)
        except KeyboardInterrupt:
            log.info("interrupted in %s; the next batch resumes it", rec["stage"])
            rec["status"] = INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - one asset's failure is its record, not the batch's
            rec.update(status=FAILED, error=error_record(exc, str(log_file)))
            if isinstance(exc, Animate124Error):
                log.error("%s (hint: %s)", exc.message, exc.hint)
            else:
                log.error("%s\n%s", rec["error"]["message"], traceback.format_exc())
    rec.update(finished=time.time(), seconds=round(time.time() - t0, 3))
    write_state(job.state_file, rec)
    return rec
