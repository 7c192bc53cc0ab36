"""Stable Diffusion 1.5 SDS guidance (SPEC 3.7; static stage, SPEC 4).

Per call, for images ``[B, T, 3, H, W]`` in [0, 1] (T > 1 is treated as B·T independent images):

1. bilinear resize to ``image_size`` (512 for SD 1.5);
2. ``z = 0.18215 · VAE.encode(2x − 1).sample()`` WITH grad (``latent_mode="mode"`` uses the mean);
3. ``t ~ U{⌊1000·lo⌋ … ⌊1000·hi⌋}`` per image, ``ε ~ N(0, I)``, ``z_t = √ᾱ z + √(1−ᾱ) ε``;
4. UNet on ``[z_t, z_t]`` with text ``[neg, pos]`` under no_grad, CFG (``"upstream"``: ε_c + s(ε_c − ε_u));
5. ``g = λ (1 − ᾱ_t)(ε̂ − ε)``, injected by the surrogate loss ``½‖z − sg(z − g)‖² / N``.

Text (SPEC 3.7-7): with ``view_dependent`` the positive is interpolated between "{prompt}, front/side/back
view" by each frame's absolute azimuth (reference azimuth + ``views.dazimuth``); the negative is the plain
negative for every view. Random draws, in this order, from ``generator``: the posterior sample, t, ε.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from animate124.guidance.base import Gen, Noise, Steps, TextPrior
from animate124.guidance.common import vae_scale_factor
from animate124.guidance.interface import GuidanceOutput, Views
from animate124.guidance.prompts import PromptSet

if TYPE_CHECKING:
    from animate124.models.loaders import SDComponents

log = logging.getLogger(__name__)


class StableDiffusionGuidance(TextPrior):
    """SD 1.5 score distillation on rendered images (SPEC 3.7); implements ``TextGuidance``.

    Args:
        components: SD 1.5 ``vae, unet, text_encoder, tokenizer, scheduler``.
        prompt: the positive text (the stage appends ", 8k, good quality"); see :meth:`set_prompt`.
        negative_prompt: the negative text ("" upstream); never view-decorated (SPEC 3.7-7).
        guidance_scale: CFG scale s (config ``static.sd_guidance_scale``, 100 with the "+1" form).
        cfg_mode: ``"upstream"`` (ε_c + s(ε_c − ε_u), SPEC 11.3) or ``"standard"`` (``static.cfg_mode``).
        t_range: fraction range of the timestep draw (``static.sd_t_range``, 0.2–0.6).
        weight: λ (``static.sd_weight``).
        view_dependent: interpolate front/side/back prompt embeddings by azimuth (SPEC 3.7-7; the
            static stage always does).
        image_size: SD input size; None = ``unet.config.sample_size × VAE factor`` (512 for SD 1.5).
        latent_mode: ``"sample"`` (upstream) or ``"mode"`` of the VAE posterior.
        use_xformers: xformers attention if installed (default PyTorch SDPA).
        checkpoint_encoder: recompute the VAE encoder in backward image by image instead of keeping
            its activations (``run.vae_checkpoint``; same gradients, less memory).
        learned_token: ``(token, vector [D])`` of a textual inversion, loaded before the prompt is
            encoded, so that the prompt may contain ``<token>``.
    """

    name = "sd"
    loss_key = "sds"

    def __init__(
        self,
        components: SDComponents,
        *,
        prompt: str,
        negative_prompt: str,
        guidance_scale: float,
        cfg_mode: str,
        t_range: tuple[float, float],
        weight: float,
        view_dependent: bool,
        image_size: int | None = None,
        latent_mode: str = "sample",
        use_xformers: bool = False,
        checkpoint_encoder: bool,
        checkpoint_pixels: int,
        checkpoint_keep_pixels: int,
        learned_token: tuple[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(
            vae=components.vae,
            unet=components.unet,
            scheduler=components.scheduler,
            frozen=(components.text_encoder,),
            guidance_scale=guidance_scale,
            cfg_mode=cfg_mode,
            t_range=t_range,
            weight=weight,
            latent_mode=latent_mode,
            use_xformers=use_xformers,
            checkpoint_encoder=checkpoint_encoder,
            checkpoint_pixels=checkpoint_pixels,
            checkpoint_keep_pixels=checkpoint_keep_pixels,
        )
        self.image_size = int(image_size or self.unet.config.sample_size * vae_scale_factor(self.vae))
        self.view_dependent = bool(view_dependent)
        self.text = PromptSet(
            components.tokenizer,
            components.text_encoder,
            prompt=prompt,
            negative_prompt=negative_prompt,
            view_text=self.view_dependent,
            learned_token=learned_token,
        )

    def text_embeddings(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neg, pos)`` ``[B·T, 77, D]``: the plain negative, the positive per absolute azimuth."""
        n = views.batch * views.frames
        az = views.azimuth.reshape(n) if self.view_dependent else None
        return self.text.negative(n), self.text.positive(n, az)

    def guide(
        self, images: Tensor, views: Views, *, generator: Gen, noise: Noise, t: Steps
    ) -> GuidanceOutput:
        """SDS on ``images [B, T, 3, H, W]``: ``noise`` ``[B·T, 4, h, w]`` and ``t`` (int or ``[B·T]``) may be
        injected. Returns ``losses["sds"]`` (fp32 scalar, ∂/∂z = g/(B·T)) and diagnostics (t, w, |g|)."""
        n = views.batch * views.frames
        z = self.encode(self.vae_input(images, (self.image_size,) * 2), generator)
        t, noise = self.draw(z, t, noise, n, generator)
        return self.text_sds_output(z, noise, t, *self.text_embeddings(views))
