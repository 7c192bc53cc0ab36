"""The NeRF training "systems" of the static, dynamic and refine stages (SPEC 3-6).

A system combines a field, its occupancy grid, the priors (through the one guidance interface), the
reference view and the losses into ``training_step(step) -> StepOutput`` for the shared trainer
(``engine/trainer.py``). Stage behaviour enters as the schedules of ``engine/schedules.py``; the
values come from the config through ``stages/build.py`` only.

One step is either a **reference step** (the reference camera rendered at 192² with the known-view ray
noise, white background, "lambertian" shading with ambient 1; masked RGB, mask and Pearson depth
losses) or a **guidance step** (a random camera, or a 16-frame clip, rendered at 128² with a random
background colour, random ambient/textureless shading and a random light; the priors' SDS losses).
The regularisers (entropy, orientation, normal TV, normal blur; time TV in the 4D stages) are added on
every step (SPEC 3.4-3.6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from animate124 import losses as L
from animate124.engine.timing import Timers
from animate124.engine.trainer import StepOutput
from animate124.guidance.graphs import release_graphs
from animate124.guidance.interface import Guidance, Views
from animate124.render.cameras import Cameras, camera_from_spherical, reference_camera
from animate124.render.renderer import RenderOutput, render
from animate124.render.sampling import sample_frame_times, sample_training_camera, sample_trajectory
from animate124.scene.fields import RadianceField
from animate124.scene.occupancy import OccupancyGrid
from animate124.stages.settings import (
    CameraSettings,
    ClipSettings,
    LossWeights,
    RaySettings,
    Schedules,
)
from animate124.transfer import to_device

log = logging.getLogger(__name__)

#: the loss terms of a reference step (SPEC 3.5) and the regularisers of every step (SPEC 3.6)
REFERENCE_TERMS = ("rgb", "mask", "depth")
REGULARIZER_TERMS = ("entropy", "orientation", "normal_tv", "normal_blur")

__all__ = [
    "RaySettings",
    "CameraSettings",
    "ClipSettings",
    "LossWeights",
    "Schedules",
    "ReferenceData",
    "NerfSystem",
    "StaticSystem",
    "DynamicSystem",
]


@dataclass
class ReferenceData:
    """The reference view at the reference-render size: ``rgb [1,1,3,S,S]`` on white, ``mask
    [1,1,1,S,S]`` bool, ``depth`` ``[K]`` nonzero-normalised ground truth at the mask pixels (or None).
    ``camera``: where it was seen from; None = the paper's reference camera (polar 90°, azimuth 0°)."""

    rgb: Tensor
    mask: Tensor
    depth: Tensor | None
    camera: Cameras | None = None

    def to(self, device: torch.device) -> ReferenceData:
        return ReferenceData(
            self.rgb.to(device),
            self.mask.to(device),
            None if self.depth is None else self.depth.to(device),
            None if self.camera is None else self.camera.to(device),
        )


@dataclass
class Clip:
    """One training clip: cameras [F] (row-major), times [1, F], whether it starts at t = 0 going
    forward (Zero123 then applies to frame 0), whether the camera is static over the clip."""

    cameras: Cameras
    times: Tensor
    from_zero: bool
    static_camera: bool


@dataclass
class RenderArgs:
    """Shading, light, background and the generator state a training render was drawn with, so a second
    model (refine's frozen copy) can render exactly the same rays (SPEC 6 step 1)."""

    shading: str
    ambient: float
    light_dir: Tensor
    bg_color: Tensor
    generator_state: Tensor


CameraSampler = Callable[[torch.Generator], Cameras]
ClipSampler = Callable[[torch.Generator], Clip]


