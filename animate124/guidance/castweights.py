"""The priors' VAE encoders keep their convolution and linear weights also in the autocast dtype (issue 27).

The stages keep the VAEs in fp32 and run them under fp16 autocast (``models/loaders.py``'s VAE dtype policy).
Under autocast a convolution or linear layer casts every fp32 argument to fp16 when it runs, and autocast's
weight-cast cache keeps a cast only for a leaf tensor that requires grad (``cached_cast`` in ATen's
``autocast_mode.cpp``; the cache is also emptied whenever the outermost autocast context exits). The priors'
VAEs are frozen, so every convolution and linear layer of an encoder casts its weight and bias on every call: in
the SD-architecture encoders of all four priors that is 64 casts of 34.1 M parameters (130 MiB of fp32 read,
65 MiB of fp16 written) per encoder pass, in the forward and again in the ``run.vae_checkpoint`` recompute.

:func:`use_cast_encoder_weights` swaps the encoder's ``nn.Conv2d`` / ``nn.Linear`` layers (and ``quant_conv``)
for :class:`CastConv2d` / :class:`CastLinear`, which share the layer's parameters and, under autocast, hand the
operation the copy autocast would have made, kept from the last call: ``weight.to(dtype)`` (same values, same
strides), remade when the weight changes (``.to()``, a channels-last ``.data`` swap, an in-place copy: its
storage or version counter moves) or the autocast dtype does. Autocast passes an argument that is already in its
dtype through untouched, so the convolution runs the same kernel on the same values: the same function bit for
bit, forward, recompute and the backward to the input (the weights get no gradient either way), wherever the plain
path repeats itself bit for bit (cuDNN's deterministic algorithms on the GPU). The group norms
are not touched: their parameters stay fp32 and the norm computes as autocast has it (fp32 on CUDA; the fused
norms of ``groupnorm.py`` take their fp32 parameters directly). Memory: the fp16 copy, half the encoder's fp32
conv/linear weights (65 MiB per SD VAE), made on the first call under autocast. Outside autocast, with weights
that need gradients, or with weights already in the autocast dtype (a VAE loaded in fp16) a layer runs as the
plain one. The decoder is never touched: score distillation only encodes.

Config: ``run.vae_cast_weights`` (off until a GPU measurement shows it pays); the stages apply it in ``stages/build.py`` (``_finish_prior``, all four
priors) and in the invert stage (the textual inversion's VAE forward runs under the trainer's autocast). Tests:
``tests/test_guidance_castweights.py`` (CPU autocast, bf16 and fp16: encoder output, latents and the SDS
gradient on the render through each prior, bit-identical to the plain path; the fused norms under Triton's
interpreter).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CastConv2d", "CastLinear", "cast_weight_bytes", "use_cast_encoder_weights"]


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts convolutions and linear layers to on ``device_type`` (fp16 on CUDA by
    default, bf16 on the CPU)."""
    return torch.get_autocast_dtype(device_type)


def _autocast_casts(t: Tensor | None, dtype: torch.dtype) -> bool:
    """Whether autocast casts ``t``, an argument of a low-precision op: a floating tensor other than double and
    ``dtype`` becomes ``t.to(dtype)``; anything else passes unchanged (ATen's ``cached_cast``)."""
    return t is not None and t.is_floating_point() and t.dtype not in (dtype, torch.float64)


def _mark(t: Tensor | None) -> tuple | None:
    """Where ``t``'s values live and whether they changed in place: storage, version counter, layout."""
    if t is None:
        return None
    return (t.device, t.dtype, t.data_ptr(), t._version, t.stride())


