"""The settings a NeRF training system is built from (``stages/build.py`` fills them from the config):
marching and compositing, training cameras, 4D clips, loss weights and schedules (SPEC 3-6)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from animate124.engine.schedules import (
    EntropyRamp,
    Every,
    LevelMaskSchedule,
    LossScaleSchedule,
    ReferenceSchedule,
    ShadingSchedule,
    StepClock,
)

__all__ = ["RaySettings", "CameraSettings", "ClipSettings", "LossWeights", "Schedules"]

#: below this many kept samples the memory policy recomputes every sample's field evaluation
MIN_KEPT_SAMPLES = 2**16


@dataclass(frozen=True)
class RaySettings:
    """Marching and compositing (config ``raymarch``)."""

    max_steps: int
    min_near: float
    transmittance_thresh: float
    normal_eps: float
    delta_mode: str
    chunk: int | None
    checkpoint_normals: bool
    live_normals: bool
    checkpoint_field: int = 0
    fused_march: bool = True

    def saving_memory(self, samples: int) -> RaySettings | None:
        """The next same-result memory saver after a training step ran out of GPU memory: the normals'
        recompute if it is off; then the field's activations kept for half of ``samples`` (the largest
        training render so far) or of the current ``checkpoint_field``, whichever is smaller, and the rest
        recomputed in backward; halved again on each later failure, down to every sample recomputed
        (below ``MIN_KEPT_SAMPLES``). None when every sample is recomputed already. The render's memory
        falls with each step and its extra time grows only with the samples beyond the bound, so a card
        that is a little too small pays a little."""
        if not self.checkpoint_normals:
            return dataclasses.replace(self, checkpoint_normals=True)
        if self.checkpoint_field == 1:
            return None
        sizes = [v for v in (self.checkpoint_field, samples) if v > 0]
        half = min(sizes) // 2 if sizes else 0
        return dataclasses.replace(self, checkpoint_field=half if half >= MIN_KEPT_SAMPLES else 1)


@dataclass(frozen=True)
class CameraSettings:
    """Training cameras and the reference view (config ``camera`` + the stage's render sizes)."""

    radius: float
    fovy: float
    uniform_sphere_rate: float
    polar_range: tuple[float, float]
    azimuth_range: tuple[float, float]
    upstream_sphere_sampling: bool
    reference_noise: float
    render_size: int
    ref_size: int
    light_noise: float
    random_background: bool

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the training-camera samplers (``render/sampling.py``) share."""
        return dict(
            radius=self.radius,
            fovy=self.fovy,
            height=self.render_size,
            width=self.render_size,
            uniform_sphere_rate=self.uniform_sphere_rate,
            theta_range=self.polar_range,
            phi_range=self.azimuth_range,
            fix_upstream=not self.upstream_sphere_sampling,
        )


@dataclass(frozen=True)
class ClipSettings:
    """4D clips (config ``dynamic`` + ``camera``): SPEC 5.1 frame times and SPEC 3.3 trajectories."""

    frames: int
    time_precision: int
    zero_rate: float
    dynamic_cam_rate: float
    max_dpolar: float
    max_dazimuth: float
    clamp_polar: bool


@dataclass(frozen=True)
class LossWeights:
    """Weights of the reconstruction losses and regularisers (config ``loss``)."""

    rgb: float
    mask: float
    depth: float
    entropy: float
    orientation: float
    normal_tv: float
    normal_blur: float
    time_tv: float
    time_tv_points: int
    time_tv_mode: str


@dataclass(frozen=True)
class Schedules:
    """The stage's schedules over upstream's global step (``engine/schedules.py``)."""

    clock: StepClock
    reference: ReferenceSchedule
    entropy: EntropyRamp
    shading: ShadingSchedule
    level_mask: LevelMaskSchedule | None
    occupancy: Every
    #: the GradScaler's scale by step when the stage runs without one (``static.sds_grad_scale=upstream``)
    loss_scale: LossScaleSchedule
