"""``animate124 static`` (SPEC 4): the static NeRF from SD 1.5 + Zero123-XL SDS and the reference view.

Result: ``<project>/static/model.safetensors`` (field + occupancy grid), previews in
``<project>/static/previews/``, scalars in ``<project>/logs/static.jsonl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from animate124.config.schema import Config
from animate124.engine.runner import StageContext, StageResult
from animate124.engine.timing import Timers
from animate124.guidance.interface import Guidance
from animate124.project import Project
from animate124.stages.artifacts import save_trained
from animate124.stages.build import (
    build_field,
    build_occupancy,
    build_optimizer,
    build_sd_guidance,
    build_zero123_guidance,
    camera_settings,
    kernel_options,
    loss_weights,
    ray_settings,
    stage_prompt,
    stage_schedules,
)
from animate124.stages.placement import PriorPlacement, log_placement
from animate124.stages.system import CameraSampler, ReferenceData, StaticSystem
from animate124.stages.training import Built, load_reference_data, train_nerf_stage, zero123_reference

__all__ = ["run_static", "build_static_system"]


def build_static_system(
    cfg: Config,
    device: torch.device,
    *,
    reference: ReferenceData,
    priors: Mapping[str, Guidance],
    camera_sampler: CameraSampler | None = None,
    preview_dir: Path | None = None,
) -> tuple[StaticSystem, torch.optim.Optimizer]:
    """The static system and its optimizer from the config (priors and reference given)."""
    field = build_field(cfg.field, "static", device, kernel_options(cfg))
    occupancy = build_occupancy(cfg, dynamic=False, device=device)
    system = StaticSystem(
        priors=priors,
        sds_grad_scale=cfg.static.sds_grad_scale,
        camera_sampler=camera_sampler,
        field=field,
        occupancy=occupancy,
        reference=reference,
        rays=ray_settings(cfg),
        camera=camera_settings(cfg, "static"),
        weights=loss_weights(cfg, "static"),
        schedules=stage_schedules(cfg, "static"),
        seed=cfg.run.seed,
        device=device,
        preview_dir=preview_dir,
        timers=Timers(cfg.run.profile, device),
    )
    return system, build_optimizer(cfg, field, "static")


def static_priors(project: Project, cfg: Config, device: torch.device) -> dict[str, Guidance]:
    """SD 1.5 and Zero123-XL, each only when its weight is nonzero, each on its device (``run.devices``:
    ``stages/placement.py``)."""
    s = cfg.static
    names = [n for n, w in (("sd", s.sd_weight), ("zero123", s.zero123_weight)) if w]
    place = PriorPlacement.of(cfg, names, device)
    priors: dict[str, Guidance] = {}
    if s.sd_weight:
        prompt = stage_prompt(cfg, "static")
        priors["sd"] = place.build("sd", lambda d: build_sd_guidance(cfg, d, prompt))
    if s.zero123_weight:
        ref = zero123_reference(project)
        priors["zero123"] = place.build("zero123", lambda d: build_zero123_guidance(cfg, d, "static", ref))
    log_placement(place)
    return priors


def run_static(
    project: Project, cfg: Config, *, force: bool = False, show_progress: bool = True
) -> StageResult:
    """Train (or resume) the static stage of ``project``."""

    def make(ctx: StageContext, device: torch.device) -> Built:
        stage_prompt(cfg, "static")  # a missing prompt fails before any model loads
        reference = load_reference_data(project, cfg.static.ref_size)
        system, optimizer = build_static_system(
            cfg,
            device,
            reference=reference,
            priors=static_priors(project, cfg, device),
            preview_dir=project.stage("static").previews,
        )

        def save() -> dict[str, Any]:
            path = save_trained(
                project.artifact("static_model"),
                system.field,
                system.occupancy,
                kind="static",
                field_cfg=cfg.field,
            )
            return {"static_model": path}

        return Built(system, optimizer, save)

    return train_nerf_stage(project, cfg, "static", make, force=force, show_progress=show_progress)
