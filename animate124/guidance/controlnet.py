"""ControlNet-tile refinement guidance for the fine dynamic stage (SPEC 6, 11.4).

Per call, with the trainable clip ``[1, F, 3, H, W]`` and the frozen stage-3 model's render of the same
rays/times/shading (``condition``, [0, 1], detached):

1. select frames (upstream ``--cn_frames 2`` "even": {0, 8} of 16) from both;
2. bilinear upsample to ``image_size`` (1024; smaller allowed);
3. ``z = 0.18215·E(2x−1).sample()`` WITH grad on the trainable frames ``[n, 4, h, w]``; one t shared;
4. ControlNet on ``[z_t, z_t]`` with condition ``[cond, cond]`` (in [0, 1], NOT mapped to [−1, 1]) and
   context ``[neg, controlnet_prompt]``; the UNet gets its residuals and the TI prompt ``[neg, prompt]``;
5. CFG (``"upstream"``: ε_c + 7.5(ε_c − ε_u)), then
   * ``target="x0"`` (upstream ``--grad_dyn``): ``x̂₀ = (z_t − √(1−ᾱ)ε̂)/√ᾱ``, ``L = ½Σ(z − x̂₀)²/n``. This
     is SDS with weight √((1−ᾱ)/ᾱ): λ (``weight``) and the (1−ᾱ) factor are ignored, as upstream does;
   * ``target="sds"``: the standard surrogate with ``g = λ(1−ᾱ)(ε̂ − ε)`` (divided by n).
"""

from __future__ import annotations

import logging

import torch

from animate124.errors import ConfigError, InputError
from animate124.guidance import sds
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
    timesteps_and_noise,
)
from animate124.guidance.prompts import TextEmbeddingCache

log = logging.getLogger(__name__)


