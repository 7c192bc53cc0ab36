"""Which device each prior of a training stage runs on (``run.devices`` / ``--gpus N``, issue 29).

The first device holds the field, the renderer, the optimizer and refine's frozen copy. A step is a chain:
render, then the priors, then backward through the priors' VAE encoders and the renderer; only the priors of
one step can run side by side. So the rule balances the priors alone: each prior, heaviest first, goes to the
device with the least prior work so far (longest-processing-time-first), a tie to a device other than the first
(which holds the field's memory), then to the lower index. The work is milliseconds per call at paper settings
(forward + backward to the renders, CUDA graphs and VAE recompute on: BENCHMARKS.md §8.2, H200); only its order
and rough ratios matter. With two devices this gives

* static: SD 1.5 on the second card, Zero123 with the field on the first;
* dynamic: the video model on the second card, Zero123 with the field;
* refine: ControlNet-tile + its SD UNet on the second card, the video model and Zero123 with the field.

Every prior's random numbers still come from the system's generator in the one-device order (the system
calls its priors in the same order; :class:`~animate124.guidance.placement.PlacedPrior` moves only tensors),
so the results are those of one device. docs/gpu.md has the table this rule gives; per-step times on two GPUs
are not measured yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from animate124.config.schema import Config

log = logging.getLogger(__name__)

__all__ = ["PRIOR_COST_MS", "place_priors", "PriorPlacement", "log_placement"]

#: milliseconds per call of each prior at paper settings (BENCHMARKS.md §8.2: CUDA graphs + VAE recompute)
PRIOR_COST_MS: dict[str, float] = {"controlnet": 529.0, "video": 150.0, "sd": 55.0, "zero123": 32.0}


def place_priors(names: Sequence[str], n_devices: int) -> dict[str, int]:
    """Device index of each prior in ``names`` on ``n_devices`` devices (module docstring)."""
    if n_devices <= 1:
        return dict.fromkeys(names, 0)
    load = [0.0] * n_devices
    placed: dict[str, int] = {}
    for name in sorted(names, key=lambda n: (-PRIOR_COST_MS[n], n)):
        index = min(range(n_devices), key=lambda i: (load[i], i == 0, i))
        placed[name] = index
        load[index] += PRIOR_COST_MS[name]
    return {name: placed[name] for name in names}


class PriorPlacement:
    """Builds a stage's priors on their devices: ``placement.build("sd", lambda device: ...)``.

    With one device this is the one-device path (the prior is built on it and returned as it is). With
    several (``run.devices``), each prior is built on the device :func:`place_priors` gives it and wrapped in
    a :class:`~animate124.guidance.placement.PlacedPrior` whose home is the first device, also when that is
    where it runs, so that every call takes the same path.
    """

    def __init__(self, names: Sequence[str], devices: Sequence[torch.device], *, sync: bool = False) -> None:
        self.devices = tuple(devices)
        self.index = place_priors(names, len(self.devices))
        self.sync = sync

    @classmethod
    def of(cls, cfg: Config, names: Sequence[str], home: torch.device) -> PriorPlacement:
        """The placement of a stage's priors ``names`` over ``run.devices`` (checked by the pre-flight); one
        device (``home``) when it is empty."""
        from animate124.engine.runtime import resolve_devices

        devices = resolve_devices(cfg) if cfg.run.devices.strip() else (home,)
        return cls(names, devices, sync=cfg.run.profile)

    @property
    def several(self) -> bool:
        return len(self.devices) > 1

    def device(self, name: str) -> torch.device:
        return self.devices[self.index[name]]

    def build(self, name: str, make: Callable[[torch.device], Any]) -> Any:
        """``make(device)`` on ``name``'s device; wrapped when there are several devices."""
        prior = make(self.device(name))
        if not self.several:
            return prior
        from animate124.guidance.placement import PlacedPrior

        return PlacedPrior(prior, self.device(name), self.devices[0], sync=self.sync)

    def describe(self) -> str:
        """One line for the log: ``sd -> cuda:1, zero123 -> cuda:0``."""
        return ", ".join(f"{n} -> {self.devices[i]}" for n, i in self.index.items())


def log_placement(place: PriorPlacement) -> None:
    """Say where the priors run, when there are several devices."""
    if place.several:
        log.info("priors on %d devices: %s", len(place.devices), place.describe())
