"""Exact FLOP counts of the priors' calls and of a textual-inversion step, from the networks' shapes (issue 27).

What is counted: the multiply-adds of every convolution, matrix product and attention (2 FLOPs each), as
``torch.utils.flop_counter.FlopCounterMode`` counts them, on *meta twins* of the networks: the same classes
built from the same configs on the meta device, so nothing is allocated or computed and the count does not
depend on how a network is run (CUDA graphs, ``torch.compile``, channels-last, fp8, fused norms, the blocked
VAE attention: each computes the same products). Attention is counted as its two matrix products forward
(``4·B·H·L·S·D``) and four backward (the math path; flash kernels recompute the scores, which is not counted).
Norms, activations, casts and other elementwise work are not counted: they are memory-bound, and the share of
the card's dense matrix rate is what the count is for.

One guidance call as the stages make it (:func:`call_flops`), :class:`CallFlops`:

* ``denoise``: the UNet forward on the CFG batch ``[uncond ‖ cond]`` (2× the images, or 2× the clips), under
  no_grad; with ControlNet also its forward on the same batch; Zero123 also its camera projection;
* ``encode``: the VAE encoder forward (+ ``quant_conv``) of every image the call encodes;
* ``encode_backward``: its backward to the input images, for the images that get a gradient (weights are
  frozen: input gradients only);
* ``recompute``: with ``run.vae_checkpoint``, the encoder forward run again in backward for those images.

``forward`` (what a stage's prior part times, ``run.profile``) is ``denoise + encode``; ``backward`` (inside the
step's backward) is ``encode_backward + recompute``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

log = logging.getLogger(__name__)

__all__ = ["CallFlops", "call_flops", "count_flops", "invert_step_flops", "meta_twin"]


@dataclass(frozen=True)
class CallFlops:
    """FLOPs of one guidance call by part (module docstring)."""

    denoise: int
    encode: int
    encode_backward: int
    recompute: int

    @property
    def forward(self) -> int:
        return self.denoise + self.encode

    @property
    def backward(self) -> int:
        return self.encode_backward + self.recompute

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def as_dict(self) -> dict[str, int]:
        return {
            "denoise": self.denoise,
            "encode": self.encode,
            "encode_backward": self.encode_backward,
            "recompute": self.recompute,
            "total": self.total,
        }


class _Counter(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s formulas over the operators that run. ``FlopCounterMode`` itself
    also tracks modules through autograd hooks, which fail inside a backward that calls ``autograd.grad``
    (the VAE encoder's recompute, ``common._RecomputedEncoder``); the formulas are the same."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``fn()`` runs (forward and any backward
    it calls), by the formulas of ``torch.utils.flop_counter``."""
    with _Counter() as counter:
        fn()
    return counter.total


def _plain(module: Any) -> Any:
    """The module behind a call wrapper (CUDA graphs, ``torch.compile``, offloading)."""
    from animate124.guidance.graphs import eager_module
    from animate124.guidance.offload import OffloadedCall

    module = eager_module(module)
    return module.module if isinstance(module, OffloadedCall) else module


def meta_twin(module: Any) -> torch.nn.Module:
    """A frozen copy of ``module``'s network on the meta device: rebuilt from its config (diffusers and
    transformers models: no weights are copied, nothing is allocated), else a deep copy moved to meta (small
    modules such as Zero123's projection)."""
    module = _plain(module)
    config = getattr(module, "config", None)
    with torch.device("meta"):
        if config is not None and hasattr(type(module), "from_config"):  # diffusers
            twin = type(module).from_config(config)
        elif config is not None and hasattr(type(module), "config_class"):  # transformers
            twin = type(module)(config)
        else:
            twin = None
    if twin is None:
        twin = copy.deepcopy(module).to("meta")
    return twin.eval().requires_grad_(False)


def _meta(*shape: int, dtype: torch.dtype = torch.float32, grad: bool = False) -> Tensor:
    return torch.empty(shape, device="meta", dtype=dtype, requires_grad=grad)


def _steps(n: int) -> Tensor:
    return torch.zeros(n, device="meta", dtype=torch.long)


def _encoder_flops(
    vae: torch.nn.Module, n: int, grad: int, size: tuple[int, int], checkpoint: bool
) -> tuple[int, int, int]:
    """(forward of n images, backward of ``grad`` of them, recompute of those) for the VAE twin."""
    from animate124.guidance.common import _moments

    def fwd(k: int, with_grad: bool) -> Tensor:
        x = _meta(k, 3, *size, grad=with_grad)
        return _moments(vae, x)

    forward = count_flops(lambda: fwd(n, False)) if n else 0
    if not grad:
        return forward, 0, 0
    moments = fwd(grad, True)
    backward = count_flops(lambda: moments.sum().backward())
    recompute = forward * grad // n if checkpoint else 0
    return forward, backward, recompute


