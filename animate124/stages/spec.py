"""The one registry of stages: name, what it needs, which config sections decide it, what it writes.

Everything that knows the stage order reads it from here: ``run-all`` (order, ``--from``/``--until``),
the project's requirement checks (through :func:`animate124.engine.runner.run_stage`), the CLI's stage
commands and their help, and the config hash that decides whether a stage is up to date.

A stage's ``run`` function is named as ``"module:function"`` and imported only when the stage runs, so
that building the registry (and ``animate124 --help``) imports no heavy library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from animate124.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes:
        name: the command name (``animate124 <name>``) and the project sub-directory.
        summary: one line for ``--help`` and progress output.
        requires: stages that must have finished before this one runs.
        sections: config sections whose values decide this stage's result (their hash, together with the
            hashes of the required stages, decides whether a rerun is a no-op).
        produces: artifact keys (see :meth:`animate124.project.Project.artifact`) written on success.
        runner: ``"module:function"``; the function takes ``(project, cfg, **options)`` and returns a
            :class:`~animate124.engine.runner.StageResult`.
        trains: whether the stage is a training loop (checkpoints, progress, previews).
    """

    name: str
    summary: str
    requires: tuple[str, ...]
    sections: tuple[str, ...]
    produces: tuple[str, ...]
    runner: str
    trains: bool = False

    def run_function(self) -> Callable[..., Any]:
        module, _, func = self.runner.partition(":")
        return getattr(importlib.import_module(module), func)


_TRAIN_SECTIONS = ("field", "raymarch", "camera", "shading", "optim", "loss", "models", "run")

STAGES: tuple[Stage, ...] = (
    Stage(
        name="preprocess",
        summary="remove the background, frame the object in a square, estimate depth",
        requires=(),
        sections=("preprocess", "models"),
        produces=("rgba", "depth", "depth_npy", "preview"),
        runner="animate124.stages.preprocess:run_preprocess",
    ),
    Stage(
        name="invert",
        summary="learn a textual-inversion token for the object (SD 1.5)",
        requires=("preprocess",),
        sections=("invert", "models", "run"),
        produces=("learned_embeds",),
        runner="animate124.stages.invert:run_invert",
        trains=True,
    ),
    Stage(
        name="static",
        summary="static NeRF from SD 1.5 + Zero123-XL score distillation and the reference view",
        requires=("preprocess",),
        sections=("static", *_TRAIN_SECTIONS),
        produces=("static_model",),
        runner="animate124.stages.static:run_static",
        trains=True,
    ),
    Stage(
        name="dynamic",
        summary="4D NeRF from text-to-video score distillation, initialised from the static NeRF",
        requires=("static",),
        sections=("dynamic", *_TRAIN_SECTIONS),
        produces=("dynamic_model",),
        runner="animate124.stages.dynamic:run_dynamic",
        trains=True,
    ),
    Stage(
        name="refine",
        summary="semantic refinement with ControlNet-tile and the learned token",
        requires=("dynamic", "invert"),
        sections=("refine", "dynamic", *_TRAIN_SECTIONS),
        produces=("refine_model",),
        runner="animate124.stages.refine:run_refine",
        trains=True,
    ),
    Stage(
        name="render",
        summary="videos and frames of the newest trained stage",
        requires=(),
        sections=("render", "raymarch"),
        produces=(),
        runner="animate124.stages.render:run_render_stage",
    ),
)

_BY_NAME = {s.name: s for s in STAGES}
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
TRAINING_STAGES: tuple[str, ...] = ("static", "dynamic", "refine")


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a ConfigError lists the registered names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"{name!r} is not a stage", hint=f"choose one of: {', '.join(STAGE_NAMES)}"
        ) from None


def stage_range(start: str | None = None, stop: str | None = None) -> tuple[Stage, ...]:
    """The registered stages from ``start`` to ``stop`` inclusive, in order (``run-all --from/--until``)."""
    names = list(STAGE_NAMES)
    i = names.index(get_stage(start).name) if start else 0
    j = names.index(get_stage(stop).name) if stop else len(names) - 1
    if i > j:
        raise ConfigError(
            f"--from {start} comes after --until {stop}",
            hint=f"the order is {' -> '.join(STAGE_NAMES)}",
        )
    return STAGES[i : j + 1]


def newest_trained(done: Callable[[str], bool]) -> str | None:
    """The newest finished training stage (refine > dynamic > static), or None."""
    for name in reversed(TRAINING_STAGES):
        if done(name):
            return name
    return None