class NerfSystem:
    """Shared machinery of the three NeRF stages; subclasses implement :meth:`guidance_step`."""

    def __init__(
        self,
        *,
        field: RadianceField,
        occupancy: OccupancyGrid,
        reference: ReferenceData,
        rays: RaySettings,
        camera: CameraSettings,
        weights: LossWeights,
        schedules: Schedules,
        seed: int,
        device: torch.device,
        preview_dir: Path | None = None,
        timers: Timers | None = None,
    ) -> None:
        self.field = field
        self.occupancy = occupancy
        self.reference = reference.to(device)
        self.rays = rays
        self.max_samples = 0  # the largest training render so far (samples)
        self.camera = camera
        self.weights = weights
        self.schedules = schedules
        self.device = device
        self.preview_dir = preview_dir
        self.timers = timers or Timers(False)
        self.timers.split("backward", "backward_priors", "backward_nerf")  # run.profile (prior_part marks it)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        # The occupancy refresh draws 4 jitter numbers per cell and slot (128³ × 16 slots: 134M numbers in
        # the 4D stages); drawn on the CPU they cost 60-67 ms per step on average (BENCHMARKS.md §6). A
        # generator on the training device keeps them there; it is checkpointed like the other one.
        self.occupancy_generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.bg_white = torch.ones(3, device=device)

    # ---------------------------------------------------------------- trainer hooks
    def generators(self) -> dict[str, torch.Generator]:
        return {"system": self.generator, "occupancy": self.occupancy_generator}

    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"field/{k}": v for k, v in self.field.state_dict().items()}
        out.update({f"occupancy/{k}": v for k, v in self.occupancy.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        self.field.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("field/")}, strict=True
        )
        self.occupancy.load_state_dict(
            {k[10:]: v for k, v in tensors.items() if k.startswith("occupancy/")}, strict=True
        )

    def global_step(self, step: int) -> int:
        return self.schedules.clock.global_step(step)

    @contextlib.contextmanager
    def prior_part(self, name: str, prior: Guidance, images: Tensor) -> Iterator[None]:
        """``self.timers(name)`` around one call of ``prior`` on ``images``. With ``run.profile`` the call's
        exact FLOPs are counted too (``guidance/flops.py``, once per shape): its forward (UNet on the CFG batch,
        VAE encoder) as the work of part ``name``, the VAE encoder's backward and recompute as work of the
        step's ``backward`` part and of its first half, ``backward_priors`` (``metrics.flops_by_part``; the
        split is where the images' gradient arrives: ``Timers.mark_on_grad``, ``__init__``)."""
        count = getattr(prior, "call_flops", None)
        if self.timers.enabled and count is not None:
            flops = count(images.shape)
            if flops is not None:
                self.timers.add_flops(name, flops.forward)
                self.timers.add_flops("backward", flops.backward)
                self.timers.add_flops("backward_priors", flops.backward)
        self.timers.mark_on_grad(images, "backward")
        with self.timers(name):
            yield

    def before_step(self, step: int) -> None:
        gs = self.global_step(step)
        sched = self.schedules
        if sched.level_mask is not None:
            self.field.set_level_mask(sched.level_mask.max_level(gs))
        if sched.occupancy.due(gs):
            with self.timers("occupancy"), torch.no_grad():
                self.occupancy.update(self._density, generator=self.occupancy_generator)

    def after_step(self, step: int) -> None:
        pass

    def guidance_priors(self) -> list[Guidance]:
        """The priors this system calls (their CUDA graphs are the first memory :meth:`save_memory` frees)."""
        return []

    def save_memory(self) -> str | None:
        """After a step ran out of GPU memory: the next same-result saver, on for the rest of the stage (the
        trainer runs the step again); None when everything is saved already. First the VAE-encoder activations
        the priors keep (``static.vae_keep_pixels``: up to 3.1 GiB, for one more encoder pass a call;
        ``dynamic.vae_keep_pixels``: :attr:`vae_keep_setting`), then the priors' CUDA graphs and their memory pool
        (:func:`~animate124.guidance.graphs.release_graphs`: eager calls from then on), then
        :meth:`RaySettings.saving_memory`, sized by the largest training render so far."""
        keeping = [
            p for p in self.guidance_priors()
            if getattr(p, "checkpoint_encoder", False) and getattr(p, "checkpoint_keep_pixels", 0) > 0
        ]  # fmt: skip
        if keeping:
            for p in keeping:
                p.checkpoint_keep_pixels = 0
            return f"{self.vae_keep_setting}=0"
        freed = release_graphs(self.guidance_priors())
        if freed != 0:
            held = "" if freed is None else f" (their pool held {freed / 2**30:.2f} GiB)"
            return f"run.cuda_graphs=false{held}"
        rays = self.rays.saving_memory(self.max_samples)
        if rays is None:
            return None
        old, self.rays = self.rays, rays
        return " ".join(
            f"raymarch.{f.name}={getattr(rays, f.name)}".lower()
            for f in dataclasses.fields(rays)
            if getattr(rays, f.name) != getattr(old, f.name)
        )

    def _density(self, x: Tensor, t: Tensor | None) -> Tensor:
        return self.field.density(x, t)

    # ---------------------------------------------------------------- rendering
    def render(
        self, field: RadianceField, occupancy: OccupancyGrid, cameras: Cameras, times: Tensor | None, *,
        shading: str, ambient: float, light_dir: Tensor | None, bg_color: Tensor, generator: torch.Generator,
        ray_noise: float = 0.0, frames: Sequence[int] | None = None,
    ) -> RenderOutput:  # fmt: skip
        r = self.rays
        out = render(
            field, cameras, times, shading=shading, ambient=ambient, light_dir=light_dir, bg_color=bg_color,
            occupancy=occupancy, perturb=True, generator=generator, ray_noise_scale=ray_noise, frames=frames,
            compute_normals=True, normal_eps=r.normal_eps, max_steps=r.max_steps, min_near=r.min_near,
            delta_mode=r.delta_mode, t_thresh=r.transmittance_thresh, chunk=r.chunk,
            checkpoint_normals=r.checkpoint_normals, live_normals=r.live_normals,
            checkpoint_field=r.checkpoint_field, fused_march=None if r.fused_march else False,
        )  # fmt: skip
        self.max_samples = max(self.max_samples, out.num_samples)  # sizes the out-of-memory retry's saver
        return out

    def light_for(self, cameras: Cameras, shared_noise: Tensor) -> Tensor:
        """Per-camera light ``l_f = normalize(origin_f + n)``, one noise vector n per clip (SPEC 3.1)."""
        return torch.nn.functional.normalize(
            cameras.centers.float() + to_device(shared_noise, cameras.device), dim=-1
        )

    def draw_light_noise(self) -> Tensor:
        return torch.randn(3, generator=self.generator) * self.camera.light_noise

    def draw_background(self) -> Tensor:
        if not self.camera.random_background:
            return self.bg_white
        return to_device(torch.rand(3, generator=self.generator), self.device)

    # ---------------------------------------------------------------- losses
    def regularizers(self, out: RenderOutput, gs: int) -> dict[str, Tensor]:
        w = self.weights
        terms: dict[str, Tensor] = {}
        if w.entropy:
            terms["entropy"] = w.entropy * self.schedules.entropy.factor(gs) * L.entropy_loss(out.weights)
        if w.orientation and out.orientation is not None:
            terms["orientation"] = w.orientation * L.orientation_loss(out.orientation)
        if out.normal is not None:
            if w.normal_tv:
                terms["normal_tv"] = w.normal_tv * L.normal_tv_loss(out.normal)
            if w.normal_blur:
                terms["normal_blur"] = w.normal_blur * L.normal_blur_loss(out.normal)
        return terms

    def reference_cameras(self) -> Cameras:
        if self.reference.camera is not None:
            return self.reference.camera
        c = self.camera
        return reference_camera(c.ref_size, c.ref_size, c.radius, c.fovy, device=self.device)

    def reference_times(self) -> Tensor | None:
        return None

    def reference_step(self, gs: int) -> dict[str, Tensor]:
        """Reconstruction losses on the reference view (SPEC 3.4-3.5)."""
        cams = self.reference_cameras()
        with self.timers("render"):
            out = self.render(
                self.field,
                self.occupancy,
                cams,
                self.reference_times(),
                shading="lambertian",
                ambient=1.0,
                light_dir=None,
                bg_color=self.bg_white,
                generator=self.generator,
                ray_noise=self.camera.reference_noise,
            )
        ref, w = self.reference, self.weights
        terms = {
            "rgb": w.rgb * L.masked_rgb_loss(out.rgb, ref.rgb, ref.mask),
            "mask": w.mask * L.mask_loss(out.opacity, ref.mask),
        }
        if ref.depth is not None and w.depth:
            terms["depth"] = w.depth * L.depth_loss(out.depth[0, 0], ref.depth, ref.mask[0, 0])
        terms.update(self.regularizers(out, gs))
        return terms

    def guidance_step(self, gs: int, loss_scale: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The guidance terms of global step ``gs``; ``loss_scale``: the GradScaler's scale S of this step
        (the real one under fp16, else the no-overflow schedule :class:`LossScaleSchedule`)."""
        raise NotImplementedError

    def extra_terms(self, gs: int) -> dict[str, Tensor]:
        return {}

    def loss_groups(self) -> dict[str, list[str]]:
        """Loss group -> term names, for the trainer's gradient-balance record: the reference losses, each
        prior's term (named after the prior), the regularisers, the time TV."""
        groups: dict[str, list[str]] = {
            "reference": list(REFERENCE_TERMS),
            "regularizers": list(REGULARIZER_TERMS),
            "time_tv": ["time_tv"],
        }
        for prior in self.guidance_priors():
            groups[prior.name] = [prior.loss_key]
        return groups

    def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
        gs = self.global_step(step)
        scalars: dict[str, float] = {"global_step": float(gs)}
        if self.schedules.reference.is_reference(gs):
            terms = self.reference_step(gs)
            scalars["reference"] = 1.0
        else:
            scale = loss_scale if loss_scale is not None else self.schedules.loss_scale.scale(step)
            terms, diag = self.guidance_step(gs, scale)
            scalars.update(diag)
            scalars["reference"] = 0.0
        terms.update(self.extra_terms(gs))
        return StepOutput(losses=terms, scalars=scalars, groups=self.loss_groups())

    # ---------------------------------------------------------------- previews
    def preview_frames(self) -> Tensor:
        """``[N, 3, H, W]`` frames for the preview strip."""
        c = self.camera
        az = torch.tensor([0.0, 90.0, 180.0, 270.0])
        cams = camera_from_spherical(90.0, az, c.radius, c.fovy, c.render_size, c.render_size, self.device)
        out = render(
            self.field,
            cams,
            None,
            occupancy=self.occupancy,
            max_steps=self.rays.max_steps,
            min_near=self.rays.min_near,
            delta_mode=self.rays.delta_mode,
            t_thresh=self.rays.transmittance_thresh,
            chunk=self.rays.chunk,
            fused_march=None if self.rays.fused_march else False,
        )
        return out.rgb[:, 0]

    preview_video = False
    vae_keep_setting = "static.vae_keep_pixels"  # whose kept VAE activations save_memory drops first

    def preview(self, step: int) -> None:
        """Write ``previews/step-NNNNNNN.png`` and ``previews/latest.png`` (plus ``latest.mp4`` in 4D)."""
        if self.preview_dir is None:
            return
        from animate124.fileio import atomic_path
        from animate124.render.video import make_grid, save_image, save_video

        frames = self.preview_frames().float().cpu()
        strip = make_grid(frames, nrow=frames.shape[0])
        for name in (f"step-{step:07d}.png", "latest.png"):
            with atomic_path(self.preview_dir / name) as tmp:
                save_image(tmp, strip)
        if self.preview_video:
            with atomic_path(self.preview_dir / "latest.mp4") as tmp:
                save_video(tmp, frames, fps=8)


class StaticSystem(NerfSystem):
    """Static stage (SPEC 4): SD 1.5 + Zero123-XL SDS on the same 128² render.

    ``sds_grad_scale="upstream"`` (``static.sds_grad_scale``, SPEC 11.1) weights each SDS term by 1/S, S the
    loss scale of the step. Upstream pushed ``z.backward(g)`` past the GradScaler and ``unscale_`` then
    divided every gradient by S, so its SDS reached the field as g/S beside the unscaled reference losses and
    regularisers. Here the SDS surrogate loss times 1/S goes through the scaler like the other terms
    (× S in backward, ÷ S in ``unscale_``): the field gets g/S, and under fp16 the latents get g, as
    upstream's. ``"nominal"``: the weights as written.
    """

    def __init__(
        self,
        *,
        priors: Mapping[str, Guidance],
        sds_grad_scale: str,
        camera_sampler: CameraSampler | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        if sds_grad_scale not in ("upstream", "nominal"):
            raise ValueError(f"sds_grad_scale must be 'upstream' or 'nominal', got {sds_grad_scale!r}")
        self.priors = dict(priors)
        self.sds_grad_scale = sds_grad_scale
        self.camera_sampler = camera_sampler or self.random_camera

    def guidance_priors(self) -> list[Guidance]:
        return list(self.priors.values())

    def random_camera(self, generator: torch.Generator) -> Cameras:
        """A random training camera (SPEC 3.3)."""
        return sample_training_camera(
            generator, n=1, device=self.device, **self.camera.sampler_kwargs()
        ).cameras

    def guidance_step(self, gs: int, loss_scale: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        shade = self.schedules.shading.choose(gs, self.generator)
        cams = self.camera_sampler(self.generator)
        light = self.light_for(cams, self.draw_light_noise())
        bg = self.draw_background()
        with self.timers("render"):
            out = self.render(
                self.field,
                self.occupancy,
                cams,
                None,
                shading=shade.mode,
                ambient=shade.ambient,
                light_dir=light,
                bg_color=bg,
                generator=self.generator,
            )
        views = Views.from_cameras(cams, 1, 1)
        terms: dict[str, Tensor] = {}
        diag: dict[str, float] = {"ambient": shade.ambient}
        factor = 1.0 / loss_scale if self.sds_grad_scale == "upstream" else 1.0
        if self.sds_grad_scale == "upstream":
            diag["sds_loss_scale"] = float(loss_scale)
        for name, prior in self.priors.items():
            with self.prior_part(name, prior, out.rgb):
                g = prior(out.rgb, views, step=gs, generator=self.generator)
            for k, v in g.losses.items():
                terms[k] = v * factor if factor != 1.0 else v
            diag.update({f"{name}/{k}": v for k, v in g.diagnostics.items()})
        terms.update(self.regularizers(out, gs))
        return terms, diag


class DynamicSystem(NerfSystem):
    """Dynamic stage (SPEC 5): 16-frame clips, video SDS, Zero123 on frame 0 of clips starting at t=0,
    reference steps at t=0, time TV on every step. ``refine`` extends it (``stages/refine.py``)."""

    preview_video = True
    vae_keep_setting = "dynamic.vae_keep_pixels"

    def __init__(
        self,
        *,
        video: Guidance,
        zero123: Guidance | None,
        clip: ClipSettings,
        clip_sampler: ClipSampler | None = None,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.video = video
        self.zero123 = zero123
        self.clip = clip
        self.clip_sampler = clip_sampler or self.random_clip

    def guidance_priors(self) -> list[Guidance]:
        return [g for g in (self.video, self.zero123) if g is not None]

    def reference_times(self) -> Tensor | None:
        return torch.zeros(1, 1)  # on the host, as the clips' times

    def extra_terms(self, gs: int) -> dict[str, Tensor]:
        w = self.weights
        if not w.time_tv:
            return {}
        with self.timers("time_tv"):
            tv = self.field.time_tv_loss(w.time_tv_mode, n_points=w.time_tv_points, generator=self.generator)
        return {"time_tv": w.time_tv * tv}

    def random_clip(self, generator: torch.Generator) -> Clip:
        """SPEC 5.1 frame times and a SPEC 3.3 camera trajectory."""
        c, k = self.camera, self.clip
        times, from_zero = sample_frame_times(
            generator, frames=k.frames, precision=k.time_precision, zero_rate=k.zero_rate
        )
        traj = sample_trajectory(
            generator,
            frames=k.frames,
            dynamic_cam_rate=k.dynamic_cam_rate,
            max_dpolar=k.max_dpolar,
            max_dazimuth=k.max_dazimuth,
            clamp_polar=k.clamp_polar,
            device=self.device,
            **c.sampler_kwargs(),
        )
        # times stay on the host: the renderer copies them to the device without waiting for it and reads
        # the frames' times from this copy (scene/timeruns.py)
        return Clip(traj.cameras, times.float()[None], from_zero, not traj.dynamic)

    def render_clip(self, gs: int) -> tuple[RenderOutput, Clip, RenderArgs]:
        """Render one training clip; also returns what a second model needs to render the same rays."""
        shade = self.schedules.shading.choose(gs, self.generator)
        clip = self.clip_sampler(self.generator)
        args = RenderArgs(
            shading=shade.mode,
            ambient=shade.ambient,
            light_dir=self.light_for(clip.cameras, self.draw_light_noise()),
            bg_color=self.draw_background(),
            generator_state=self.generator.get_state(),
        )
        with self.timers("render"):
            out = self.render(
                self.field,
                self.occupancy,
                clip.cameras,
                clip.times,
                shading=args.shading,
                ambient=args.ambient,
                light_dir=args.light_dir,
                bg_color=args.bg_color,
                generator=self.generator,
            )
        return out, clip, args

    def clip_views(self, out: RenderOutput, clip: Clip, condition: Tensor | None = None) -> Views:
        return Views.from_cameras(
            clip.cameras,
            1,
            out.rgb.shape[1],
            static_camera=torch.tensor([clip.static_camera]),
            condition=condition,
        )

    def clip_terms(
        self, gs: int, out: RenderOutput, clip: Clip, views: Views
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Video SDS, Zero123 on frame 0 of a clip that starts at t = 0, and the regularisers."""
        from_zero = clip.from_zero
        terms: dict[str, Tensor] = {}
        diag = {"from_zero": float(from_zero), "static_camera": float(clip.static_camera)}
        diag["samples"] = float(out.num_samples)  # how full the scene is: the render's cost and memory
        with self.prior_part("video", self.video, out.rgb):
            g = self.video(out.rgb, views, step=gs, generator=self.generator)
        terms.update(g.losses)
        diag.update({f"video/{k}": v for k, v in g.diagnostics.items()})
        if from_zero and self.zero123 is not None:
            with self.prior_part("zero123", self.zero123, out.rgb[:, :1]):
                z = self.zero123(out.rgb[:, :1], views.select_frames([0]), step=gs, generator=self.generator)
            terms.update(z.losses)
            diag.update({f"zero123/{k}": v for k, v in z.diagnostics.items()})
        terms.update(self.regularizers(out, gs))
        return terms, diag

    def guidance_step(self, gs: int, loss_scale: float) -> tuple[dict[str, Tensor], dict[str, float]]:
        out, clip, _ = self.render_clip(gs)
        return self.clip_terms(gs, out, clip, self.clip_views(out, clip))

    def preview_frames(self) -> Tensor:
        """The reference view at 8 times in [0, 1)."""
        c = self.camera
        n = 8
        cams = camera_from_spherical(90.0, 0.0, c.radius, c.fovy, c.render_size, c.render_size, self.device)
        cams = Cameras.cat([cams] * n)
        times = (torch.arange(n, dtype=torch.float32, device=self.device) / n)[None]
        out = render(
            self.field,
            cams,
            times,
            occupancy=self.occupancy,
            max_steps=self.rays.max_steps,
            min_near=self.rays.min_near,
            delta_mode=self.rays.delta_mode,
            t_thresh=self.rays.transmittance_thresh,
            chunk=self.rays.chunk,
            fused_march=None if self.rays.fused_march else False,
        )
        return out.rgb[0]
