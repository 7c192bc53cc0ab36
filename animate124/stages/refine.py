"""``animate124 refine`` (SPEC 6): semantic refinement with ControlNet-tile and the learned token.

The trainable 4D field starts from the dynamic result. A **frozen copy** with its own occupancy grid is
loaded from the dynamic stage's result file every time the stage starts, also after a resume (fix of
SPEC 11.10: upstream cloned it after auto-resuming, so a restarted run was conditioned on its own
partially refined model). On each guidance step the frozen copy renders the same rays, times, shading,
light and background without gradient; its frames condition ControlNet-tile at 1024². It renders only
the frames ControlNet reads (2 of 16 at paper settings; upstream rendered the whole clip and kept those):
the same images, drawn with the same random numbers, for an eighth of the work and none of the memory of
a whole-clip no-grad render (H200: 15.6 GiB; ``refine.frozen_frames``). Everything the
dynamic stage does runs on the same steps (video SDS, Zero123 on frame 0 of clips that start at t = 0,
reference steps, regularisers, time TV).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from animate124.config.schema import Config
from animate124.engine.runner import StageContext, StageResult
from animate124.errors import ProjectError
from animate124.guidance.interface import Guidance
from animate124.project import Project
from animate124.stages.artifacts import TrainedField, load_field, save_trained
from animate124.stages.build import build_controlnet_guidance, build_optimizer, stage_prompt
from animate124.stages.dynamic import dynamic_prior_names, dynamic_system_kwargs, video_and_zero123
from animate124.stages.placement import PriorPlacement, log_placement
from animate124.stages.system import DynamicSystem
from animate124.stages.training import Built, load_reference_data, train_nerf_stage

__all__ = ["run_refine", "RefineSystem", "load_learned_token", "refine_fields"]


class RefineSystem(DynamicSystem):
    """Dynamic system + ControlNet-tile guidance conditioned on a frozen copy's render (SPEC 6)."""

    def __init__(
        self,
        *,
        controlnet: Guidance,
        frozen_field: Any,
        frozen_occupancy: Any,
        frozen_frames: str = "read",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.controlnet = controlnet
        self.frozen_field = frozen_field.eval().requires_grad_(False)
        self.frozen_occupancy = frozen_occupancy
        #: ``refine.frozen_frames``: "read" renders only the frames ControlNet reads, "all" the whole clip
        self.frozen_frames = frozen_frames

    def guidance_priors(self) -> list[Guidance]:
        return [*super().guidance_priors(), self.controlnet]

    def condition_frames(self, num_frames: int) -> list[int] | None:
        """The frames of a clip the frozen copy renders: those ControlNet reads (``frozen_frames="read"``,
        the same images; 2 of 16 at paper settings), or None for all of them."""
        spec = getattr(self.controlnet, "frames", None)
        if self.frozen_frames == "all" or spec is None:
            return None
        from animate124.guidance.controlnet import select_frames

        idx = select_frames(num_frames, spec)
        return None if len(idx) == num_frames else idx

    def guidance_step(self, gs: int, loss_scale: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        out, clip, args = self.render_clip(gs)
        replay = torch.Generator(device="cpu")
        replay.set_state(args.generator_state)
        read = self.condition_frames(out.rgb.shape[1])
        with torch.no_grad(), self.timers("frozen_render"):
            part = self.render(
                self.frozen_field,
                self.frozen_occupancy,
                clip.cameras,
                clip.times,
                shading=args.shading,
                ambient=args.ambient,
                light_dir=args.light_dir,
                bg_color=args.bg_color,
                generator=replay,
                frames=read,
            ).rgb
            if read is None:
                cond = part
            else:  # the frames ControlNet does not read stay zero
                cond = part.new_zeros(out.rgb.shape)
                cond[:, read] = part
        views = self.clip_views(out, clip, condition=cond)
        terms, diag = self.clip_terms(gs, out, clip, views)
        with self.prior_part("controlnet", self.controlnet, out.rgb):
            g = self.controlnet(out.rgb, views, step=gs, generator=self.generator)
        terms.update(g.losses)
        diag.update({f"controlnet/{k}": v for k, v in g.diagnostics.items()})
        return terms, diag


def load_learned_token(project: Project) -> tuple[str, Tensor]:
    """(placeholder, vector [768]) from ``invert``; a clear error when the inversion has not run."""
    from animate124.guidance.textual_inversion import load_learned_embeds

    path = project.learned_embeds
    if not path.is_file():
        raise ProjectError(
            "the refine prompt uses <token>, but no textual-inversion token exists in this project",
            hint=f"run `animate124 invert -p {project.root}` first",
        )
    embeds = load_learned_embeds(path)
    if len(embeds) != 1:
        raise ProjectError(f"{path} holds {len(embeds)} tokens; refine needs exactly one")
    ((name, vec),) = embeds.items()
    return name, vec


def refine_fields(project: Project, cfg: Config, device: torch.device) -> tuple[TrainedField, TrainedField]:
    """(the field refine trains, its frozen copy): the dynamic stage's result loaded twice, each with the run's
    grid backend and kernel options (``stages.artifacts.load_field``)."""
    path = project.artifact("dynamic_model")
    trained = load_field(cfg, path, device, backend=cfg.field.backend)
    frozen = load_field(cfg, path, device, backend=cfg.field.backend)
    return trained, frozen


def run_refine(
    project: Project, cfg: Config, *, force: bool = False, show_progress: bool = True
) -> StageResult:
    """Train (or resume) the refine stage of ``project``."""

    def make(ctx: StageContext, device: torch.device) -> Built:
        prompt = stage_prompt(cfg, "refine")
        token = load_learned_token(project)
        trained, frozen = refine_fields(project, cfg, device)
        reference = load_reference_data(project, cfg.dynamic.ref_size)
        place = PriorPlacement.of(cfg, [*dynamic_prior_names(cfg), "controlnet"], device)
        log_placement(place)
        video, zero123 = video_and_zero123(project, cfg, device, place, stage="refine")
        controlnet = place.build("controlnet", lambda d: build_controlnet_guidance(cfg, d, prompt, token))
        system = RefineSystem(
            controlnet=controlnet,
            frozen_field=frozen.field,
            frozen_occupancy=frozen.occupancy,
            frozen_frames=cfg.refine.frozen_frames,
            video=video,
            zero123=zero123,
            **dynamic_system_kwargs(
                cfg,
                device,
                "refine",
                field=trained.field,
                occupancy=trained.occupancy,
                reference=reference,
                preview_dir=project.stage("refine").previews,
            ),
        )
        optimizer = build_optimizer(cfg, trained.field, "refine")

        def save() -> dict[str, Any]:
            path = save_trained(
                project.artifact("refine_model"),
                system.field,
                system.occupancy,
                kind="dynamic",
                field_cfg=trained.field_cfg,
            )
            return {"refine_model": path}

        return Built(system, optimizer, save)

    return train_nerf_stage(project, cfg, "refine", make, force=force, show_progress=show_progress)