def select_frames(num_frames: int, frames: tuple[int, ...] | list[int] | str) -> list[int]:
    """Frame indices for the ControlNet loss (SPEC 6 step 1).

    * ``"even:N"`` (the documented form; the paper's ``--cn_frames 2`` is ``"even:2"``): ``n = min(N, F)``
      frames ``[k·F // n for k < n]``. When n divides F this is upstream's "even" method, stride F/n
      ({0, 8} for F = 16, N = 2; {0, 2} for F = 4); otherwise (upstream asserted) the frames are spread
      as evenly as integer division allows ({0, 3, 6} for F = 10, N = 3). A clip shorter than N gives
      every frame ({0} for F = 1), so one spec serves every clip length.
    * ``"all"``: every frame.
    * a tuple/list: explicit indices, each checked against F.
    """
    if isinstance(frames, str):
        if frames == "all":
            return list(range(num_frames))
        if frames.startswith("even:"):
            try:
                n = int(frames.split(":", 1)[1])
            except ValueError as e:
                raise ConfigError(f"bad frame selection {frames!r}", "use 'even:N', 'all' or indices") from e
            if n < 1:
                raise ConfigError(f"bad frame selection {frames!r}: N must be >= 1")
            n = min(n, num_frames)
            return [k * num_frames // n for k in range(n)]
        raise ConfigError(f"bad frame selection {frames!r}", "use 'even:N', 'all' or indices")
    idx = [int(i) for i in frames]
    if not idx or any(i < 0 or i >= num_frames for i in idx):
        raise ConfigError(f"frame indices {idx} out of range for {num_frames} frames")
    return idx


class ControlNetGuidance:
    """ControlNet v1.1 tile + SD 1.5 (+ textual-inversion token) guidance (SPEC 6).

    Args:
        sd_components: object with ``vae, unet, text_encoder, tokenizer, scheduler`` (SDComponents).
        controlnet: a ``diffusers.ControlNetModel`` (tile).
        image_size: 1024 upstream; smaller is allowed (must be a multiple of the VAE factor).
        guidance_scale / cfg_mode / t_range: 7.5 with "+1" form, t ∈ [0.2, 0.8].
        controlnet_prompt: the ControlNet's own text ("best quality, high resolution").
        conditioning_scale: ControlNet residual scale (1.0).
        target: ``"x0"`` (upstream ``--grad_dyn``) or ``"sds"``.
        weight: λ (used by ``target="sds"`` only).
        frames: indices or ``"even:n"`` / ``"all"`` (see :func:`select_frames`).
    """

    def __init__(
        self,
        sd_components: object,
        controlnet: torch.nn.Module,
        *,
        image_size: int = 1024,
        guidance_scale: float = 7.5,
        cfg_mode: str = "upstream",
        t_range: tuple[float, float] = (0.2, 0.8),
        controlnet_prompt: str = "best quality, high resolution",
        conditioning_scale: float = 1.0,
        target: str = "x0",
        weight: float = 1.0,
        frames: tuple[int, ...] | list[int] | str = "even:2",
        negative_prompt: str = "",
        latent_mode: str = "sample",
        use_xformers: bool = False,
    ) -> None:
        if target not in ("x0", "sds"):
            raise ConfigError(f"unknown ControlNet target {target!r}", "use 'x0' or 'sds'")
        self.vae = sd_components.vae  # type: ignore[attr-defined]
        self.unet = sd_components.unet  # type: ignore[attr-defined]
        self.text_encoder = sd_components.text_encoder  # type: ignore[attr-defined]
        self.tokenizer = sd_components.tokenizer  # type: ignore[attr-defined]
        self.scheduler = sd_components.scheduler  # type: ignore[attr-defined]
        self.controlnet = controlnet
        freeze(self.vae, self.unet, self.text_encoder, self.controlnet)
        maybe_enable_xformers([self.unet, self.vae, self.controlnet], use_xformers)
        self.image_size = int(image_size)
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self.t_range = tuple(t_range)
        self.controlnet_prompt = controlnet_prompt
        self.conditioning_scale = float(conditioning_scale)
        self.target = target
        self.weight = float(weight)
        self.frames = frames
        self.negative_prompt = negative_prompt
        self.latent_sample = latent_mode == "sample"
        self.text = TextEmbeddingCache(self.tokenizer, self.text_encoder)
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler)
        self.num_train_timesteps = num_train_timesteps_of(self.scheduler)

    def add_learned_token(self, token: str, vector: torch.Tensor) -> None:
        """Load the textual-inversion vector; ``<token>`` in the prompt then means ``token``."""
        self.text.add_learned_token(token, vector)

    def prepare(self, prompt: str) -> None:
        """Encode (and cache) all texts now; raises if ``<token>`` has no learned token or is too long."""
        for p in (prompt, self.controlnet_prompt, self.negative_prompt):
            self.text.encode(p)

    def __call__(
        self,
        images: torch.Tensor,
        condition: torch.Tensor,
        *,
        prompt: str,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> GuidanceOutput:
        """Refinement loss on ``images [1, F, 3, H, W]`` given the frozen render ``condition`` (same shape).

        ``noise`` ``[n, 4, h, w]`` (n selected frames) and ``t`` (one value) may be injected.
        Draw order from ``generator``: posterior sample, t, ε. Returns ``losses["controlnet"]`` (fp32).
        """
        b, f = check_images(images)
        if condition.shape != images.shape:
            raise InputError(
                f"condition {tuple(condition.shape)} must match images {tuple(images.shape)}",
                "render the frozen model with the same cameras and times",
            )
        if b != 1:
            raise InputError(f"ControlNet guidance takes one clip (B=1), got B={b}")
        idx = select_frames(f, self.frames)
        n = len(idx)
        size = (self.image_size, self.image_size)
        x = resize(images[0, idx].to(module_dtype(self.vae)), size)
        z = encode_latents(self.vae, x, sample=self.latent_sample, generator=generator)
        t, noise = timesteps_and_noise(z, t, noise, 1, self.t_range, self.num_train_timesteps, generator)
        t = t.expand(n).clone()  # one t shared by the frames (SPEC 6)

        udtype = module_dtype(self.unet)
        cdtype = module_dtype(self.controlnet)
        with torch.no_grad():
            cond = resize(condition[0, idx].detach().float(), size).to(device=z.device, dtype=cdtype)
            neg = self.text.encode(self.negative_prompt).expand(n, -1, -1)
            pos = self.text.encode(prompt).expand(n, -1, -1)
            cn_pos = self.text.encode(self.controlnet_prompt).expand(n, -1, -1)
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t)
            x2 = torch.cat([zt, zt])
            t2 = torch.cat([t, t]).to(z.device)
            down, mid = self.controlnet(
                x2.to(cdtype),
                t2,
                encoder_hidden_states=torch.cat([neg, cn_pos]).to(cdtype),
                controlnet_cond=torch.cat([cond, cond]),
                conditioning_scale=self.conditioning_scale,
                return_dict=False,
            )
            eps = self.unet(
                x2.to(udtype),
                t2,
                encoder_hidden_states=torch.cat([neg, pos]).to(udtype),
                down_block_additional_residuals=[d.to(udtype) for d in down],
                mid_block_additional_residual=mid.to(udtype),
            ).sample
            eps_u, eps_c = eps.chunk(2)
            eps_hat = sds.cfg(eps_u.float(), eps_c.float(), self.guidance_scale, self.cfg_mode)
        if self.target == "x0":
            loss = sds.x0_target_loss(z, zt, eps_hat, self.alphas_cumprod, t)
            w = sds.w_x0_target(self.alphas_cumprod, t)
        else:
            w = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t)
            g = sds.sds_gradient(eps_hat, noise, w, self.weight)
            loss = sds.sds_surrogate_loss(z, g)
        return GuidanceOutput(
            losses={"controlnet": loss},
            diagnostics={"t": float(t[0]), "w": float(w[0]), "frames": float(n)},
        )
