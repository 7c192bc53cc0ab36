"""Priors' networks kept in host memory between their calls (``run.offload_priors``; issue 12, low-vram).

A score-distillation prior runs its UNet (and ControlNet) forward only, without grad, once per step or less
often (Zero123 only on clips that start at t = 0). :class:`OffloadedCall` keeps such a network's weights in
pinned host memory and copies them to the device for each call, freeing the device copy right after. The
network computes the same function on the same weights (the copy is exact); the cost is one host-to-device
copy of the weights per call (PCIe: about 25 GB/s pinned, so ~70 ms for a 1.7 GB fp16 UNet), and such a
network is not replayed from a CUDA graph (its weights move every call).

While unloaded, each parameter and buffer holds an empty tensor of its dtype on the device, so the module
still reports where and in which precision it runs (``module.dtype``, ``module.device``, the priors'
``module_dtype``); its config and structure are untouched.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

__all__ = ["OffloadedCall", "offload_prior_networks", "parse_offload", "OFFLOADABLE"]

#: priors whose networks may be offloaded (``run.offload_priors`` names)
OFFLOADABLE = ("sd", "zero123", "video", "controlnet")


def parse_prior_names(
    value: str, allowed: tuple[str, ...], setting: str, all_word: bool = False
) -> tuple[str, ...]:
    """A comma-separated list of prior names (``"zero123, video"`` -> ("zero123", "video"); "" -> ()); with
    ``all_word``, ``"all"`` is every allowed name. Unknown names are a ConfigError naming ``setting``."""
    from animate124.errors import ConfigError

    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if all_word and names == ("all",):
        return allowed
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(
            f"{setting}: unknown prior(s) {', '.join(bad)}",
            hint=f"use {'all, or ' if all_word else ''}names from {', '.join(allowed)}",
        )
    return names


def parse_offload(value: str) -> tuple[str, ...]:
    """``run.offload_priors``: ``"zero123,video"`` -> ("zero123", "video"); "" -> ()."""
    return parse_prior_names(value, OFFLOADABLE, "run.offload_priors")


class OffloadedCall:
    """Call ``module`` with its weights copied in from pinned host memory for the call only."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str | None = None) -> None:
        tensors = list(itertools.chain(module.parameters(), module.buffers()))
        self.module = module
        self.device = torch.device(device) if device is not None else (tensors[0].device if tensors else None)
        pin = self.device is not None and self.device.type == "cuda"
        self._host: list[tuple[torch.Tensor, torch.Tensor]] = []
        for t in tensors:
            h = t.detach().to("cpu", copy=True)
            self._host.append((t, h.pin_memory() if pin else h))
        self.nbytes = sum(h.numel() * h.element_size() for _, h in self._host)
        self.loads = 0
        self._unload()

    def _load(self) -> None:
        for t, h in self._host:
            t.data = h.to(self.device, non_blocking=True)
        self.loads += 1

    def _unload(self) -> None:
        for t, h in self._host:
            t.data = torch.empty(0, dtype=h.dtype, device=self.device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._load()
        try:
            return self.module(*args, **kwargs)
        finally:
            self._unload()  # the caching allocator reuses the blocks once this stream's kernels are done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def offload_prior_networks(prior: Any) -> Any:
    """Wrap the prior's ``unet`` and ``controlnet`` (plain modules, not graphed) in :class:`OffloadedCall`."""
    from animate124.guidance.graphs import NETWORK_ATTRS, eager_module

    for name in NETWORK_ATTRS:
        net = getattr(prior, name, None)
        if net is None or isinstance(net, OffloadedCall):
            continue
        setattr(prior, name, OffloadedCall(eager_module(net)))
    return prior