def _context_length(prior: Any) -> int:
    text = getattr(prior, "text", None)
    return int(text.negative(1).shape[-2]) if text is not None else 77


def call_flops(prior: Any, images_shape: tuple[int, ...] | torch.Size) -> CallFlops:
    """FLOPs of one call of ``prior`` (``sd``, ``zero123``, ``video`` or ``controlnet``) on renders shaped
    ``images_shape`` ``[B, T, 3, H, W]`` (the render size does not matter: the prior resizes to its input),
    with its own settings (input size, ControlNet's frame selection, the video's ``vae_grad_frames``,
    ``checkpoint_encoder`` and ``checkpoint_keep_pixels``). Builds meta twins of the networks each time: about a
    second per full-size UNet on a CPU."""
    b, frames = int(images_shape[0]), int(images_shape[1])
    name = prior.name
    unet = meta_twin(prior.unet)
    vae = meta_twin(prior.vae)
    ucfg = unet.config
    dim = int(ucfg.cross_attention_dim)
    ctx = _context_length(prior)
    if name == "video":
        h, w = prior.image_size
        k = prior.vae_grad_frames
        n, grad = b * frames, b * (k if 0 < k < frames else frames)
    elif name == "controlnet":
        h = w = prior.image_size
        n = grad = len(prior.selected_frames(frames))
    elif name in ("sd", "zero123"):
        h = w = prior.image_size
        n = grad = b * frames
    else:
        raise ValueError(f"no FLOP count for prior {name!r}")
    fac = 2 ** (len(prior.vae.config.block_out_channels) - 1)
    lat = (h // fac, w // fac)
    recomputed = prior.recompute_encoder(grad * h * w)  # run.vae_checkpoint, unless static.vae_keep_pixels
    encode, encode_backward, recompute = _encoder_flops(vae, n, grad, (h, w), recomputed)

    if name == "video":
        batch = 2 * b
        x = _meta(batch, int(ucfg.in_channels), frames, *lat)
    else:
        batch = 2 * n
        x = _meta(batch, int(ucfg.in_channels), *lat)
    context = _meta(batch, 1 if name == "zero123" else ctx, dim)

    def denoise() -> None:
        extra: dict[str, Any] = {}
        if name == "zero123":
            proj = meta_twin(prior.projection)
            proj(_meta(n, 1, int(proj.in_features)))
        if name == "controlnet":
            cn = meta_twin(prior.controlnet)
            down, mid = cn(
                _meta(batch, int(cn.config.in_channels), *lat),
                _steps(batch),
                encoder_hidden_states=context,
                controlnet_cond=_meta(batch, 3, h, w),
                return_dict=False,
            )
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        unet(x, _steps(batch), encoder_hidden_states=context, **extra)

    return CallFlops(
        denoise=count_flops(denoise), encode=encode, encode_backward=encode_backward, recompute=recompute
    )


def invert_step_flops(components: Any, batch_size: int, resolution: int) -> dict[str, int]:
    """FLOPs of one textual-inversion step (SPEC 2): the VAE encoder forward of ``batch_size`` images at
    ``resolution`` (no grad), the text encoder forward and its backward to the token embeddings (the learned
    vector enters there), the UNet forward and its backward to the text context (frozen weights: input
    gradients only). Returns ``{"vae", "text", "unet", "total"}``."""
    vae = meta_twin(components.vae)
    unet = meta_twin(components.unet)
    text = meta_twin(components.text_encoder)
    fac = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = resolution // fac
    length = int(getattr(components.tokenizer, "model_max_length", 77))
    vae_f, _, _ = _encoder_flops(vae, batch_size, 0, (resolution, resolution), False)
    vec = _meta(int(text.config.hidden_size), grad=True)
    text.get_input_embeddings().register_forward_hook(lambda _m, _a, out: out + vec)

    def text_step() -> None:
        ids = torch.zeros(batch_size, length, dtype=torch.long, device="meta")
        text(ids)[0].sum().backward()

    def unet_step() -> None:
        ehs = _meta(batch_size, length, int(unet.config.cross_attention_dim), grad=True)
        x = _meta(batch_size, int(unet.config.in_channels), lat, lat)
        unet(x, _steps(batch_size), encoder_hidden_states=ehs).sample.sum().backward()

    out = {"vae": vae_f, "text": count_flops(text_step), "unet": count_flops(unet_step)}
    out["total"] = sum(out.values())
    return out
