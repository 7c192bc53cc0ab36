"""What the three NeRF training stages share: the stage lifecycle around the trainer, reference data,
loading the previous stage's field, and keeping only the priors a stage needs on the GPU.

A stage module (``static.py``, ``dynamic.py``, ``refine.py``) provides a ``make`` function that builds
its system and optimizer; :func:`train_nerf_stage` does the rest: lock, up-to-date check and resume
(``engine/runner.py``), the trainer with progress bar, JSONL log, previews and checkpoints, Ctrl-C,
out-of-memory as a clear error, the result artifact and a final preview.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from animate124.config.schema import Config
from animate124.engine.interrupt import graceful_interrupt
from animate124.engine.progress import rich_progress
from animate124.engine.runner import StageContext, StageResult, run_stage
from animate124.engine.runtime import training_device
from animate124.engine.trainer import Trainer, TrainingSystem
from animate124.errors import oom_guard
from animate124.project import Project
from animate124.stages.build import trainer_settings
from animate124.stages.spec import get_stage

log = logging.getLogger(__name__)

__all__ = ["Built", "train_nerf_stage", "load_reference_data", "release"]


@dataclass
class Built:
    """What a stage's ``make`` returns: the system, its optimizer, and a function that writes the result."""

    system: TrainingSystem
    optimizer: torch.optim.Optimizer
    save: Callable[[], dict[str, Any]]


def release() -> None:
    """Give the GPU memory of the stage that just ended back (its priors, field and graphs are
    unreferenced once the stage returns), so the next stage of ``run-all`` starts from an empty cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_reference_data(project: Project, size: int) -> Any:
    """The reference view at ``size`` (SPEC 1 "training-time consumption") as a ReferenceData."""
    from animate124.preprocess.pipeline import load_reference
    from animate124.stages.system import ReferenceData

    d = load_reference((project.rgba, project.depth), size=size)
    rgb, mask = d["rgb"], d["mask"]
    assert rgb is not None and mask is not None
    return ReferenceData(rgb=rgb[None, None], mask=mask[None, None], depth=d["depth_masked"])


def zero123_reference(project: Project, size: int = 256) -> torch.Tensor:
    """The white-composited reference ``[1, 3, size, size]`` that conditions Zero123 (SPEC 1, 3.8)."""
    from animate124.preprocess.pipeline import load_reference

    d = load_reference((project.rgba, project.depth), size=size, zero123_size=size)
    z = d["zero123_rgb"]
    assert z is not None
    return z[None]


def train_nerf_stage(
    project: Project,
    cfg: Config,
    stage: str,
    make: Callable[[StageContext, torch.device], Built],
    *,
    force: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Run training stage ``stage`` (static, dynamic or refine) on ``project``."""
    spec = get_stage(stage)

    def body(ctx: StageContext) -> dict[str, Any]:
        device = training_device(cfg)  # the first of run.devices holds the field
        torch.manual_seed(cfg.run.seed)
        paths = project.stage(stage)
        with oom_guard(f"the {stage} stage"):
            built = make(ctx, device)
            if stage == "refine" and cfg.run.trace_steps and device.type == "cuda":
                log.warning(
                    "run.trace_steps in refine: on an H200 (torch 2.11) the first traced step failed with "
                    "'conv2d returned NULL without setting an exception' (BENCHMARKS.md §8); static, dynamic "
                    "and invert trace fine; run.trace_parts=ops or =memory records one half"
                )
            trainer = Trainer(trainer_settings(cfg, stage, ctx.config_hash))
            with rich_progress(stage, enabled=show_progress) as prog, graceful_interrupt() as stop:
                result = trainer.run(
                    built.system,
                    built.optimizer,
                    checkpoint_dir=paths.checkpoints,
                    log_path=project.log_path(stage),
                    progress=prog,
                    should_stop=stop,
                )
            if result.interrupted:
                return {}
            artifacts = built.save()
            trainer.preview(built.system, result.steps)
        metrics = dict(result.metrics)
        metrics["resumed_from_step"] = result.start_step
        return {"artifacts": artifacts, "metrics": metrics}

    try:
        return run_stage(project, spec, cfg, body, force=force)
    finally:
        release()
