"""fp8 matrix products in the priors' UNet and ControlNet (``run.prior_precision=fp8``; issue 27, opt-in).

Lower precision than the stages' own (fp16): it does not compute the same function, so it is never on in a
preset and its runs are a separate record. What changes: the linear layers of the UNet's and ControlNet's feed-forward
blocks (:func:`swap_to_fp8` says why only those by default; every ``nn.Linear``, and every pointwise 1×1
``nn.Conv2d``, on request) whose two dimensions are multiples of 16 (what the fp8 matrix cores take) run as
``torch._scaled_mm`` on float8 e4m3 operands:

* the weight ``W [N, K]`` is quantized once, per output row: ``s_w = max|W_n·| / 448``, ``W8 = W / s_w``;
* the activation ``X [M, K]`` per call, per row (token or pixel): ``s_x = max|X_m·| / 448``, ``X8 = X / s_x``;
* ``Y = (X8 · W8ᵀ) ⊙ (s_x s_wᵀ)`` accumulated in fp32, returned in bf16 (what row-wise scaling gives on every
  fp8 GPU), cast to the input's dtype, plus the bias in its own precision.

The 3×3 convolutions, norms, attention's score products and the VAE keep their precision; the gradient to the
render goes through the VAE only, so nothing runs backward in fp8. e4m3 keeps 3 mantissa bits (a relative
rounding of 2⁻⁴ per element), which row-wise scales keep from overflowing or flushing to zero; the SDS gradient
agreement (``guidance/agreement.py``) is the measure, with a target cosine of 0.98 (issue 27).

Needs a CUDA GPU of compute capability 8.9 or more (Ada, Hopper and later): :func:`use_fp8` checks and says so.
The module swap itself (:func:`swap_to_fp8`) also runs on a CPU, where PyTorch has a reference ``_scaled_mm``,
so the tests check the arithmetic there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from animate124.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "FP8_MAX",
    "FP8Linear",
    "FP8Pointwise",
    "check_fp8_device",
    "quantize_rows",
    "swap_to_fp8",
    "use_fp8",
]

#: the largest finite float8 e4m3fn value
FP8_MAX = 448.0
#: matrix dimensions the fp8 kernels take
FP8_ALIGN = 16


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``[M, K]`` -> (float8 e4m3fn ``[M, K]``, fp32 scales ``[M, 1]``) with ``x ≈ x8 · s`` row by row; an
    all-zero row gets scale 1 (its fp8 values are zeros)."""
    amax = x.detach().abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    x8 = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return x8, scale


