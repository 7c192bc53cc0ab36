"""What the output commands (render, export, evaluate, report) share: which trained stage, its config.

* :func:`source_stage`: the newest finished training stage (refine > dynamic > static), or the one asked
  for, checked before any work;
* :func:`project_config`: the config of an output command. Without ``--preset`` it starts from the
  resolved config that the source stage was trained with (``<project>/config/<stage>.yaml``), so a tiny
  project renders at tiny settings and a paper project at paper settings; then ``--config``, the
  command's own options and ``--set`` apply as everywhere else;
* :func:`output_stage`: a stage record (lock, saved config, status, timings in the manifest) for a
  command that is not in the training registry; it always runs (its options are not in the config hash).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate124.config.schema import Config
from animate124.errors import ConfigError, ProjectError
from animate124.project import Project
from animate124.stages.spec import TRAINING_STAGES, newest_trained

__all__ = ["OutputStage", "source_stage", "project_config", "run_output_stage", "relative"]


@dataclass(frozen=True)
class OutputStage:
    """The :class:`~animate124.engine.runner.StageInfo` of an output command."""

    name: str
    sections: tuple[str, ...]
    requires: tuple[str, ...] = ()


def source_stage(project: Project, stage: str | None = None) -> str:
    """The trained stage to work on: ``stage`` if given (it must have finished), else the newest one."""
    project.require()
    if stage is not None:
        if stage not in TRAINING_STAGES:
            raise ConfigError(
                f"--stage {stage!r} is not a training stage",
                hint=f"choose one of: {', '.join(TRAINING_STAGES)}",
            )
        if not project.is_done(stage):
            done = [s for s in TRAINING_STAGES if project.is_done(s)]
            raise ProjectError(
                f"stage '{stage}' has not finished in {project.root}",
                hint=(f"finished stages: {', '.join(done)}" if done else "no training stage has finished")
                + f"; run `animate124 {stage} -p {project.root}` first",
            )
        found = stage
    else:
        found = newest_trained(project.is_done)
        if found is None:
            raise ProjectError(
                f"nothing to work on in {project.root}: no training stage has finished",
                hint="run `animate124 run-all IMAGE PROMPT` (or `animate124 static`) first",
            )
    damaged = project.stage_problems(found)
    if damaged:
        rel, what = damaged[0]
        raise ProjectError(
            f"stage '{found}' is marked done but {rel} {what}",
            hint=f"run `{project.redo_command(found)}` to make it again (it resumes from its last checkpoint "
            "when there is one); nothing was changed",
        )
    return found


def project_config(
    project: Project,
    stage: str | None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
) -> Config:
    """The config of an output command: ``preset`` if given, else the source stage's saved config (else
    the paper defaults), then ``config_file`` < ``options`` < ``sets`` (see the module docstring)."""
    from animate124.config.loader import deep_merge, from_dict, load_yaml, parse_set
    from animate124.config.presets import preset_overrides

    data: dict[str, Any]
    saved = project.config_path(stage) if stage else None
    trained = _saved_config(project, saved) if saved is not None and saved.is_file() else {}
    if preset is None and trained:
        data = trained
    else:
        data = preset_overrides(preset or "paper")
        # the prompts describe the project, not the settings: a preset keeps the ones it was trained with
        for section in PROMPT_SECTIONS:
            prompt = (trained.get(section) or {}).get("prompt")
            if isinstance(prompt, str) and prompt:
                data = deep_merge(data, {section: {"prompt": prompt}})
    if config_file:
        data = deep_merge(data, load_yaml(config_file))
    if options:
        data = deep_merge(data, dict(options))
    data = deep_merge(data, parse_set(list(sets)))
    return from_dict(data)


#: The config sections whose ``prompt`` an output command keeps from the trained stage under ``--preset``.
PROMPT_SECTIONS = ("static", "dynamic", "refine")


def _saved_config(project: Project, path: Path) -> dict[str, Any]:
    """The stage's saved config (``config/<stage>.yaml``); a damaged one is an error naming it."""
    from animate124.config.loader import from_dict, load_yaml

    hint = f"pass --preset NAME to work without it, or run `animate124 {path.stem}` again"
    try:
        data = load_yaml(path, "the project's saved config")
    except ConfigError as exc:
        raise ProjectError(exc.message, hint=hint) from exc
    try:  # a file cut short can still parse, with a value cut in two: that is the file's damage, not a usage error
        from_dict(data)
    except ConfigError as exc:
        raise ProjectError(f"the project's saved config {path} is damaged: {exc.message}", hint=hint) from exc
    return data


def run_output_stage(
    project: Project,
    spec: OutputStage,
    cfg: Config,
    body: Callable[[Any], dict[str, Any]],
) -> Any:
    """Run ``body`` with the stage lifecycle (lock, ``config/<name>.yaml``, manifest status and seconds)."""
    from animate124.engine.runner import run_stage

    return run_stage(project, spec, cfg, body, force=True, check_requirements=False)


def relative(project: Project, path: Path) -> str:
    """``path`` relative to the project root, with forward slashes (for the manifest and the report)."""
    return Path(path).resolve().relative_to(project.root).as_posix()
