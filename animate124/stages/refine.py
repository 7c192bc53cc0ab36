"""The refine stage (built in the training-stages work; this placeholder keeps the registry importable)."""

from __future__ import annotations

from animate124.config.schema import Config
from animate124.engine.runner import StageResult
from animate124.errors import NotImplementedStageError
from animate124.project import Project
from animate124.stages.spec import get_stage


def run_refine(
    project: Project, cfg: Config, *, force: bool = False, show_progress: bool = True
) -> StageResult:
    """Check the project, then report that the training loop is not built yet."""
    project.check_requirements("refine", get_stage("refine").requires)
    raise NotImplementedStageError("the refine stage is not built in this version of animate124")
