"""Stable Diffusion 1.5 SDS guidance (SPEC 3.7; static stage, SPEC 4).

Per call, for images ``[B, T, 3, H, W]`` in [0, 1] (T > 1 is treated as B·T independent images):

1. bilinear resize to ``image_size`` (512 for SD 1.5);
2. ``z = 0.18215 · VAE.encode(2x − 1).sample()`` WITH grad (``latent_mode="mode"`` uses the mean);
3. ``t ~ U{⌊1000·lo⌋ … ⌊1000·hi⌋}`` per image, ``ε ~ N(0, I)``, ``z_t = √ᾱ z + √(1−ᾱ) ε``;
4. UNet on ``[z_t, z_t]`` with text ``[neg, pos]`` under no_grad, CFG (``"upstream"``: ε_c + s(ε_c − ε_u));
5. ``g = λ (1 − ᾱ_t)(ε̂ − ε)``, injected by the surrogate loss ``½‖z − sg(z − g)‖² / N``.

Random draws, in this order, from ``generator``: the posterior sample, t, ε.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from animate124.guidance.base import (
    GuidanceOutput,
    alphas_cumprod_of,
    check_images,
    encode_latents,
    freeze,
    maybe_enable_xformers,
    module_dtype,
    num_train_timesteps_of,
    resize,
    text_cfg_sds,
    timesteps_and_noise,
    vae_scale_factor,
)
from animate124.guidance.prompts import TextEmbeddingCache

log = logging.getLogger(__name__)


class StableDiffusionGuidance:
    """SD 1.5 score distillation on rendered images (SPEC 3.7).

    Args:
        components: any object with ``vae, unet, text_encoder, tokenizer, scheduler`` (SDComponents).
        image_size: SD input size; None = ``unet.config.sample_size × VAE factor`` (512 for SD 1.5).
        guidance_scale: CFG scale s (100 upstream, with the "+1" form).
        cfg_mode: ``"upstream"`` (ε_c + s(ε_c − ε_u), SPEC 11.3) or ``"standard"``.
        t_range: fraction range of the timestep draw (0.2–0.6 in the static stage).
        weight: λ.
        view_dependent: interpolate front/side/back prompt embeddings by azimuth (SPEC 3.7-7).
        negative_prompt: the negative text ("" upstream); never view-decorated (SPEC 3.7-7).
        latent_mode: ``"sample"`` (upstream) or ``"mode"`` of the VAE posterior.
        use_xformers: xformers attention if installed (default PyTorch SDPA).
    """

    def __init__(
        self,
        components: object,
        *,
        image_size: int | None = None,
        guidance_scale: float = 100.0,
        cfg_mode: str = "upstream",
        t_range: tuple[float, float] = (0.2, 0.6),
        weight: float = 1.0,
        view_dependent: bool = True,
        negative_prompt: str = "",
        latent_mode: str = "sample",
        use_xformers: bool = False,
    ) -> None:
        self.vae = components.vae  # type: ignore[attr-defined]
        self.unet = components.unet  # type: ignore[attr-defined]
        self.text_encoder = components.text_encoder  # type: ignore[attr-defined]
        self.tokenizer = components.tokenizer  # type: ignore[attr-defined]
        self.scheduler = components.scheduler  # type: ignore[attr-defined]
        freeze(self.vae, self.unet, self.text_encoder)
        maybe_enable_xformers([self.unet, self.vae], use_xformers)
        self.image_size = int(image_size or self.unet.config.sample_size * vae_scale_factor(self.vae))
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self.t_range = tuple(t_range)
        self.weight = float(weight)
        self.view_dependent = bool(view_dependent)
        self.negative_prompt = negative_prompt
        self.latent_sample = latent_mode == "sample"
        self.text = TextEmbeddingCache(self.tokenizer, self.text_encoder)
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler)
        self.num_train_timesteps = num_train_timesteps_of(self.scheduler)

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Load a textual-inversion vector; ``<token>`` in prompts then means ``token``."""
        self.text.add_learned_token(token, vector)

    def prepare(self, prompt: str) -> None:
        """Encode (and cache) the prompt and negative embeddings now; checks the prompt length."""
        if self.view_dependent:
            self.text.encode_views(prompt)
        else:
            self.text.encode(prompt)
        self.text.encode(self.negative_prompt)

    def text_embeddings(
        self, prompt: str, n: int, azimuth_deg: torch.Tensor | float | Iterable[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neg, pos)`` embeddings ``[n, 77, D]`` each; the negative is plain for every view (SPEC 3.7-7)."""
        vd = self.view_dependent and azimuth_deg is not None
        neg = self.text.embeddings(self.negative_prompt, n)
        pos = self.text.embeddings(prompt, n, azimuth_deg, vd)
        return neg, pos

    def __call__(
        self,
        images: torch.Tensor,
        *,
        prompt: str,
        azimuth_deg: torch.Tensor | float | Iterable[float] | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> GuidanceOutput:
        """SDS on ``images [B, T, 3, H, W]`` in [0, 1].

        ``azimuth_deg``: one per B (or per B·T) in degrees, for view-dependent text; without it the
        plain prompt is used. ``noise`` ``[B·T, 4, h, w]`` and ``t`` (int or ``[B·T]``) may be injected.

        Returns ``losses["sds"]`` (fp32 scalar, ∂/∂z = g/(B·T)) and diagnostics (t, w, |g|).
        """
        b, tt = check_images(images)
        n = b * tt
        x = resize(images.reshape(n, *images.shape[2:]).to(module_dtype(self.vae)), (self.image_size,) * 2)
        z = encode_latents(self.vae, x, sample=self.latent_sample, generator=generator)
        t, noise = timesteps_and_noise(z, t, noise, n, self.t_range, self.num_train_timesteps, generator)

        neg, pos = self.text_embeddings(prompt, n, azimuth_deg)
        loss, g, w = text_cfg_sds(
            self.unet,
            self.alphas_cumprod,
            z,
            noise,
            t,
            neg,
            pos,
            self.guidance_scale,
            self.cfg_mode,
            self.weight,
        )
        return GuidanceOutput(
            losses={"sds": loss},
            diagnostics={
                "t": float(t.float().mean()),
                "w": float(w.mean()),
                "grad_norm": float(g.norm()),
            },
        )
