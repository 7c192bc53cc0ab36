"""Text-to-video SDS guidance with ModelScope T2V 1.7B (or Zeroscope) (SPEC 3.7, 5.2).

Per call, for a clip ``[B, F, 3, H, W]`` in [0, 1] (upstream: [1, 16, 3, 128, 128]):

1. each frame is bilinearly resized to the model's native size (256² ModelScope, 320×576 Zeroscope);
2. frames are VAE-encoded in chunks WITH grad, ``z = 0.18215·E(2x−1).sample()``, stacked to
   ``[B, 4, F, h, w]`` (UNet3D layout);
3. one ``t ~ U{20…980}`` per clip, ``ε ~ N(0, I)``;
4. UNet3D on ``[z_t, z_t]`` with ``[neg, pos]`` text, CFG ("upstream" +1 form, s = 100);
5. ``g = λ (1 − ᾱ_t)(ε̂ − ε)``, surrogate loss ``½‖z − sg(z − g)‖² / B``.

Text is the plain prompt (SPEC 11.6 fix). ``view_dependent_static_camera=True`` reproduces upstream,
which still sent view-interpolated prompts for static-camera clips (``static_camera=True`` per call).
``vae_grad_frames=k`` encodes only k random frames with gradient (memory option; the others are
encoded under no_grad, so their SDS gradient is dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from animate124.errors import InputError
from animate124.guidance.base import (
    GuidanceOutput,
    alphas_cumprod_of,
    check_images,
    freeze,
    latent_scaling,
    maybe_enable_xformers,
    module_dtype,
    num_train_timesteps_of,
    randn_like,
    resize,
    text_cfg_sds,
    timesteps_and_noise,
    vae_scale_factor,
)
from animate124.guidance.prompts import TextEmbeddingCache

log = logging.getLogger(__name__)


class VideoGuidance:
    """Video-diffusion SDS on a rendered clip (SPEC 3.7, 5.2).

    Args:
        components: object with ``vae, unet (UNet3DConditionModel), text_encoder, tokenizer, scheduler,
            native_size`` (VideoComponents).
        image_size: per-frame input size ``(H, W)`` or an int; None = ``components.native_size``.
        guidance_scale / cfg_mode / t_range / weight: s = 100 "+1" form, t ∈ [0.02, 0.98], λ = 1.
        vae_grad_frames: encode only this many randomly chosen frames with grad (None = all).
        encode_chunk: frames per VAE call (memory/speed trade-off; no effect on the result).
        view_dependent_static_camera: upstream's view-interpolated prompt for static-camera clips.
        negative_prompt: "" upstream.
    """

    def __init__(
        self,
        components: object,
        *,
        image_size: int | tuple[int, int] | None = None,
        guidance_scale: float = 100.0,
        cfg_mode: str = "upstream",
        t_range: tuple[float, float] = (0.02, 0.98),
        weight: float = 1.0,
        vae_grad_frames: int | None = None,
        encode_chunk: int = 8,
        view_dependent_static_camera: bool = False,
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
        size = image_size if image_size is not None else getattr(components, "native_size", (256, 256))
        self.image_size: tuple[int, int] = (int(size), int(size)) if isinstance(size, int) else tuple(size)  # type: ignore[assignment]
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self.t_range = tuple(t_range)
        self.weight = float(weight)
        if vae_grad_frames is not None and vae_grad_frames < 1:
            raise InputError(f"vae_grad_frames must be >= 1 or None, got {vae_grad_frames}")
        self.vae_grad_frames = vae_grad_frames
        self.encode_chunk = max(1, int(encode_chunk))
        self.view_dependent_static_camera = bool(view_dependent_static_camera)
        self.negative_prompt = negative_prompt
        self.latent_sample = latent_mode == "sample"
        self.text = TextEmbeddingCache(self.tokenizer, self.text_encoder)
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler)
        self.num_train_timesteps = num_train_timesteps_of(self.scheduler)

    def prepare(self, prompt: str) -> None:
        """Encode (and cache) the prompt and negative now; checks the prompt length."""
        self.text.encode(prompt)
        self.text.encode(self.negative_prompt)
        if self.view_dependent_static_camera:
            self.text.encode_views(prompt)

    def grad_frame_mask(self, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool ``[F]``: which frames are encoded with grad (all, or ``vae_grad_frames`` random ones)."""
        mask = torch.ones(frames, dtype=torch.bool)
        if self.vae_grad_frames is not None and self.vae_grad_frames < frames:
            gen_dev = generator.device if generator is not None else "cpu"
            perm = torch.randperm(frames, generator=generator, device=gen_dev).cpu()
            mask[:] = False
            mask[perm[: self.vae_grad_frames]] = True
        return mask

    def encode_clip(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        grad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, F, 3, H, W]`` -> latents ``[B, 4, F, h, w]``, frame by frame in chunks of ``encode_chunk``.

        ``z = s·(μ + σ·e)`` with the posterior noise ``e`` for the whole clip drawn first (one draw of
        shape ``[B·F, 4, h, w]``), so the result does not depend on chunking or on ``grad_mask``.
        Frames whose mask entry is False are encoded under no_grad.
        """
        b, f = images.shape[:2]
        n = b * f
        x = resize(images.reshape(n, *images.shape[2:]).to(module_dtype(self.vae)), self.image_size)
        mask = (grad_mask if grad_mask is not None else torch.ones(f, dtype=torch.bool)).repeat(b)
        fac = vae_scale_factor(self.vae)
        lat_shape = (n, int(self.vae.config.latent_channels), x.shape[-2] // fac, x.shape[-1] // fac)
        e = randn_like(torch.empty(lat_shape, device=x.device), generator) if self.latent_sample else None
        s = latent_scaling(self.vae)
        parts: dict[int, torch.Tensor] = {}
        for with_grad in (True, False):
            idx = torch.nonzero(mask == with_grad).flatten().tolist()
            for i in range(0, len(idx), self.encode_chunk):
                sel = idx[i : i + self.encode_chunk]
                with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
                    dist = self.vae.encode(x[sel] * 2.0 - 1.0).latent_dist
                    zi = dist.mean + dist.std * e[sel].to(dist.mean.dtype) if e is not None else dist.mode()
                    zi = zi * s
                for k, j in enumerate(sel):
                    parts[j] = zi[k]
        z = torch.stack([parts[j] for j in range(n)])
        return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def text_embeddings(
        self,
        prompt: str,
        b: int,
        azimuth_deg: torch.Tensor | float | Iterable[float] | None,
        static_camera: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neg, pos)`` ``[B, 77, D]``: plain, or view-interpolated for static cameras if enabled."""
        vd = self.view_dependent_static_camera and static_camera and azimuth_deg is not None
        neg = self.text.embeddings(self.negative_prompt, b)  # plain for every view (SPEC 3.7-7)
        pos = self.text.embeddings(prompt, b, azimuth_deg, vd)
        return neg, pos

    def __call__(
        self,
        images: torch.Tensor,
        *,
        prompt: str,
        azimuth_deg: torch.Tensor | float | Iterable[float] | None = None,
        static_camera: bool = False,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> GuidanceOutput:
        """SDS on clips ``[B, F, 3, H, W]`` in [0, 1]; ``noise [B, 4, F, h, w]`` and ``t [B]`` injectable.

        Draw order from ``generator``: grad-frame choice (if ``vae_grad_frames``), posterior samples,
        t, ε. Returns ``losses["video_sds"]`` (fp32, ∂/∂z = g/B).
        """
        b, f = check_images(images)
        mask = self.grad_frame_mask(f, generator)
        z = self.encode_clip(images, generator, mask)
        t, noise = timesteps_and_noise(z, t, noise, b, self.t_range, self.num_train_timesteps, generator)

        neg, pos = self.text_embeddings(prompt, b, azimuth_deg, static_camera)
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
            losses={"video_sds": loss},
            diagnostics={
                "t": float(t.float().mean()),
                "w": float(w.mean()),
                "grad_norm": float(g.norm()),
                "grad_frames": float(mask.sum()),
            },
        )
