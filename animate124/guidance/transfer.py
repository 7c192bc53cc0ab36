"""Copying a tensor to a device without making the host wait (the priors' small host-to-GPU copies and
``run.devices``' GPU-to-GPU copies, ``guidance/placement.py``)."""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` on ``device`` (and in ``dtype``) without making the host wait for a GPU's queue: a CPU tensor
    goes through pinned memory, a tensor on another GPU is copied asynchronously (the copy is ordered after
    the work that made it). A plain ``.to`` copies from pageable memory and waits for the destination's
    queue, which would keep a prior on another GPU from starting while this one computes. Same values."""
    device = torch.device(device)
    if x.device != device and device.type == "cuda":
        if x.device.type == "cpu":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
    else:
        x = x.to(device)
    return x if dtype is None else x.to(dtype)
