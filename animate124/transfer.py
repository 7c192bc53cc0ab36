"""Copying a tensor to a device without making the host wait: the small host-to-GPU copies of a training
step (its random draws on the system's CPU generator, cameras, times) and ``run.devices``' GPU-to-GPU copies
(``guidance/placement.py``).

A plain ``.to("cuda")`` of a CPU tensor copies from pageable memory and then waits until the GPU's queue has
run dry (PyTorch synchronises the stream after such a copy). Inside a step that wait empties the queue the
host has built ahead of the GPU, so the launches that follow run with the GPU idle (issue 26: the time TV's
random points, copied that way, sat right before the step's most launch-bound part, BENCHMARKS.md §15.17)."""

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
