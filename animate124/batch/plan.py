"""Before any task starts: each row checked, its config and job key, what a rerun does with it, the models.

:func:`plan_assets` turns the rows into :class:`Asset` s. Each row goes through ``run-all``'s pre-flight
(:mod:`animate124.stages.preflight`) except its device and model checks. A row that fails is ``invalid`` with a
one-line reason and never runs; the others get their resolved config, their prompts and a job key (the
config, the image's content and the prompts derived from the row), and an action from the record the last batch left in
``<out>/.batch/<asset>.json``:

- ``run``: no record, another key, or a record that is not finished (interrupted, killed with the driver,
  not started): a task runs ``run-all`` on it, which skips its finished stages and resumes the others;
- ``up-to-date``: finished with the same key and its project still says so: no task;
- ``failed``: failed with the same key: no task unless ``--retry-failed`` (its recorded error is reported
  again).

:func:`fetch_models` then downloads, once and before the tasks start, the models the runs need (after which
the CLI plans again: the prompts are then counted with the fetched models' tokenizers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate124.batch.jobs import Row
from animate124.batch.task import FAILED, FINISHED, INVALID, UP_TO_DATE, AssetJob, error_record, read_state
from animate124.errors import Animate124Error, ConfigError, InputError
from animate124.project import Project
from animate124.stages.spec import stage_range

#: Build a row's config: ``(the command's options, the row's own --set items) -> Config``.
MakeConfig = Callable[[dict[str, Any], Sequence[str]], Any]

RUN = "run"


@dataclass
class Asset:
    """A row with what the batch decided for it (``action``: ``run``, ``up-to-date``, ``failed`` or
    ``invalid``; ``error`` and ``previous`` explain the last three)."""

    row: Row
    name: str
    project: Path
    state_file: Path
    action: str
    cfg: Any = None
    prompts: Any = None
    key: str = ""
    image_alpha: bool | None = None
    error: dict[str, Any] | None = None
    decisions: tuple[str, ...] = ()  # the pre-flight's lines (an initializer replaced by "object")
    previous: dict[str, Any] | None = None

    def job(
        self, until: str | None, device: str | None = None, threads: int = 0, batch_id: str = ""
    ) -> AssetJob:
        """The task's job; ``device`` replaces the config's ``run.device`` (the placement's), ``threads``
        is the number of CPU threads torch uses in the task, ``batch_id`` names this batch."""
        cfg = self.cfg
        if device is not None and device != cfg.run.device:
            from animate124.config.loader import replace

            cfg = replace(cfg, {"run": {"device": device}})
        return AssetJob(
            name=self.name,
            row=self.row.number,
            project=str(self.project),
            image=str(self.row.image.resolve()),
            cfg=cfg,
            prompts=self.prompts,
            until=until,
            key=self.key,
            state_file=str(self.state_file),
            cwd=os.getcwd(),
            threads=threads,
            batch_id=batch_id,
        )


def state_dir(out: Path) -> Path:
    """``<out>/.batch``: the tasks' records and the batch lock."""
    return Path(out) / ".batch"


def plan_assets(
    rows: Iterable[Row], out: Path, make_config: MakeConfig, *, until: str | None, retry_failed: bool
) -> list[Asset]:
    """Check every row and decide what to do with it (see the module docstring)."""
    stages = tuple(s.name for s in stage_range(None, until))
    tokenizers: dict[Any, Any] = {}  # one of each for all rows
    assets = []
    for row in rows:
        project = Path(out).resolve() / row.name
        asset = Asset(row, row.name, project, state_dir(out) / f"{row.name}.json", INVALID)
        try:
            _check_row(asset, make_config, stages, tokenizers)
        except Animate124Error as exc:
            asset.error = error_record(exc)
            assets.append(asset)
            continue
        asset.action = _action(asset, stages, retry_failed)
        assets.append(asset)
    return assets


# --- the checks of run-all, per row --------------------------------------------------------------
# What `run-all` checks before it starts, with the same functions: the prompts derived (not empty, an
# object found), the config with the row's --set, then run-all's pre-flight (stages/preflight.py: the
# image, a project made from another image, the prompts and their lengths, the textual-inversion
# initializer, the disk) without its device and model checks: Ray places each run on its device, and the
# models are fetched right after the checks. Nothing here is written.
def _check_row(
    asset: Asset, make_config: MakeConfig, stages: Sequence[str], tokenizers: dict[Any, Any]
) -> None:
    from animate124.stages.pipeline import derive_prompts
    from animate124.stages.preflight import preflight, with_initializer

    row = asset.row
    if row.problem:
        raise InputError(row.problem)
    if any(s.split("=", 1)[0].strip() == "run.device" for s in row.sets):
        raise ConfigError("run.device is the batch's (--device, --gpus-per-run), not a row's")
    prompts = derive_prompts(
        row.prompt, subject=row.subject, static_prompt=row.static_prompt, refine_prompt=row.refine_prompt
    )
    options = {
        "static": {"prompt": prompts.static},
        "dynamic": {"prompt": prompts.dynamic},
        "refine": {"prompt": prompts.refine},
        "invert": {"initializer": prompts.initializer},
    }
    cfg = make_config(options, row.sets)
    checked = preflight(
        Project(asset.project),
        cfg,
        stages,
        command="run-all",
        image=row.image,
        initializer_auto=cfg.invert.initializer == prompts.initializer,
        device=False,
        models=False,
        tokenizers=tokenizers,
    )
    asset.cfg, asset.prompts = checked.cfg, with_initializer(prompts, checked)
    asset.image_alpha, asset.decisions = checked.image_alpha, checked.decisions
    # the prompts as derived from the row: the initializer the pre-flight chose is in the config, and the
    # prompts it gives the run depend on whether invert still has to run (they would change the key)
    asset.key = job_key(checked.cfg, _sha(row.image), prompts.as_dict(), stages)


# --- job key and the last record -----------------------------------------------------------------
def _sha(path: Path) -> str:
    from animate124.fileio import file_sha256

    return file_sha256(path)


def job_key(cfg: Any, image_sha: str, prompts: dict[str, str], stages: Sequence[str]) -> str:
    """What decides an asset's result: every config field that decides a stage (paths and devices are
    left out, as in the stages' own hashes), the image's content, the prompts and the stages run."""
    from animate124.config.loader import config_hash

    sections = [f.name for f in dataclasses.fields(cfg)]
    blob = json.dumps([config_hash(cfg, sections), image_sha, prompts, list(stages)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def project_finished(project: Project, stages: Sequence[str]) -> bool:
    """Whether every stage of ``stages`` (and the report after ``render``) is done in the project."""
    if not project.exists():
        return False
    names = [*stages, "report"] if stages[-1] == "render" else list(stages)
    return all(project.is_done(s) for s in names)


def _action(asset: Asset, stages: Sequence[str], retry_failed: bool) -> str:
    prev = read_state(asset.state_file)
    asset.previous = prev
    if not prev or prev.get("key") != asset.key:
        return RUN
    if prev.get("status") in FINISHED and project_finished(Project(asset.project), stages):
        return UP_TO_DATE
    if prev.get("status") == FAILED and not retry_failed:
        asset.error = prev.get("error")
        return FAILED
    return RUN


# --- models ----------------------------------------------------------------------------------------
def fetch_models(assets: Iterable[Asset], until: str | None, *, progress: bool = False) -> list[str]:
    """Download every model the runs of ``assets`` need that is not cached yet, once, before any task
    starts (the tiny preset's models are built instead); returns the ``role`` names fetched.

    Offline or without network, a missing model raises the model store's error naming the role and the
    command that downloads it (the batch stops before any task starts).
    """
    from animate124.engine.runtime import model_store
    from animate124.stages.preflight import needed_roles

    stages = tuple(s.name for s in stage_range(None, until))
    fetched: list[str] = []
    seen: set[Any] = set()
    for asset in assets:
        if asset.action != RUN:
            continue
        cfg = asset.cfg
        store = model_store(cfg)  # builds the tiny models once, under a lock
        if cfg.models.tiny:
            continue
        for role, alternative in needed_roles(cfg, stages, asset.image_alpha):
            which = (str(store.cache_dir), tuple(sorted(store.overrides.items())), role, alternative)
            if which in seen:
                continue
            seen.add(which)
            if not store.is_cached(role, alternative):
                store.download(role, progress=progress, alternative=alternative)
                fetched.append(role if alternative is None else f"{role}:{alternative}")
    return fetched
