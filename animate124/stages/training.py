"""The NeRF training stages (static, dynamic, refine).

The field, renderer and priors they run on live in ``scene``, ``render`` and ``guidance``; the
training loops that combine them (SPEC sections 4-6) are not built in this version. Each command
checks its inputs and then says so in one line (exit 1) instead of failing later with a traceback.
"""

from __future__ import annotations

from animate124.config.schema import Config
from animate124.engine.runner import StageResult
from animate124.errors import NotImplementedStageError
from animate124.project import Project

_WHAT = {
    "static": "the static stage (SD 1.5 + Zero123-XL SDS training loop, SPEC section 4)",
    "dynamic": "the dynamic stage (4D NeRF + video SDS training loop, SPEC section 5)",
    "refine": "the refine stage (ControlNet-tile refinement loop, SPEC section 6)",
}


def run_training_stage(
    stage: str, project: Project, cfg: Config, *, force: bool = False, show_progress: bool = True
) -> StageResult:
    """Validate the project and prompt, then report the missing capability."""
    project.check_requirements(stage)
    raise NotImplementedStageError(
        f"{_WHAT[stage]} is not built in this version of animate124",
        hint="this version provides `preprocess` and `invert`; the field, renderer and diffusion priors "
        "the stage needs exist as a library (animate124.scene, animate124.render, animate124.guidance)",
    )
