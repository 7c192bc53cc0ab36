"""Stage lifecycle: lock, requirements, up-to-date check, manifest status, saved config, timings.

A stage run twice with the same config is a no-op unless ``force``, and a no-op writes nothing (it
does not even take the lock: the manifest is only ever replaced atomically, so reading it unlocked is
safe), so an up-to-date project can sit in a read-only directory. An interrupted or failed run
with the same config resumes from its checkpoints (the stage's own code finds them); a run with a
different config starts the stage over (its old checkpoints are removed, since they belong to
other settings).

"Up to date" also means that the stage's files are there with the size and sha256 recorded when it
made them, and that the files it read (the recorded files of the stages it requires) are the ones it
read then (:meth:`~animate124.project.Project.stage_problems`, ``changed_inputs``). A missing or
damaged file makes the stage stale with one warning naming the file; the stage is redone, resuming
from its checkpoints (a finished training stage's last checkpoint gives the same result at once). A
stage whose inputs were made again with other content starts over. The requirement check verifies
the required stages' files before anything is changed.

The body runs under :func:`~animate124.engine.runtime.deterministic_algorithms` (``run.deterministic``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from animate124.config.loader import config_hash, dump_yaml
from animate124.config.schema import Config
from animate124.engine.runtime import deterministic_algorithms, versions
from animate124.errors import Animate124Error
from animate124.project import Project, atomic_write_text, now_iso

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    skipped: bool
    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


class StageInfo(Protocol):
    """What the runner needs of a stage (``animate124.stages.spec.Stage`` provides it)."""

    name: str
    requires: tuple[str, ...]
    sections: tuple[str, ...]


@dataclass
class StageContext:
    """What a stage body receives."""

    project: Project
    cfg: Config
    resume: bool
    config_hash: str = ""


def stage_hash(
    project: Project,
    spec: StageInfo,
    cfg: Config,
    extra_hash: str = "",
    upstream_hashes: Mapping[str, str] | None = None,
) -> str:
    """Hash of the stage's config sections, ``extra_hash`` and the hashes of the stages it requires (as
    recorded in the manifest, or as given in ``upstream_hashes``: what a planned run will record)."""
    given = upstream_hashes or {}
    upstream = [given.get(s) or project.stage_record(s).get("config_hash", "") for s in spec.requires]
    blob = "|".join([config_hash(cfg, spec.sections), extra_hash, *upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _staleness(project: Project, spec: StageInfo, rec: dict[str, Any]) -> tuple[list[str], bool]:
    """Why a stage recorded as done with the current config is stale anyway (empty: it is up to date),
    and whether its inputs changed (then it starts over instead of resuming)."""
    changed = project.changed_inputs(spec.name, spec.requires, rec)
    if changed:
        return [f"{changed[0]} was made again with other content since the {spec.name} stage read it: "
                f"the {spec.name} stage will be redone"], True  # fmt: skip
    damaged = project.stage_problems(spec.name, rec)
    return [f"{rel} {what}: the {spec.name} stage will be redone" for rel, what in damaged], False


def _record(project: Project, stage: str, **fields: Any) -> None:
    """Manifest bookkeeping after a failure: best effort, so that the error the user sees is the one that
    stopped the stage (a full disk or a read-only directory may refuse this write too)."""
    try:
        project.update_stage(stage, **fields)
    except (Animate124Error, OSError) as exc:
        log.warning(
            "could not record the %s stage as %s in the manifest: %s", stage, fields.get("status"), exc
        )


def run_stage(
    project: Project,
    spec: StageInfo,
    cfg: Config,
    body: Callable[[StageContext], dict[str, Any]],
    *,
    force: bool = False,
    check_requirements: bool = True,
    extra_hash: str = "",
) -> StageResult:
    """Run ``body`` as stage ``stage`` of ``project``; ``body`` returns {"artifacts": ..., "metrics": ...}.

    The stage's hash covers its config sections, ``extra_hash`` (e.g. the input image's sha256) and
    the hashes of the stages it requires, so redoing an earlier stage makes the later ones stale.
    The files listed in ``artifacts`` are recorded with their size and sha256 (module docstring).
    """
    stage = spec.name
    if not force:
        done = _up_to_date(project, spec, cfg, extra_hash, check_requirements)
        if done is not None:
            return done
    with project.lock():
        if check_requirements:
            project.check_requirements(stage, spec.requires)
        h = stage_hash(project, spec, cfg, extra_hash)
        rec = project.stage_record(stage)
        same = rec.get("config_hash") == h and not force
        inputs_changed = False
        if same and rec.get("status") == "done":
            notices, inputs_changed = _staleness(project, spec, rec)
            if not notices:
                return StageResult(
                    stage, skipped=True, artifacts=rec.get("artifacts", {}), metrics=rec.get("metrics", {})
                )
            for line in notices:
                log.warning("%s", line)
        elif same and project.changed_inputs(stage, spec.requires, rec):
            inputs_changed = True
            log.warning("the inputs of the %s stage were made again since it started: it starts over", stage)
        resume = (
            same and not inputs_changed and rec.get("status") in ("running", "interrupted", "failed", "done")
        )
        if not resume:
            ckpt = project.stage(stage).checkpoints
            if ckpt.exists():
                shutil.rmtree(ckpt)
        atomic_write_text(project.config_path(stage), dump_yaml(cfg))
        project.update_stage(
            stage,
            status="running",
            config_hash=h,
            started=now_iso(),
            versions=versions(),
            error=None,
            inputs=project.inputs_of(spec.requires) if check_requirements else {},
        )
        t0 = time.perf_counter()
        try:
            with deterministic_algorithms(cfg):
                out = body(StageContext(project=project, cfg=cfg, resume=resume, config_hash=h)) or {}
        except KeyboardInterrupt:
            _record(project, stage, status="interrupted", seconds=round(time.perf_counter() - t0, 3))
            raise
        except BaseException as exc:
            _record(
                project,
                stage,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                seconds=round(time.perf_counter() - t0, 3),
            )
            raise
        seconds = round(time.perf_counter() - t0, 3)
        artifacts = {k: str(v) for k, v in out.get("artifacts", {}).items()}
        metrics = dict(out.get("metrics", {}))
        if (
            resume and rec.get("status") == "done"
        ):  # a finished stage's files made again: keep what it measured
            metrics = {**rec.get("metrics", {}), **metrics}
        project.update_stage(
            stage,
            status="done",
            finished=now_iso(),
            seconds=seconds,
            artifacts=artifacts,
            metrics=metrics,
            files=project.file_records(artifacts.values()),
        )
        return StageResult(
            stage, skipped=False, artifacts=artifacts, metrics=metrics, seconds=seconds, resumed=resume
        )


def _up_to_date(
    project: Project, spec: StageInfo, cfg: Config, extra_hash: str, check_requirements: bool
) -> StageResult | None:
    """The skipped result when the stage is done with this hash and its files and inputs are the recorded
    ones (read without the lock, writes nothing), else None."""
    if not project.exists():
        return None
    if check_requirements and not all(project.is_done(s) for s in spec.requires):
        return None
    rec = project.stage_record(spec.name)
    if rec.get("status") != "done" or rec.get("config_hash") != stage_hash(project, spec, cfg, extra_hash):
        return None
    if _staleness(project, spec, rec)[0]:
        return None
    return StageResult(
        spec.name, skipped=True, artifacts=rec.get("artifacts", {}), metrics=rec.get("metrics", {})
    )
