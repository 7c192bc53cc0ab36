"""A prior on its own device: the render goes there, the losses come back (``run.devices``, issue 29).

:class:`PlacedPrior` wraps any :class:`~animate124.guidance.interface.Guidance` whose networks were loaded on
``device`` while the field, the renderer and the optimizer live on ``home``. A call

1. copies the images ``[B, T, 3, H, W]`` (and ``views.condition`` / ``views.c2w``) to ``device`` with
   ``.to(device, non_blocking=True)``: a differentiable copy, so backward brings the images' gradient home;
2. runs the prior there, under ``torch.cuda.device(device)`` (its CUDA graphs are recorded and its temporary
   tensors made on that GPU), drawing every random number from the caller's generator exactly as on one
   device: the same generator, the same calls, the same order;
3. copies each loss term to ``home``, where the trainer adds the terms and calls backward.

Nothing here waits for a GPU: every copy is asynchronous and the priors' own host-to-device copies go through
pinned memory (:func:`~animate124.transfer.to_device`). So when a step calls a prior on ``cuda:1`` and
then one on ``cuda:0``, both GPUs' queues hold work at once and run concurrently (each device has its own
stream; no Python thread per call). Backward runs on autograd's per-device threads: the VAE encoder's
backward of the prior on ``cuda:1`` overlaps with the renderer's on ``cuda:0``. Without CUDA (``cpu,cpu`` in
the tests) every copy is a no-op and the results are bit for bit those of one device.

Everything else about the prior (``name``, ``loss_key``, ``call_flops``, ``frames``, its networks, which
:func:`~animate124.guidance.graphs.release_graphs` may replace) reads and writes through to the wrapped prior.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import Tensor

from animate124.guidance.interface import GuidanceOutput, Views
from animate124.transfer import to_device

__all__ = ["PlacedPrior", "views_to"]

_OWN = frozenset({"prior", "device", "home", "sync"})


def views_to(views: Views, device: torch.device) -> Views:
    """``views`` with its device tensors (``condition``, ``c2w``) on ``device``; the angles stay on the host."""
    moved = {
        name: to_device(x, device)
        for name in ("condition", "c2w")
        if (x := getattr(views, name)) is not None and x.device != device
    }
    return dataclasses.replace(views, **moved) if moved else views


class PlacedPrior:
    """``prior`` called on ``device`` for renders that live on ``home`` (module docstring).

    Args:
        prior: the prior, its networks already on ``device``.
        device: where it runs.
        home: where the field, the renderer, the optimizer and the returned losses are.
        sync: wait for ``device`` at the end of each call (``run.profile``: the step's part timers then
            measure this prior's own time, as they do on one device; off in training, which overlaps).
    """

    def __init__(self, prior: Any, device: torch.device, home: torch.device, *, sync: bool = False) -> None:
        object.__setattr__(self, "prior", prior)
        object.__setattr__(self, "device", torch.device(device))
        object.__setattr__(self, "home", torch.device(home))
        object.__setattr__(self, "sync", bool(sync))

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        step: int,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        t: Tensor | int | None = None,
    ) -> GuidanceOutput:
        dev = self.device
        x = to_device(images, dev)
        v = views_to(views, dev)
        if noise is not None:
            noise = to_device(noise, dev)
        with self.on_device():
            out = self.prior(x, v, step=step, generator=generator, noise=noise, t=t)
            if self.sync and dev.type == "cuda":
                torch.cuda.synchronize(dev)
        losses = {k: to_device(loss, self.home) for k, loss in out.losses.items()}
        return GuidanceOutput(losses=losses, diagnostics=out.diagnostics)

    def on_device(self) -> contextlib.AbstractContextManager:
        """``torch.cuda.device(device)`` for a GPU (graph capture, ``"cuda"`` tensors), else nothing."""
        if self.device.type == "cuda":
            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "prior"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.prior, name, value)

    def __repr__(self) -> str:
        return f"PlacedPrior({type(self.prior).__name__} on {self.device}, home {self.home})"