class _CastWeights(nn.Module):
    """The shared part of :class:`CastConv2d` and :class:`CastLinear` (the first base of a layer with ``weight``
    and ``bias``): the autocast-dtype copy and when to use it."""

    weight: Tensor
    bias: Tensor | None

    def _init_cast(self, layer: nn.Module) -> None:
        self.weight = layer.weight
        self.bias = layer.bias
        self.register_buffer("weight_cast", None, persistent=False)
        self.register_buffer("bias_cast", None, persistent=False)
        self._cast_key: tuple | None = None
        self.train(layer.training)

    def cast_weights(self) -> tuple[Tensor, Tensor | None]:
        """``(weight, bias)`` for the op: the autocast-dtype copy under autocast when the parameters are
        frozen and would be cast, else the parameters themselves."""
        w, b = self.weight, self.bias
        dev = w.device.type
        if not torch.is_autocast_enabled(dev) or w.requires_grad or (b is not None and b.requires_grad):
            return w, b
        if w.is_inference() or (b is not None and b.is_inference()):
            return w, b  # no version counter to tell a change by
        dtype = autocast_dtype(dev)
        if not (_autocast_casts(w, dtype) or _autocast_casts(b, dtype)):
            return w, b  # nothing to cast (weights already in the autocast dtype, or double)
        key = (dtype, _mark(w), _mark(b))
        if key != self._cast_key:
            self.weight_cast = self.bias_cast = None  # the old copy goes before the new one is made
            with torch.inference_mode(False), torch.no_grad():
                self.weight_cast = w.to(dtype) if _autocast_casts(w, dtype) else None
                self.bias_cast = b.to(dtype) if b is not None and _autocast_casts(b, dtype) else None
            self._cast_key = key
        wc, bc = self.weight_cast, self.bias_cast
        return (w if wc is None else wc), (b if bc is None else bc)


class CastConv2d(_CastWeights, nn.Conv2d):
    """An ``nn.Conv2d`` (sharing the given layer's parameters) that, under autocast, convolves with its
    weights' autocast-dtype copy (module docstring)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        nn.Conv2d.__init__(
            self,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",  # placeholders, replaced by the layer's own parameters
        )
        self._init_cast(conv)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.cast_weights()
        return self._conv_forward(x, w, b)


class CastLinear(_CastWeights, nn.Linear):
    """An ``nn.Linear`` (sharing the given layer's parameters) that, under autocast, multiplies with its
    weights' autocast-dtype copy (module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Linear.__init__(
            self, linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
        )
        self._init_cast(linear)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.cast_weights()
        return F.linear(x, w, b)


_CASTS: dict[type, type] = {nn.Conv2d: CastConv2d, nn.Linear: CastLinear}


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _encoder_parts(vae: Any) -> list[nn.Module]:
    """The modules ``vae.encode`` runs: the encoder and ``quant_conv`` (when the VAE has one)."""
    parts = [getattr(vae, "encoder", None), getattr(vae, "quant_conv", None)]
    return [p for p in parts if isinstance(p, nn.Module)]


def _swap(parent: nn.Module, name: str, child: nn.Module) -> int:
    cls = _CASTS.get(type(child))
    if cls is None or _has_hooks(child):
        return 0
    setattr(parent, name, cls(child))
    return 1


def use_cast_encoder_weights(vae: Any) -> int:
    """Swap the plain ``nn.Conv2d`` / ``nn.Linear`` layers of ``vae.encoder`` and ``vae.quant_conv`` for
    :class:`CastConv2d` / :class:`CastLinear` (module docstring); returns how many (0 for a VAE without an
    encoder, or one already done). Layers of other classes, and layers with hooks, are left as they are."""
    done = 0
    enc = getattr(vae, "encoder", None)
    if isinstance(enc, nn.Module):
        for parent in list(enc.modules()):
            for name, child in list(parent.named_children()):
                done += _swap(parent, name, child)
    quant = getattr(vae, "quant_conv", None)
    if isinstance(quant, nn.Module):
        done += _swap(vae, "quant_conv", quant)
    return done


def cast_weight_bytes(vae: Any) -> int:
    """Bytes held by the autocast-dtype copies of ``vae``'s encoder (0 before the first call under autocast)."""
    total = 0
    for part in _encoder_parts(vae):
        for m in part.modules():
            if isinstance(m, _CastWeights):
                total += sum(
                    t.numel() * t.element_size() for t in (m.weight_cast, m.bias_cast) if t is not None
                )
    return total
