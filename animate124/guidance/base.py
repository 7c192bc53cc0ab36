"""The base the four diffusion priors share (SD 1.5, Zero123-XL, video, ControlNet-tile): one place for what
every score-distillation call does, so that a change to it (a layout, a precision, a fused call) lands once.

Every prior is a :class:`DiffusionPrior`: frozen networks (a VAE whose encoder runs with grad, a UNet and for
ControlNet a second network run under ``torch.no_grad``), a DDIM schedule, and the CFG settings. A call
(:meth:`DiffusionPrior.__call__`) checks the images against the views and hands them to the prior's
:meth:`~DiffusionPrior.guide`, which uses the shared pieces:

* :meth:`~DiffusionPrior.encode` — ``z = s·E(2x − 1)`` with grad, with the prior's posterior mode and
  ``run.vae_checkpoint`` recompute (``common.encode_latents``);
* :meth:`~DiffusionPrior.draw` — ``t`` and ``ε`` from the generator unless injected;
* :meth:`~DiffusionPrior.guided_noise` — one denoiser call on the CFG batch ``[uncond ‖ cond]`` and
  ``ε̂ = cfg(ε_u, ε_c, s)`` in fp32 (SPEC 3.7 step 4);
* :meth:`TextPrior.text_sds` — the text-conditioned SDS of SD and the video prior (SPEC 3.7 steps 3–6).

The formulas stay in ``sds.py``; the call interface and its types in ``interface.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from animate124.guidance import sds
from animate124.guidance.common import (
    alphas_cumprod_of,
    check_images,
    encode_latents,
    freeze,
    maybe_enable_xformers,
    module_dtype,
    num_train_timesteps_of,
    resize,
    timesteps_and_noise,
    to_device,
)
from animate124.guidance.interface import GuidanceOutput, Views

if TYPE_CHECKING:
    from animate124.guidance.flops import CallFlops
    from animate124.guidance.prompts import PromptSet

log = logging.getLogger(__name__)

__all__ = ["DiffusionPrior", "TextPrior", "Gen", "Noise", "Steps", "native_half_precision", "use_native_fp16"]

#: the types of a call's random draws: the generator, an injected ε and injected timesteps
Gen = torch.Generator | None
Noise = torch.Tensor | None
Steps = torch.Tensor | int | None


def native_half_precision(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` for a call of a network whose weights are ``dtype``, when that is fp16 or bf16
    (``run.native_fp16``); else nothing.

    Under fp16 autocast an fp16 UNet runs its group norms, layer norms and SiLUs on fp32 copies: autocast casts
    each norm's fp16 input to fp32, the norm writes fp32, the SiLU reads and writes fp32, and the next
    convolution casts back to fp16. Natively (autocast off, as upstream calls its fp16 UNets) the norms read fp16
    and write fp16, with their statistics still accumulated in fp32 by PyTorch's kernels; the matrix products
    and convolutions are fp16 either way. So it is the same function up to fp16 rounding of the norms' outputs
    (one rounding before the SiLU instead of after it), with fewer memory passes and, where gradients flow
    (the textual inversion), fp16 instead of fp32 activations kept for backward. Checked by the gradient
    agreement rule (issue 27; ``benchmarks/guidance_variants.py`` ``native``, ``bench_invert.py --native-fp16``).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, enabled=False)


def use_native_fp16(prior: Any, on: bool = True) -> None:
    """Run ``prior``'s UNet (and ControlNet) natively in half precision, outside autocast (``run.native_fp16``)."""
    prior.native_fp16 = bool(on)


