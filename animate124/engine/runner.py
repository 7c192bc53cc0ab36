"""Stage lifecycle: lock, requirements, up-to-date check, manifest status, saved config, timings.

A stage run twice with the same config is a no-op unless ``force``, and a no-op writes nothing (it
does not even take the lock: the manifest is only ever replaced atomically, so reading it unlocked is
safe), so an up-to-date project can sit in a read-only directory. An interrupted or failed run
with the same config resumes from its checkpoints (the stage's own code finds them); a run with a
different config starts the stage over (its old checkpoints are removed, since they belong to
other settings).
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
from animate124.engine.runtime import versions
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
        if not force and rec.get("status") == "done" and rec.get("config_hash") == h:
            return StageResult(
                stage, skipped=True, artifacts=rec.get("artifacts", {}), metrics=rec.get("metrics", {})
            )
        resume = (
            rec.get("config_hash") == h
            and rec.get("status") in ("running", "interrupted", "failed")
            and not force
        )
        if not resume:
            ckpt = project.stage(stage).checkpoints
            if ckpt.exists():
                shutil.rmtree(ckpt)
        atomic_write_text(project.config_path(stage), dump_yaml(cfg))
        project.update_stage(
            stage, status="running", config_hash=h, started=now_iso(), versions=versions(), error=None
        )
        t0 = time.perf_counter()
        try:
            out = body(StageContext(project=project, cfg=cfg, resume=resume, config_hash=h)) or {}
        except KeyboardInterrupt:
            project.update_stage(stage, status="interrupted", seconds=round(time.perf_counter() - t0, 3))
            raise
        except BaseException as exc:
            project.update_stage(
                stage,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                seconds=round(time.perf_counter() - t0, 3),
            )
            raise
        seconds = round(time.perf_counter() - t0, 3)
        artifacts = {k: str(v) for k, v in out.get("artifacts", {}).items()}
        metrics = dict(out.get("metrics", {}))
        project.update_stage(
            stage, status="done", finished=now_iso(), seconds=seconds, artifacts=artifacts, metrics=metrics
        )
        return StageResult(
            stage, skipped=False, artifacts=artifacts, metrics=metrics, seconds=seconds, resumed=resume
        )


def _up_to_date(
    project: Project, spec: StageInfo, cfg: Config, extra_hash: str, check_requirements: bool
) -> StageResult | None:
    """The skipped result when the stage is done with this hash (read without the lock), else None."""
    if not project.exists():
        return None
    if check_requirements and not all(project.is_done(s) for s in spec.requires):
        return None
    rec = project.stage_record(spec.name)
    if rec.get("status") != "done" or rec.get("config_hash") != stage_hash(project, spec, cfg, extra_hash):
        return None
    return StageResult(
        spec.name, skipped=True, artifacts=rec.get("artifacts", {}), metrics=rec.get("metrics", {})
    )