class _FP8Matmul(torch.nn.Module):
    """``y = x Wᵀ (+ b)`` over the last dimension of ``x``, the product in fp8 (module docstring)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        w8, ws = quantize_rows(weight.detach().reshape(weight.shape[0], -1))
        self.out_features, self.in_features = int(w8.shape[0]), int(w8.shape[1])
        self.register_buffer("weight_fp8", w8)
        self.register_buffer("weight_scale", ws.reshape(1, -1).contiguous())  # [1, N]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def matmul(self, x: Tensor) -> Tensor:
        shape = x.shape
        x8, xs = quantize_rows(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(
            x8, self.weight_fp8.t(), scale_a=xs, scale_b=self.weight_scale, out_dtype=torch.bfloat16
        )
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)


class FP8Linear(_FP8Matmul):
    """An ``nn.Linear`` whose product runs in fp8 (built from the linear layer; its weight is not kept)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.matmul(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8"


class FP8Pointwise(_FP8Matmul):
    """A pointwise ``nn.Conv2d`` (1×1, stride 1, no padding, one group) as an fp8 product over the channels.
    The output keeps the input's memory layout (channels-last input: no copy for the product)."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__(conv.weight, conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.matmul(x.permute(0, 2, 3, 1))  # [N, H, W, C]
        nhwc = x.is_contiguous(memory_format=torch.channels_last)
        y = y.permute(0, 3, 1, 2)
        return y if nhwc else y.contiguous()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, kernel_size=(1, 1), fp8"


def _fp8_able(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        n, k = m.out_features, m.in_features
    elif isinstance(m, torch.nn.Conv2d):
        pointwise = (
            m.kernel_size == (1, 1)
            and m.stride == (1, 1)
            and m.dilation == (1, 1)
            and m.groups == 1
            and not isinstance(m.padding, str)
            and tuple(m.padding) == (0, 0)
        )
        if not pointwise:
            return False
        n, k = m.out_channels, m.in_channels
    else:
        return False
    return n % FP8_ALIGN == 0 and k % FP8_ALIGN == 0


#: what :func:`swap_to_fp8` replaces: the transformer blocks' feed-forward layers (the default), every linear
#: layer, or every linear layer and pointwise convolution
FP8_SCOPES = ("ff", "linear", "all")


def _regions(module: torch.nn.Module, scope: str) -> list[torch.nn.Module]:
    if scope == "ff":  # diffusers' FeedForward (GEGLU projection and output): most of the linear FLOPs
        return [m for m in module.modules() if type(m).__name__ == "FeedForward"]
    return [module]


def swap_to_fp8(module: torch.nn.Module, scope: str = "ff") -> int:
    """Replace, in place, the layers of ``module`` in ``scope`` (:data:`FP8_SCOPES`) whose dimensions are
    multiples of 16 by their fp8 form (:class:`FP8Linear`, :class:`FP8Pointwise`); everything else is left as it
    is. Returns how many layers were replaced.

    Why the default is the feed-forward layers: the SDS gradient is ``λ(ε_c + s(ε_c − ε_u) − ε)``, and with the
    paper's CFG scale s = 100 (SD, video) the rounding of each branch is amplified a hundredfold in the difference.
    On the tiny priors (``tests/test_guidance_agreement.py``) every linear and pointwise layer in fp8 gave SD a
    gradient cosine of 0.71 and the video prior 0.43; the projections into and out of the transformer blocks
    and the residual shortcuts are the sensitive ones, the feed-forward layers alone gave 0.986 and 0.956."""
    if scope not in FP8_SCOPES:
        raise ValueError(f"unknown fp8 scope {scope!r}: one of {', '.join(FP8_SCOPES)}")
    done = 0
    for region in _regions(module, scope):
        for parent in list(region.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _FP8Matmul) or not _fp8_able(child):
                    continue
                if scope != "all" and not isinstance(child, torch.nn.Linear):
                    continue
                fp8 = FP8Linear(child) if isinstance(child, torch.nn.Linear) else FP8Pointwise(child)
                setattr(parent, name, fp8)
                done += 1
    return done


def check_fp8_device(device: torch.device) -> None:
    """ConfigError unless ``device`` is a CUDA GPU of compute capability 8.9 or more."""
    ok = device.type == "cuda" and torch.cuda.is_available()
    if ok:
        ok = torch.cuda.get_device_capability(device) >= (8, 9)
    if not ok:
        raise ConfigError(
            f"run.prior_precision=fp8 needs a CUDA GPU with compute capability >= 8.9 (this run is on {device})",
            hint="use run.prior_precision=fp16 (the default)",
        )


def use_fp8(prior: Any) -> int:
    """The prior's UNet and ControlNet with fp8 products (:func:`swap_to_fp8`, their plain modules); checks the
    device first. Returns the number of layers replaced. Call it before CUDA graphs or compiling wrap them."""
    from animate124.guidance.common import module_device
    from animate124.guidance.graphs import eager_module

    nets = [
        eager_module(n)
        for n in (getattr(prior, "unet", None), getattr(prior, "controlnet", None))
        if n is not None
    ]
    check_fp8_device(module_device(nets[0]))
    done = sum(swap_to_fp8(n) for n in nets)
    log.info("%s: %d layers in fp8 (run.prior_precision=fp8)", type(prior).__name__, done)
    return done
