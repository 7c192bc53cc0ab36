"""Text-to-video SDS guidance with ModelScope T2V 1.7B (or Zeroscope) (SPEC 3.7, 5.2).

Per call, for a clip ``[B, F, 3, H, W]`` in [0, 1] (upstream: [1, 16, 3, 128, 128]):

1. each frame is bilinearly resized to the model's native size (256² ModelScope, 320×576 Zeroscope);
2. frames are VAE-encoded in chunks WITH grad, ``z = 0.18215·E(2x−1).sample()``, stacked to
   ``[B, 4, F, h, w]`` (UNet3D layout);
3. one ``t ~ U{20…980}`` per clip, ``ε ~ N(0, I)``;
4. UNet3D on ``[z_t, z_t]`` with ``[neg, pos]`` text, CFG ("upstream" +1 form, s = 100);
5. ``g = λ (1 − ᾱ_t)(ε̂ − ε)``, surrogate loss ``½‖z − sg(z − g)‖² / B``.

Text is the plain prompt (SPEC 11.6 fix). ``upstream_view_text=True`` reproduces upstream, which still
sent view-interpolated prompts for static-camera clips (``views.static_camera``), by the absolute
azimuth of the clip's middle frame (upstream's choice; all frames agree for a static camera). The
negative is plain in both modes (SPEC 3.7-7). ``vae_grad_frames=k`` encodes only k random frames with
gradient (memory option; the others are encoded under no_grad, so their SDS gradient is dropped).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from animate124.errors import InputError
from animate124.guidance.base import Gen, Noise, Steps, TextPrior
from animate124.guidance.common import (
    encoder_moments,
    latent_scaling,
    posterior,
    randn_like,
    to_device,
    vae_scale_factor,
)
from animate124.guidance.interface import GuidanceOutput, Views
from animate124.guidance.prompts import PromptSet

if TYPE_CHECKING:
    from animate124.models.loaders import VideoComponents

log = logging.getLogger(__name__)


class VideoGuidance(TextPrior):
    """Video-diffusion SDS on a rendered clip (SPEC 3.7, 5.2); implements ``TextGuidance``.

    Args:
        components: ModelScope / Zeroscope ``vae, unet (UNet3DConditionModel), text_encoder, tokenizer,
            scheduler, native_size``.
        prompt / negative_prompt: the motion prompt (the stage appends its suffix) and "" upstream.
        guidance_scale: CFG scale (config ``dynamic.video_guidance_scale``, 100 with the "+1" form).
        cfg_mode: ``"upstream"`` (ε_c + s(ε_c − ε_u)) or ``"standard"``.
        t_range: ``dynamic.video_t_range`` (0.02–0.98).
        weight: λ (``dynamic.video_weight``).
        vae_grad_frames: encode only this many randomly chosen frames with grad; 0 = all
            (``dynamic.vae_grad_frames``).
        upstream_view_text: view-interpolated prompt for static-camera clips, as upstream
            (``dynamic.upstream_view_text``, SPEC 11.6).
        image_size: per-frame input size ``(H, W)`` or an int; None = ``components.native_size``.
        encode_chunk: frames per VAE call (memory/speed trade-off; no effect on the result).
        checkpoint_encoder: keep no VAE-encoder activations for backward; recompute them frame by frame
            (``run.vae_checkpoint``; same gradients, less memory; ``common.encoder_moments``).
        latent_mode / use_xformers: as for the SD prior.
    """

    name = "video"
    loss_key = "video_sds"

    def __init__(
        self,
        components: VideoComponents,
        *,
        prompt: str,
        negative_prompt: str,
        guidance_scale: float,
        cfg_mode: str,
        t_range: tuple[float, float],
        weight: float,
        vae_grad_frames: int,
        upstream_view_text: bool,
        image_size: int | tuple[int, int] | None = None,
        encode_chunk: int = 8,
        latent_mode: str = "sample",
        use_xformers: bool = False,
        checkpoint_encoder: bool,
        checkpoint_pixels: int,
        checkpoint_keep_pixels: int,
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
        size = components.native_size if image_size is None else image_size
        self.image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if vae_grad_frames < 0:
            raise InputError(f"vae_grad_frames must be >= 0 (0 = all frames), got {vae_grad_frames}")
        self.vae_grad_frames = int(vae_grad_frames)
        self.encode_chunk = max(1, int(encode_chunk))
        self.upstream_view_text = bool(upstream_view_text)
        self.text = PromptSet(
            components.tokenizer,
            components.text_encoder,
            prompt=prompt,
            negative_prompt=negative_prompt,
            view_text=self.upstream_view_text,
        )

    def grad_frame_mask(self, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool ``[F]``: which frames are encoded with grad (all, or ``vae_grad_frames`` random ones).

        The same frames for every clip of the batch; the draw (only when it selects) comes first."""
        mask = torch.ones(frames, dtype=torch.bool)
        if 0 < self.vae_grad_frames < frames:
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
        Frames whose mask entry is False are encoded under no_grad. With ``checkpoint_encoder`` the frames with
        grad keep their encoder activations, in order, as long as they fit ``checkpoint_keep_pixels`` (a chunk
        that crosses the budget is encoded in two calls), and the rest are recomputed in backward
        (``dynamic.vae_keep_pixels``; before 2026-12-08 a clip that did not fit as a whole kept none): the same
        gradients, one encoder pass less per kept frame for its memory (about 0.6 GiB a 256² frame).
        """
        b, f = images.shape[:2]
        n = b * f
        x = self.vae_input(images, self.image_size)
        mask = (grad_mask if grad_mask is not None else torch.ones(f, dtype=torch.bool)).repeat(b)
        fac = vae_scale_factor(self.vae)
        lat_shape = (n, int(self.vae.config.latent_channels), x.shape[-2] // fac, x.shape[-1] // fac)
        e = randn_like(torch.empty(lat_shape, device=x.device), generator) if self.latent_sample else None
        s = latent_scaling(self.vae)
        parts: dict[int, torch.Tensor] = {}
        frame_px = x.shape[-2] * x.shape[-1]
        # frames with grad that keep their activations (the first ones), the others recomputed in backward
        keep = int(mask.sum()) if not self.checkpoint_encoder else self.checkpoint_keep_pixels // frame_px
        for with_grad in (True, False):
            idx = torch.nonzero(mask == with_grad).flatten().tolist()
            for i in range(0, len(idx), self.encode_chunk):
                chunk = idx[i : i + self.encode_chunk]
                kept = max(0, min(len(chunk), keep - i)) if with_grad else 0
                for sel, recompute in ((chunk[:kept], False), (chunk[kept:], True)):
                    if not sel:
                        continue
                    with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
                        moments = encoder_moments(
                            self.vae,
                            x[sel] * 2.0 - 1.0,
                            checkpoint=recompute and self.checkpoint_encoder,
                            chunk_pixels=self.checkpoint_pixels,
                        )
                        mean, std = posterior(moments)
                        zi = mean + std * e[sel].to(mean.dtype) if e is not None else mean
                        zi = zi * s
                    for k, j in enumerate(sel):
                        parts[j] = zi[k]
        z = torch.stack([parts[j] for j in range(n)])
        return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def text_embeddings(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """``(neg, pos)`` ``[B, 77, D]``: the plain negative; the plain prompt, or with
        ``upstream_view_text`` the view-interpolated one for static-camera clips (middle frame's azimuth)."""
        b = views.batch
        neg, pos = self.text.negative(b), self.text.positive(b)
        if self.upstream_view_text and bool(views.static_camera.any()):
            az = views.azimuth[:, views.frames // 2]
            pos_views = self.text.positive(b, az)
            static = to_device(views.static_camera, pos.device)[:, None, None]
            pos = torch.where(static, pos_views, pos)
        return neg, pos

    def guide(
        self, images: Tensor, views: Views, *, generator: Gen, noise: Noise, t: Steps
    ) -> GuidanceOutput:
        """SDS on clips ``[B, F, 3, H, W]``: ``noise [B, 4, F, h, w]`` and ``t [B]`` injectable.

        Draw order from ``generator``: grad-frame choice (if ``vae_grad_frames`` selects), posterior
        samples, t, ε. Returns ``losses["video_sds"]`` (fp32, ∂/∂z = g/B).
        """
        mask = self.grad_frame_mask(views.frames, generator)
        z = self.encode_clip(images, generator, mask)
        t, noise = self.draw(z, t, noise, views.batch, generator)
        neg, pos = self.text_embeddings(views)
        return self.text_sds_output(z, noise, t, neg, pos, grad_frames=float(mask.sum()))