class DiffusionPrior:
    """What every prior holds and does (module docstring). Subclasses set ``name`` and ``loss_key`` and
    implement :meth:`guide`.

    Args:
        vae / unet / scheduler: the frozen networks and the noise schedule (``alphas_cumprod``).
        frozen: the prior's other networks (text or image encoders, a projection, a ControlNet), frozen too;
            a ControlNet is set as ``self.controlnet`` before this runs (it gets xformers as the UNet does).
        guidance_scale / cfg_mode / t_range / weight: CFG scale s, its form (``"upstream"`` or
            ``"standard"``), the timestep fraction range and λ.
        latent_mode: ``"sample"`` (upstream) or ``"mode"`` of the VAE posterior.
        use_xformers: xformers attention in the VAE, UNet (and ControlNet) if installed.
        checkpoint_encoder / checkpoint_pixels: recompute the VAE encoder in backward (``run.vae_checkpoint``).
        checkpoint_keep_pixels: a call whose images with grad have at most this many pixels in all keeps the
            encoder's activations instead (``static.vae_keep_pixels``, ``dynamic.vae_keep_pixels``; 0 = always
            recompute; the video prior keeps its first frames up to this many pixels and recomputes the rest,
            ``VideoSDS.encode_clip``). Recomputing a
            batch that fits one recompute chunk frees nothing at the backward's peak (the chunk's activations
            come back there) and costs one more encoder pass (BENCHMARKS.md §8.3: SD's 512² image, 2.5 GiB
            either way, 27 ms plain against 43 ms recomputed on an H200); keeping them holds them from the
            forward to the backward instead, for the same gradients.
    """

    name = ""
    loss_key = ""

    def __init__(
        self,
        *,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        scheduler: Any,
        frozen: Iterable[torch.nn.Module | None] = (),
        guidance_scale: float,
        cfg_mode: str,
        t_range: tuple[float, float],
        weight: float,
        latent_mode: str,
        use_xformers: bool,
        checkpoint_encoder: bool,
        checkpoint_pixels: int,
        checkpoint_keep_pixels: int,
    ) -> None:
        frozen = tuple(frozen)
        self.vae = vae
        self.unet = unet
        self.scheduler = scheduler
        freeze(self.vae, self.unet, *frozen)
        maybe_enable_xformers([self.unet, self.vae, getattr(self, "controlnet", None)], use_xformers)
        self.checkpoint_encoder = bool(checkpoint_encoder)
        self.checkpoint_pixels = int(checkpoint_pixels)
        self.checkpoint_keep_pixels = int(checkpoint_keep_pixels)
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self.t_range = (float(t_range[0]), float(t_range[1]))
        self.weight = float(weight)
        self.latent_sample = latent_mode == "sample"
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler)
        self.num_train_timesteps = num_train_timesteps_of(self.scheduler)
        self._call_flops: dict[tuple[int, int], CallFlops | None] = {}
        #: run the UNet / ControlNet natively in their half precision, outside autocast (``run.native_fp16``)
        self.native_fp16 = False

    def network_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context of a UNet / ControlNet call on ``device``: autocast off there where ``native_fp16`` is
        set and the UNet's weights are fp16/bf16 (:func:`native_half_precision`), else as the caller has it."""
        if not self.native_fp16:
            return contextlib.nullcontext()
        return native_half_precision(module_dtype(self.unet), device)

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        images: torch.Tensor,
        views: Views,
        *,
        step: int,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> GuidanceOutput:
        """The prior's loss on ``images [B, T, 3, H, W]`` in [0, 1] seen from ``views`` (``step`` unused).

        ``noise`` and ``t`` may be injected (their shapes: the prior's :meth:`guide`); every random draw
        comes from ``generator``. Returns ``losses[loss_key]`` (fp32, differentiable w.r.t. the images).
        """
        self.check_call(images, views)
        return self.guide(images, views, generator=generator, noise=noise, t=t)

    def check_call(self, images: torch.Tensor, views: Views) -> tuple[int, int]:
        """``(B, T)`` of a valid call (``[B, T, 3, H, W]`` images matching ``views``); InputError otherwise."""
        b, tt = check_images(images)
        views.check(images)
        return b, tt

    def guide(
        self, images: Tensor, views: Views, *, generator: Gen, noise: Noise, t: Steps
    ) -> GuidanceOutput:
        """The prior's own part of a call, on checked images."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared pieces
    def vae_input(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[..., 3, H, W]`` images -> ``[N, 3, size]`` in the VAE's dtype (bilinear, SPEC 3.7-1)."""
        x = images.reshape(-1, *images.shape[-3:])
        return resize(x.to(module_dtype(self.vae)), size)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``z = s·E(2x − 1)`` ``[N, 4, h, w]`` with grad, the posterior sampled (or its mode) from
        ``generator``, the encoder recomputed in backward with ``checkpoint_encoder``."""
        return encode_latents(
            self.vae,
            x,
            sample=self.latent_sample,
            generator=generator,
            checkpoint=self.recompute_encoder(x.shape[0] * x.shape[-2] * x.shape[-1]),
            checkpoint_pixels=self.checkpoint_pixels,
        )

    def recompute_encoder(self, pixels: int) -> bool:
        """Whether a call encoding ``pixels`` pixels with grad recomputes the encoder in backward:
        ``checkpoint_encoder``, unless they fit ``checkpoint_keep_pixels``."""
        return self.checkpoint_encoder and pixels > self.checkpoint_keep_pixels

    def draw(
        self,
        z: torch.Tensor,
        t: torch.Tensor | int | Iterable[int] | None,
        noise: torch.Tensor | None,
        n: int,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t [n], ε like z)`` from ``generator`` (t first, then ε) unless injected."""
        return timesteps_and_noise(z, t, noise, n, self.t_range, self.num_train_timesteps, generator)

    def guided_noise(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **unet_kwargs: Any
    ) -> torch.Tensor:
        """One UNet call on the CFG batch ``x = [x_u ‖ x_c]`` (timesteps ``t``, cross-attention ``context``,
        both ``[uncond ‖ cond]``) and the guided prediction ``ε̂ = cfg(ε_u, ε_c, s, mode)`` in fp32. The
        caller runs it under ``torch.no_grad`` with its inputs in the UNet's dtype."""
        with self.network_precision(x.device):
            eps = self.unet(x, t, encoder_hidden_states=context, **unet_kwargs).sample
        eps_u, eps_c = eps.chunk(2)
        return sds.cfg(eps_u.float(), eps_c.float(), self.guidance_scale, self.cfg_mode)

    def call_flops(self, images_shape: tuple[int, ...] | torch.Size) -> CallFlops | None:
        """The exact FLOPs of one call on renders shaped ``[B, T, ...]`` (``guidance/flops.py``), counted once
        per ``(B, T)`` (the render size does not matter); None, with a warning, if they cannot be counted."""
        key = (int(images_shape[0]), int(images_shape[1]))
        if key not in self._call_flops:
            from animate124.guidance.flops import call_flops

            try:
                self._call_flops[key] = call_flops(self, images_shape)
            except Exception as exc:  # noqa: BLE001 - a count is a diagnostic: never fail a stage over it
                log.warning("%s: no FLOP count (%s: %s)", self.name, type(exc).__name__, exc)
                self._call_flops[key] = None
        return self._call_flops[key]


