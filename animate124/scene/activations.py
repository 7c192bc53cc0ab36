"""Activations with custom backward passes (SPEC 3.1 "Density").

``trunc_exp`` is the density activation of upstream ``activation.py``: the forward pass is ``exp(h)``,
the backward pass uses ``exp(min(h, 15))`` so that a large logit cannot produce an infinite gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

TRUNC_EXP_MAX = 15.0


class _TruncExp(Function):
    """``y = exp(h)``; ``dL/dh = dL/dy * exp(min(h, 15))`` (always computed in float32)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, h: Tensor) -> Tensor:  # type: ignore[override]
        h = h.float()
        ctx.save_for_backward(h)
        return torch.exp(h)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (h,) = ctx.saved_tensors
        return grad * torch.exp(h.clamp(max=TRUNC_EXP_MAX))


def trunc_exp(h: Tensor) -> Tensor:
    """Truncated-gradient exponential, ``[...] -> [...]`` float32 (SPEC 3.1)."""
    return _TruncExp.apply(h)
