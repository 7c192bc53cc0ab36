"""``animate124 dynamic`` (SPEC 5): the 4D NeRF from text-to-video SDS, initialised from the static NeRF.

The 4D field starts as an exact copy of the static result at every time (``DynamicField.from_static``)
and its occupancy grid replicates the static grid into every time slot; each slot is then refreshed at
its own time (fix of SPEC 11.2; ``raymarch.upstream_times_bug`` reproduces upstream). Result:
``<project>/dynamic/model.safetensors``; previews (PNG strip and ``latest.mp4``) in
``<project>/dynamic/previews/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from animate124.config.schema import Config
from animate124.engine.runner import StageContext, StageResult
from animate124.engine.timing import Timers
from animate124.guidance.interface import Guidance
from animate124.project import Project
from animate124.stages.artifacts import load_field, save_trained
from animate124.stages.build import (
    build_occupancy,
    build_optimizer,
    build_video_guidance,
    build_zero123_guidance,
    camera_settings,
    clip_settings,
    loss_weights,
    ray_settings,
    stage_prompt,
    stage_schedules,
)
from animate124.stages.placement import PriorPlacement, log_placement
from animate124.stages.system import ClipSampler, DynamicSystem, ReferenceData
from animate124.stages.training import Built, load_reference_data, train_nerf_stage, zero123_reference

__all__ = ["run_dynamic", "dynamic_field_from_static", "dynamic_system_kwargs"]


def dynamic_field_from_static(project: Project, cfg: Config, device: torch.device) -> tuple[Any, Any, Any]:
    """(4D field, 4D occupancy grid, field section) initialised exactly from the static result."""
    from animate124.scene.fields import DynamicField

    static = load_field(cfg, project.artifact("static_model"), device, backend=cfg.field.backend)
    fcfg = dataclasses.replace(
        static.field_cfg, time_grid_size=cfg.field.time_grid_size, backend=cfg.field.backend
    )
    field = DynamicField.from_static(static.field, time_grid_size=fcfg.time_grid_size).to(device)
    field.set_level_mask(None)
    occupancy = build_occupancy(cfg, dynamic=True, device=device)
    occupancy.replicate_from(static.occupancy)
    return field, occupancy, fcfg


def dynamic_system_kwargs(
    cfg: Config,
    device: torch.device,
    stage: str,
    *,
    field: Any,
    occupancy: Any,
    reference: ReferenceData,
    preview_dir: Path | None,
) -> dict[str, Any]:
    """The constructor arguments shared by the dynamic and refine systems."""
    return dict(
        field=field,
        occupancy=occupancy,
        reference=reference,
        clip=clip_settings(cfg),
        rays=ray_settings(cfg),
        camera=camera_settings(cfg, stage),
        weights=loss_weights(cfg, stage),
        schedules=stage_schedules(cfg, stage),
        seed=cfg.run.seed,
        device=device,
        preview_dir=preview_dir,
        timers=Timers(cfg.run.profile, device),
    )


def build_dynamic_system(
    cfg: Config,
    device: torch.device,
    *,
    field: Any,
    occupancy: Any,
    reference: ReferenceData,
    video: Guidance,
    zero123: Guidance | None,
    clip_sampler: ClipSampler | None = None,
    preview_dir: Path | None = None,
) -> tuple[DynamicSystem, torch.optim.Optimizer]:
    """The dynamic system and its optimizer (field, priors and reference given)."""
    system = DynamicSystem(
        video=video,
        zero123=zero123,
        clip_sampler=clip_sampler,
        **dynamic_system_kwargs(
            cfg,
            device,
            "dynamic",
            field=field,
            occupancy=occupancy,
            reference=reference,
            preview_dir=preview_dir,
        ),
    )
    return system, build_optimizer(cfg, field, "dynamic")


def dynamic_prior_names(cfg: Config) -> list[str]:
    """The priors the dynamic stage calls (refine adds ControlNet): video, and Zero123 unless its weight is 0."""
    return ["video", "zero123"] if cfg.dynamic.zero123_weight else ["video"]


def video_and_zero123(
    project: Project,
    cfg: Config,
    device: torch.device,
    place: PriorPlacement | None = None,
    stage: str = "dynamic",
) -> tuple[Guidance, Guidance | None]:
    """The priors of the dynamic stage (also used by refine, which passes its ``place`` and ``stage="refine"``):
    video SDS, and Zero123 unless its weight is 0, each on its device (``run.devices``: ``stages/placement.py``)."""
    if place is None:
        place = PriorPlacement.of(cfg, dynamic_prior_names(cfg), device)
        log_placement(place)
    prompt = stage_prompt(cfg, "dynamic")
    video = place.build("video", lambda d: build_video_guidance(cfg, d, prompt, stage))
    zero123 = None
    if cfg.dynamic.zero123_weight:
        ref = zero123_reference(project)
        zero123 = place.build("zero123", lambda d: build_zero123_guidance(cfg, d, stage, ref))
    return video, zero123


def run_dynamic(
    project: Project, cfg: Config, *, force: bool = False, show_progress: bool = True
) -> StageResult:
    """Train (or resume) the dynamic stage of ``project``."""

    def make(ctx: StageContext, device: torch.device) -> Built:
        stage_prompt(cfg, "dynamic")
        field, occupancy, fcfg = dynamic_field_from_static(project, cfg, device)
        reference = load_reference_data(project, cfg.dynamic.ref_size)
        video, zero123 = video_and_zero123(project, cfg, device)
        system, optimizer = build_dynamic_system(
            cfg,
            device,
            field=field,
            occupancy=occupancy,
            reference=reference,
            video=video,
            zero123=zero123,
            preview_dir=project.stage("dynamic").previews,
        )

        def save() -> dict[str, Any]:
            path = save_trained(
                project.artifact("dynamic_model"),
                system.field,
                system.occupancy,
                kind="dynamic",
                field_cfg=fcfg,
            )
            return {"dynamic_model": path}

        return Built(system, optimizer, save)

    return train_nerf_stage(project, cfg, "dynamic", make, force=force, show_progress=show_progress)
