"""Channels-last layouts for the priors' networks (``run.channels_last``; issue 27).

cuDNN's fp16 convolutions run in NHWC; a network kept in NCHW pays a transpose before and after each of them
(BENCHMARKS.md §8.8: 13–17 % of the ModelScope and ControlNet calls' device time). Converting a network's
convolution weights to channels-last makes its convolutions take and give NHWC activations (PyTorch picks a
convolution's output layout from its input and weight), so the layout propagates through the network without
the round trips. The values are the same network's: only the memory order changes, and each convolution may
pick another algorithm, which sums in another order (the gradient agreement test, ``guidance/agreement.py``,
checks the result). In eager PyTorch the group norms are slow on NHWC (§8.6), so the layout pays mostly
together with ``run.compile_priors``, whose generated norms read either layout.

2-D convolutions get ``channels_last``, 3-D ones (the video UNet's temporal convolutions) ``channels_last_3d``;
other parameters are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["LAYOUT_NAMES", "channels_last_", "parse_channels_last", "use_channels_last"]

#: what ``run.channels_last`` may name: the priors, and the textual inversion's UNet and VAE
LAYOUT_NAMES = ("sd", "zero123", "video", "controlnet", "invert")


def parse_channels_last(value: str) -> tuple[str, ...]:
    """``run.channels_last``: ``"video,controlnet"`` -> ("video", "controlnet"); ``"all"`` -> every name."""
    from animate124.guidance.offload import parse_prior_names

    return parse_prior_names(value, LAYOUT_NAMES, "run.channels_last", all_word=True)


def channels_last_(module: torch.nn.Module) -> int:
    """Convert every convolution weight of ``module`` in place to channels-last (2-D) or channels-last-3d
    (3-D); returns how many were converted. The same tensors (``.data`` swapped), so optimizers and
    wrappers that hold them keep working."""
    done = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            fmt = torch.channels_last
        elif isinstance(m, torch.nn.Conv3d):
            fmt = torch.channels_last_3d
        else:
            continue
        m.weight.data = m.weight.data.contiguous(memory_format=fmt)
        done += 1
    return done


def use_channels_last(prior: Any) -> int:
    """The prior's UNet, ControlNet and VAE encoder in channels-last (their plain modules, before any CUDA
    graph or compile wrapper records them); returns the number of convolutions converted."""
    from animate124.guidance.graphs import eager_module

    done = 0
    for name in ("unet", "controlnet"):
        net = getattr(prior, name, None)
        if net is not None:
            done += channels_last_(eager_module(net))
    vae = getattr(prior, "vae", None)
    for part in ("encoder", "quant_conv"):
        sub = getattr(vae, part, None)
        if isinstance(sub, torch.nn.Module):
            done += channels_last_(sub)
    log.debug("%s: %d convolutions in channels-last", type(prior).__name__, done)
    return done
