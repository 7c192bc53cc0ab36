"""Training schedules as small pure objects (SPEC 0, 3.1, 3.2, 3.4, 3.6, 4, 5, 11.19).

Upstream keeps ONE global step across stages and every ramp reads it: the dynamic stage runs global
steps 5001-15000 and the refine stage 15001-20000, with ``--iters`` the cumulative end (SPEC 0). We
expose per-stage step counts and reproduce those offsets explicitly: a :class:`StepClock` maps the
stage's local step (1-based) to upstream's global step, and every schedule below takes the global step.

Upstream increments the global step *before* the training step, so the first static step has global
step 1; the occupancy grid is refreshed before that increment whenever ``(global_step − 1) % 16 == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "StepClock",
    "ReferenceSchedule",
    "EntropyRamp",
    "LevelMaskSchedule",
    "ShadingSchedule",
    "ShadingChoice",
    "Every",
    "GRAD_SCALER",
    "LossScaleSchedule",
]

#: torch's GradScaler defaults, which upstream's trainer used (``torch.cuda.amp.GradScaler(enabled=fp16)``)
#: and ours uses too (``engine/trainer.py``): start at 2¹⁶, halve on an overflow, double after 2000 steps
#: in a row without one.
GRAD_SCALER: dict[str, float | int] = {
    "init_scale": 2.0**16,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
}


@dataclass(frozen=True)
class StepClock:
    """Local step -> upstream's global step.

    ``offset``: global steps of the earlier stages (static 0, dynamic = static iters, refine = static +
    dynamic iters); ``iters``: this stage's steps; ``total``: the cumulative end (upstream ``--iters``).
    """

    offset: int
    iters: int

    @property
    def total(self) -> int:
        return self.offset + self.iters

    def global_step(self, step: int) -> int:
        """Global step of local step ``step`` (1-based)."""
        return self.offset + step


@dataclass(frozen=True)
class ReferenceSchedule:
    """A step is a reference step iff ``global < known_iters`` or ``global % interval == 0`` (SPEC 3.4).

    Static: known_iters 100, interval 4 (steps 1-99 all reference, then every 4th). Dynamic and refine:
    known_iters 0, interval 4.
    """

    known_iters: int
    interval: int

    def is_reference(self, global_step: int) -> bool:
        return global_step < self.known_iters or global_step % self.interval == 0


@dataclass(frozen=True)
class EntropyRamp:
    """Entropy weight factor ``min(1, 2·global_step/total)`` (SPEC 3.6), total = the cumulative end.

    In the dynamic stage it ramps from 0.67 at global step 5001 to 1 at 7500; in refine it is 1.
    """

    total: int

    def factor(self, global_step: int) -> float:
        return min(1.0, 2.0 * global_step / max(1, self.total))


@dataclass(frozen=True)
class LevelMaskSchedule:
    """Coarse-to-fine grid masking (SPEC 3.1, 4): the finest ``levels`` of ``num_levels`` give zero
    features while upstream's step counter is at most ``until``. Upstream sets the mask before it increments
    its counter (``nerf/utils.py`` ``train_one_epoch``: ``if global_step > grid_levels_mask_iters`` runs
    before ``global_step += 1``), so the step with our (post-increment) global step ``g`` is masked iff
    ``g − 1 <= until``: at paper settings steps 1-3001. Returns the first masked level, or None."""

    until: int
    levels: int
    num_levels: int

    def max_level(self, global_step: int) -> int | None:
        if self.levels <= 0 or global_step - 1 > self.until:
            return None
        return max(0, self.num_levels - self.levels)


@dataclass(frozen=True)
class ShadingChoice:
    """Shading of one guidance render: mode (normal / textureless / lambertian) and ambient ratio k."""

    mode: str
    ambient: float


@dataclass(frozen=True)
class ShadingSchedule:
    """Shading of guidance steps (SPEC 4, 5.2, 12).

    ``global_step < normal_until``: normal-map shading with ambient 1 (static warm-up). Otherwise
    ambient ``k ~ U[ambient_range]`` and textureless with probability ``textureless_rate``, else
    lambertian. Draw order from the generator: k, then the textureless coin.
    """

    normal_until: int
    textureless_rate: float
    ambient_range: tuple[float, float]

    def choose(self, global_step: int, generator: torch.Generator | None) -> ShadingChoice:
        if global_step < self.normal_until:
            return ShadingChoice("normal", 1.0)
        dev = generator.device if generator is not None else "cpu"
        u = torch.rand(2, generator=generator, device=dev).tolist()
        lo, hi = self.ambient_range
        ambient = lo + (hi - lo) * u[0]
        mode = "textureless" if u[1] < self.textureless_rate else "lambertian"
        return ShadingChoice(mode, ambient)


@dataclass(frozen=True)
class Every:
    """Upstream's "before the increment" cadence: due at global step g iff ``(g − 1) % interval == 0``
    (the occupancy grid is refreshed at the first static step and every 16 steps after, SPEC 3.2)."""

    interval: int

    def due(self, global_step: int) -> bool:
        return (global_step - 1) % self.interval == 0


@dataclass(frozen=True)
class LossScaleSchedule:
    """The loss scale of a GradScaler that never overflows (``GRAD_SCALER``'s settings), by training step.

    The scaler doubles its scale after ``growth_interval`` successful steps in a row, so during step k
    (1-based, k − 1 successful steps before it) the scale is ``init · growth^⌊(k − 1)/interval⌋``: at paper
    settings 2¹⁶ for steps 1-2000, 2¹⁷ for 2001-4000, 2¹⁸ for 4001-5000. The static stage divides its SDS
    terms by it when there is no real scaler (``static.sds_grad_scale=upstream`` in bf16/fp32, SPEC 11.1).
    """

    init_scale: float
    growth_factor: float
    growth_interval: int

    def scale(self, step: int) -> float:
        """The scale during local training step ``step`` (1-based; the scaler is new in every stage)."""
        return float(self.init_scale * self.growth_factor ** ((step - 1) // self.growth_interval))
