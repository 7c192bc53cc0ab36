"""ControlNet-tile refinement guidance for the fine dynamic stage (SPEC 6, 11.4).

Per call, with the trainable clip ``[1, F, 3, H, W]`` and the frozen stage-3 model's render of the same
rays/times/shading (``views.condition``, [0, 1], detached):

1. select frames (``frames="even:2"``, upstream ``--cn_frames 2`` "even": {0, 8} of 16) from both;
2. bilinear upsample to ``image_size`` (1024; smaller allowed);
3. ``z = 0.18215·E(2x−1).sample()`` WITH grad on the trainable frames ``[n, 4, h, w]``; one t shared;
4. ControlNet on ``[z_t, z_t]`` with condition ``[cond, cond]`` (in [0, 1], NOT mapped to [−1, 1]) and
   context ``[neg, controlnet_prompt]``; the UNet gets its residuals and the TI prompt ``[neg, prompt]``;
5. CFG (``"upstream"``: ε_c + 7.5(ε_c − ε_u)), then
   * ``target="x0"`` (upstream ``--grad_dyn``): ``x̂₀ = (z_t − √(1−ᾱ)ε̂)/√ᾱ``, ``L = ½Σ(z − x̂₀)²/n``. This
     is SDS with weight √((1−ᾱ)/ᾱ): λ (``weight``) and the (1−ᾱ) factor are ignored, as upstream does;
   * ``target="sds"``: the standard surrogate with ``g = λ(1−ᾱ)(ε̂ − ε)`` (divided by n).

The UNet's text is the plain TI prompt; ``upstream_view_text=True`` reproduces upstream, which for
static-camera clips interpolated it by each selected frame's absolute azimuth (SPEC 3.7-7, 11.6). The
negative and the ControlNet's own prompt are plain in both modes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from animate124.errors import ConfigError, InputError
from animate124.guidance import sds
from animate124.guidance.base import Gen, Noise, Steps, TextPrior
from animate124.guidance.common import module_dtype, resize, to_device
from animate124.guidance.interface import GuidanceOutput, Views
from animate124.guidance.prompts import PromptSet

if TYPE_CHECKING:
    from diffusers import ControlNetModel

    from animate124.models.loaders import SDComponents

log = logging.getLogger(__name__)


def parse_frame_spec(frames: str | Sequence[int]) -> str | tuple[int, ...]:
    """Check a frame selection (see :func:`select_frames`) without a frame count; returns it normalised."""
    hint = "use 'even:N', 'all' or a list of frame indices"
    if isinstance(frames, str):
        if frames == "all":
            return frames
        if frames.startswith("even:"):
            try:
                n = int(frames.split(":", 1)[1])
            except ValueError as e:
                raise ConfigError(f"bad frame selection {frames!r}", hint) from e
            if n < 1:
                raise ConfigError(f"bad frame selection {frames!r}: N must be >= 1", hint)
            return f"even:{n}"
        raise ConfigError(f"bad frame selection {frames!r}", hint)
    idx = tuple(int(i) for i in frames)
    if not idx or any(i < 0 for i in idx):
        raise ConfigError(f"bad frame indices {list(idx)}", hint)
    return idx


def select_frames(num_frames: int, frames: str | Sequence[int]) -> list[int]:
    """Frame indices for the ControlNet loss (SPEC 6 step 1).

    * ``"even:N"`` (the documented form; the paper's ``--cn_frames 2`` is ``"even:2"``): ``n = min(N, F)``
      frames ``[k·F // n for k < n]``. When n divides F this is upstream's "even" method, stride F/n
      ({0, 8} for F = 16, N = 2; {0, 2} for F = 4); otherwise (upstream asserted) the frames are spread
      as evenly as integer division allows ({0, 3, 6} for F = 10, N = 3). A clip shorter than N gives
      every frame ({0} for F = 1), so one spec serves every clip length.
    * ``"all"``: every frame.
    * a tuple/list: explicit indices, each checked against F.
    """
    spec = parse_frame_spec(frames)
    if spec == "all":
        return list(range(num_frames))
    if isinstance(spec, str):
        n = min(int(spec.split(":", 1)[1]), num_frames)
        return [k * num_frames // n for k in range(n)]
    if any(i >= num_frames for i in spec):
        raise ConfigError(f"frame indices {list(spec)} out of range for {num_frames} frames")
    return list(spec)


class ControlNetGuidance(TextPrior):
    """ControlNet v1.1 tile + SD 1.5 (+ textual-inversion token) guidance (SPEC 6); implements
    ``TextGuidance``.

    Args:
        sd_components: SD 1.5 ``vae, unet, text_encoder, tokenizer, scheduler``.
        controlnet: the ControlNet v1.1 tile model.
        prompt: the UNet's text, usually with ``<token>`` (config ``refine.prompt`` + suffix).
        negative_prompt: "" upstream.
        controlnet_prompt: the ControlNet's own text (``refine.controlnet_prompt``).
        image_size: ControlNet input size (``refine.image_size``, 1024; a multiple of the VAE factor).
        guidance_scale / cfg_mode / t_range: ``refine.guidance_scale`` 7.5 with the "+1" form,
            ``refine.t_range`` 0.2–0.8.
        target: ``"x0"`` (upstream ``--grad_dyn``) or ``"sds"`` (``refine.target``).
        weight: λ, used by ``target="sds"`` only (``refine.weight``).
        frames: ``"even:N"`` (``refine.frames`` = N), ``"all"`` or indices (see :func:`select_frames`).
        upstream_view_text: view-interpolated UNet text for static-camera clips, as upstream (SPEC 11.6).
        conditioning_scale: ControlNet residual scale (1.0).
        latent_mode / use_xformers / checkpoint_encoder: as for the SD prior.
        learned_token: ``(token, vector [D])`` of the textual inversion, loaded before the prompt is
            encoded (the prompt's ``<token>`` needs it).
    """

    name = "controlnet"
    loss_key = "controlnet"

    def __init__(
        self,
        sd_components: SDComponents,
        controlnet: ControlNetModel,
        *,
        prompt: str,
        negative_prompt: str,
        controlnet_prompt: str,
        image_size: int,
        guidance_scale: float,
        cfg_mode: str,
        t_range: tuple[float, float],
        target: str,
        weight: float,
        frames: str | Sequence[int],
        upstream_view_text: bool,
        conditioning_scale: float = 1.0,
        latent_mode: str = "sample",
        use_xformers: bool = False,
        checkpoint_encoder: bool,
        checkpoint_pixels: int,
        checkpoint_keep_pixels: int,
        learned_token: tuple[str, torch.Tensor] | None = None,
    ) -> None:
        if target not in ("x0", "sds"):
            raise ConfigError(f"unknown ControlNet target {target!r}", "use 'x0' or 'sds'")
        self.controlnet = controlnet
        super().__init__(
            vae=sd_components.vae,
            unet=sd_components.unet,
            scheduler=sd_components.scheduler,
            frozen=(sd_components.text_encoder, controlnet),
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
        self.image_size = int(image_size)
        self.conditioning_scale = float(conditioning_scale)
        self.target = target
        self.frames = parse_frame_spec(frames)
        self.upstream_view_text = bool(upstream_view_text)
        self.text = PromptSet(
            sd_components.tokenizer,
            sd_components.text_encoder,
            prompt=prompt,
            negative_prompt=negative_prompt,
            view_text=self.upstream_view_text,
            learned_token=learned_token,
        )
        self.controlnet_prompt = controlnet_prompt
        self._cn_pos = self.text.encode(controlnet_prompt)

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Load the textual-inversion vector; ``<token>`` in the prompt then means ``token`` (the ControlNet's
        own prompt is encoded again with it)."""
        super().add_learned_token(token, vector)
        self._cn_pos = self.text.encode(self.controlnet_prompt)

    def text_embeddings(
        self, views: Views, idx: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(neg, pos, controlnet_pos)`` ``[n, 77, D]`` for the selected frames ``idx`` of one clip."""
        n = len(idx)
        pos = self.text.positive(n)
        if self.upstream_view_text and bool(views.static_camera[0]):
            pos = self.text.positive(n, views.azimuth[0, idx])
        return self.text.negative(n), pos, self._cn_pos.expand(n, -1, -1)

    def selected_frames(self, num_frames: int) -> list[int]:
        """The frames of a ``num_frames`` clip the loss reads (:func:`select_frames` with ``frames``)."""
        return select_frames(num_frames, self.frames)

    def check_call(self, images: Tensor, views: Views) -> tuple[int, int]:
        b, f = super().check_call(images, views)
        condition = views.condition
        if condition is None or condition.shape != images.shape:
            raise InputError(
                "ControlNet guidance needs views.condition shaped like the images "
                f"{tuple(images.shape)}, got {None if condition is None else tuple(condition.shape)}",
                "render the frozen model with the same cameras and times",
            )
        if b != 1:
            raise InputError(f"ControlNet guidance takes one clip (B=1), got B={b}")
        return b, f

    def guide(
        self, images: Tensor, views: Views, *, generator: Gen, noise: Noise, t: Steps
    ) -> GuidanceOutput:
        """Refinement loss on ``images [1, F, 3, H, W]`` given the frozen render ``views.condition`` (same
        shape): ``noise`` ``[n, 4, h, w]`` (n selected frames) and ``t`` (one value) may be injected.
        Draw order from ``generator``: posterior sample, t, ε. Returns ``losses["controlnet"]`` (fp32)."""
        condition = views.condition
        assert condition is not None  # check_call
        idx = self.selected_frames(views.frames)
        n = len(idx)
        size = (self.image_size, self.image_size)
        z = self.encode(self.vae_input(images[0, idx], size), generator)
        t, noise = self.draw(z, t, noise, 1, generator)
        t = t.expand(n).clone()  # one t shared by the frames (SPEC 6)

        udtype = module_dtype(self.unet)
        cdtype = module_dtype(self.controlnet)
        with torch.no_grad():
            cond = resize(condition[0, idx].detach().float(), size).to(device=z.device, dtype=cdtype)
            neg, pos, cn_pos = self.text_embeddings(views, idx)
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t)
            x2 = torch.cat([zt, zt])
            t2 = to_device(torch.cat([t, t]), z.device)
            with self.network_precision(x2.device):
                down, mid = self.controlnet(
                    x2.to(cdtype),
                    t2,
                    encoder_hidden_states=torch.cat([neg, cn_pos]).to(cdtype),
                    controlnet_cond=torch.cat([cond, cond]),
                    conditioning_scale=self.conditioning_scale,
                    return_dict=False,
                )
            eps_hat = self.guided_noise(
                x2.to(udtype),
                t2,
                torch.cat([neg, pos]).to(udtype),
                down_block_additional_residuals=[d.to(udtype) for d in down],
                mid_block_additional_residual=mid.to(udtype),
            )
        if self.target == "x0":
            loss = sds.x0_target_loss(z, zt, eps_hat, self.alphas_cumprod, t)
            w = sds.w_x0_target(self.alphas_cumprod, t)
        else:
            w = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t)
            g = sds.sds_gradient(eps_hat, noise, w, self.weight)
            loss = sds.sds_surrogate_loss(z, g)
        return GuidanceOutput(
            losses={self.loss_key: loss},
            diagnostics={"t": float(t[0]), "w": float(w[0]), "frames": float(n)},
        )
