"""The render stage: videos and frames of the latest trained stage (SPEC section 7)."""

from __future__ import annotations

from animate124.config.schema import Config
from animate124.errors import NotImplementedStageError, ProjectError
from animate124.project import Project
from animate124.stages.spec import newest_trained


def latest_trained_stage(project: Project) -> str:
    """refine > dynamic > static: the newest finished training stage."""
    stage = newest_trained(project.is_done)
    if stage is not None:
        return stage
    raise ProjectError(
        f"nothing to render in {project.root}: no training stage has finished",
        hint="run `animate124 run-all IMAGE PROMPT` (or `animate124 static`) first",
    )


def run_render_stage(project: Project, cfg: Config, *, orbit: bool = False, **_: object) -> None:
    """Render the newest trained field; the video writer and cameras exist, the training stages do not yet."""
    stage = latest_trained_stage(project)
    raise NotImplementedStageError(  # pragma: no cover - unreachable until a training stage exists
        f"rendering the {stage} field is not built in this version of animate124"
    )