class TextPrior(DiffusionPrior):
    """A text-conditioned prior (SD, video, ControlNet): its prompts live in ``self.text`` (a
    :class:`~animate124.guidance.prompts.PromptSet`, encoded and cached there)."""

    text: PromptSet

    @property
    def prompt(self) -> str:
        return self.text.prompt

    def set_prompt(self, prompt: str) -> None:
        """Encode and cache the prompt (and its view variants where used); InputError if too long or if it
        holds ``<token>`` without a learned token."""
        self.text.set_prompt(prompt)

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Load a textual-inversion vector; ``<token>`` in prompts then means ``token``."""
        self.text.add_learned_token(token, vector)

    def text_sds(
        self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, neg: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text-conditioned SDS (SPEC 3.7 steps 3-6) on image latents ``[B, 4, h, w]`` or video latents
        ``[B, 4, F, h, w]``.

        ``z_t = add_noise(sg(z), ε, t)``; one UNet call on ``[z_t, z_t]`` with ``[neg, pos]`` context;
        ``ε̃ = cfg(ε_u, ε_c, s, mode)``; ``g = λ·(1 − ᾱ_t)·(ε̃ − ε)``; returns
        ``(0.5·‖z − sg(z − g)‖² / B, g, w)`` so that ∂loss/∂z = g / B (the surrogate of SPEC 11.1).
        """
        udtype = module_dtype(self.unet)
        with torch.no_grad():
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t).to(udtype)
            t_dev = to_device(t, z.device)
            eps_hat = self.guided_noise(
                torch.cat([zt, zt]), torch.cat([t_dev, t_dev]), torch.cat([neg, pos]).to(udtype)
            )
        w = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t)
        g = sds.sds_gradient(eps_hat, noise, w, self.weight)
        return sds.sds_surrogate_loss(z, g), g, w

    def text_sds_output(
        self, z: Tensor, noise: Tensor, t: Tensor, neg: Tensor, pos: Tensor, **extra: float
    ) -> GuidanceOutput:
        """:meth:`text_sds` as a :class:`GuidanceOutput`; the diagnostics are the mean t, the mean weight
        w(t), ‖g‖ (a 0-dim device tensor: reading it would stall the GPU queue every step, so the log converts
        it when it writes) and ``extra``."""
        loss, g, w = self.text_sds(z, noise, t, neg, pos)
        diagnostics = {
            "t": float(t.float().mean()),
            "w": float(w.mean()),
            "grad_norm": g.detach().norm(),
            **extra,
        }
        return GuidanceOutput(losses={self.loss_key: loss}, diagnostics=diagnostics)
