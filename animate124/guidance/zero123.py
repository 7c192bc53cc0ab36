"""Zero123-XL SDS guidance (SPEC 3.8, 11.13, 11.14).

Reference conditioning, computed once from the white-composited reference RGB ``[1, 3, H, W]``:

* CLIP image embedding ``[1, 1, D]`` (``image_embeds`` of CLIPVisionModelWithProjection). By default
  (``clip_preprocess="torch"``) the CLIP preprocessing runs in torch: bicubic resize (antialiased) of
  the image to the encoder's ``image_size`` (224 for the real model; the reference is square, so
  the processor's "shortest edge 224 + centre crop 224" is the same resize), clamp to [0, 1], then
  normalise with the CLIP mean (0.48145466, 0.4578275, 0.40821073) and std
  (0.26862954, 0.26130258, 0.27577711). Upstream (``clip_preprocess="processor"``) fed ``(255·x).int()``
  (truncated, not rounded) to the model's PIL ``CLIPImageProcessor``: PIL's bicubic resize of 8-bit
  pixels, then the same normalisation (SPEC 3.8, 11.14).
* ``c_concat = VAE.encode(2x − 1)`` posterior MODE, unscaled (no 0.18215), at the Zero123 input size
  (original Zero123 uses the mode; upstream Animate124 sampled: ``c_concat_mode="sample"``).

Per call: the render is resized to 256² (the model's ``unet.sample_size × 8``), encoded to
``z = 0.18215·E(2x−1)`` with grad, ``t ~ U{200…600}``, and the camera embedding of each frame's pose
relative to the reference camera (``views.dpolar``, ``views.dazimuth``, ``views.dradius``, computed by
``Views.from_cameras`` from the camera positions of ``render/cameras.py``)

    T = [rad(Δpolar), sin(rad(−Δaz)), cos(rad(Δaz)), Δr]        (upstream sign, see camera_embedding)

is projected with the CLIP embedding: ``c = projection([clip_emb, T])`` ``[N, 1, D]``. The
unconditional branch uses zeros after the projection and a zero ``c_concat``; the UNet input is
``[z_t ‖ c_concat]`` (8 channels), batch ``[uncond, cond]``; standard CFG with s = 5. The gradient is
``g = λ_eff · (1 − ᾱ_t) · (ε̂ − ε)`` with the angle weight ``λ_eff = λ · angle(v_cam, v_ref)/180°``
(λ = 40 upstream), injected through the surrogate loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from animate124.errors import InputError
from animate124.guidance import sds
from animate124.guidance.base import DiffusionPrior, Gen, Noise, Steps
from animate124.guidance.common import (
    encode_latents,
    module_device,
    module_dtype,
    resize,
    to_device,
    vae_scale_factor,
)
from animate124.guidance.interface import REFERENCE_CAMERA, GuidanceOutput, Views

if TYPE_CHECKING:
    from animate124.models.loaders import Zero123Components

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "REFERENCE_CAMERA",
    "Zero123Guidance",
    "angle_weight",
    "camera_embedding",
    "camera_position",
    "clip_preprocess",
    "clip_processor_pixels",
]


def camera_embedding(
    dpolar_deg: torch.Tensor | float | Iterable[float],
    dazimuth_deg: torch.Tensor | float | Iterable[float],
    dradius: torch.Tensor | float | Iterable[float],
) -> torch.Tensor:
    """Zero123 relative-camera vector ``T = [rad(Δθ), sin(rad(−Δφ)), cos(rad(Δφ)), Δr]`` -> ``[N, 4]`` fp32.

    What "positive azimuth" means here: our camera at polar θ (from +y) and azimuth φ sits at
    ``r·(sinθ sinφ, cosθ, sinθ cosφ)`` (SPEC 0). The reference camera (θ=90°, φ=0°) is on +z, and
    φ = +30° moves the camera towards **+x**. The camera frame has columns (right, up, forward) with
    ``forward = normalize(position)`` and ``right = forward × (0,1,0)``; for the reference camera that
    is ``right = −x``, so world +x shows on the *left* of the reference image (the frame is
    mirror-handed relative to a standard look-at, whose right would be +x). A positive Δφ therefore
    moves the camera towards the reference image's left side, which is a *negative* azimuth step in
    Zero123's right-handed convention; upstream compensates with ``sin(−Δφ)`` and we keep that sign,
    because our cameras use exactly upstream's frame (``render/cameras.py`` follows SPEC 0).
    ``cos`` is even, so only the sine needs the flip. If the camera frame ever changes to a standard
    look-at, this sign must flip too. ``tests/test_guidance_priors.py`` checks it end to end, from
    ``camera_from_spherical`` through ``Views.from_cameras`` to the projection input.
    """
    dp = torch.as_tensor(dpolar_deg, dtype=torch.float64).flatten()
    da = torch.as_tensor(dazimuth_deg, dtype=torch.float64).flatten()
    dr = torch.as_tensor(dradius, dtype=torch.float64).flatten()
    dp, da, dr = torch.broadcast_tensors(dp, da, dr)
    emb = torch.stack(
        [torch.deg2rad(dp), torch.sin(torch.deg2rad(-da)), torch.cos(torch.deg2rad(da)), dr], dim=-1
    )
    return emb.float()


def camera_position(
    polar_deg: torch.Tensor | float, azimuth_deg: torch.Tensor | float, radius: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """``r·(sinθ sinφ, cosθ, sinθ cosφ)`` -> ``[N, 3]`` float64 (SPEC 0; y up, reference on +z)."""
    th = torch.deg2rad(torch.as_tensor(polar_deg, dtype=torch.float64).flatten())
    ph = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64).flatten())
    r = torch.as_tensor(radius, dtype=torch.float64).flatten()
    th, ph, r = torch.broadcast_tensors(th, ph, r)
    return r[:, None] * torch.stack([th.sin() * ph.sin(), th.cos(), th.sin() * ph.cos()], dim=-1)


def angle_weight(
    polar_deg: torch.Tensor | float,
    azimuth_deg: torch.Tensor | float,
    ref_polar_deg: float = REFERENCE_CAMERA[0],
    ref_azimuth_deg: float = REFERENCE_CAMERA[1],
    *,
    scale: float,
) -> torch.Tensor:
    """``λ_eff = scale · angle(v_cam, v_ref) / 180°`` ``[N]`` float64 (SPEC 3.8, ``zero123_grad_scale angle``).

    0 at the reference view and ``scale`` directly behind it; radii do not matter (unit vectors).
    """
    v = camera_position(polar_deg, azimuth_deg, 1.0)
    vr = camera_position(ref_polar_deg, ref_azimuth_deg, 1.0)
    cos = (v * vr).sum(-1).clamp(-1.0, 1.0)
    return scale * torch.rad2deg(torch.arccos(cos)) / 180.0


def clip_processor_pixels(processor: Callable[..., Any], x01: torch.Tensor) -> torch.Tensor:
    """Upstream's CLIP preprocessing (``pipeline_zero1to3._encode_image`` on ``(x*255).int()``): the model's
    ``CLIPImageProcessor`` fed ``[N, 3, H, W]`` in [0, 1] as integers 0..255, truncated -> ``[N, 3, S, S]``."""
    pixels = (x01.detach().float().cpu() * 255).int()
    return processor(images=pixels, return_tensors="pt").pixel_values


def clip_preprocess(x01: torch.Tensor, size: int) -> torch.Tensor:
    """Torch CLIP preprocessing of square ``[N, 3, H, W]`` in [0, 1]: bicubic antialiased resize to
    ``size``, clamp, normalise with CLIP mean/std (see the module docstring)."""
    x = x01.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class Zero123Guidance(DiffusionPrior):
    """Zero123-XL novel-view SDS (SPEC 3.8); implements ``Guidance`` (no prompt: image-conditioned).

    Args:
        components: Zero123-XL ``vae, unet, image_encoder, projection, scheduler``.
        guidance_scale: CFG scale (config ``static.zero123_guidance_scale``, 5).
        cfg_mode: ``"standard"`` upstream for Zero123 (SPEC 3.8) or ``"upstream"`` (the "+1" form).
        t_range: fraction range of the timestep draw (``static/dynamic.zero123_t_range``, 0.2–0.6).
        weight: λ (``static/dynamic.zero123_weight``, 40); with ``angle_weighting`` the effective
            weight is λ·angle/180°.
        reference: optional white-composited reference ``[1, 3, H, W]`` in [0, 1] (or call
            :meth:`set_reference`).
        angle_weighting: use the angle weight (upstream ``zero123_grad_scale angle``), else λ.
        image_size: Zero123 input size; None = ``unet.sample_size × VAE factor`` (256 for Zero123-XL).
        c_concat_mode: ``"mode"`` (original Zero123, SPEC 11.14) or ``"sample"`` (upstream).
        clip_preprocess: ``"torch"`` (:func:`clip_preprocess`) or ``"processor"`` (upstream:
            :func:`clip_processor_pixels` with ``components.image_processor``).
        latent_mode: posterior ``"sample"`` (upstream) or ``"mode"`` for the render latents.
        use_xformers: xformers attention if installed.
        checkpoint_encoder: recompute the VAE encoder in backward image by image instead of keeping
            its activations (``run.vae_checkpoint``; same gradients, less memory).
        generator: draws the reference's ``c_concat`` posterior sample (``c_concat_mode="sample"``).
    """

    name = "zero123"
    loss_key = "zero123"

    def __init__(
        self,
        components: Zero123Components,
        *,
        guidance_scale: float,
        cfg_mode: str,
        t_range: tuple[float, float],
        weight: float,
        reference: torch.Tensor | None = None,
        angle_weighting: bool = True,
        image_size: int | None = None,
        c_concat_mode: str,
        clip_preprocess: str,
        latent_mode: str = "sample",
        use_xformers: bool = False,
        checkpoint_encoder: bool,
        checkpoint_pixels: int,
        checkpoint_keep_pixels: int,
        generator: torch.Generator | None = None,
    ) -> None:
        self.image_encoder = components.image_encoder
        self.projection = components.projection
        super().__init__(
            vae=components.vae,
            unet=components.unet,
            scheduler=components.scheduler,
            frozen=(self.image_encoder, self.projection),
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
        self.image_processor = components.image_processor
        self.image_size = int(image_size or self.unet.config.sample_size * vae_scale_factor(self.vae))
        self.angle_weighting = bool(angle_weighting)
        if c_concat_mode not in ("mode", "sample"):
            raise InputError(f"c_concat_mode must be 'mode' or 'sample', got {c_concat_mode!r}")
        if clip_preprocess not in ("torch", "processor"):
            raise InputError(f"clip_preprocess must be 'torch' or 'processor', got {clip_preprocess!r}")
        if clip_preprocess == "processor" and self.image_processor is None:
            raise InputError(
                "clip_preprocess='processor' needs the model's feature_extractor/preprocessor_config.json",
                "use a Zero123 folder with its feature_extractor, or clip_preprocess='torch'",
            )
        self.c_concat_mode = c_concat_mode
        self.clip_preprocess = clip_preprocess
        self.clip_embeds: torch.Tensor | None = None  # [1, 1, D]
        self.c_concat: torch.Tensor | None = None  # [1, 4, h, w], unscaled
        if reference is not None:
            self.set_reference(reference, generator=generator)

    @torch.no_grad()
    def set_reference(self, reference: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Compute the CLIP embedding ``[1, 1, D]`` and ``c_concat`` ``[1, 4, h, w]`` of the reference once."""
        if reference.ndim == 3:
            reference = reference[None]
        if reference.ndim != 4 or reference.shape[:2] != (1, 3):
            raise InputError(f"the Zero123 reference must be [1, 3, H, W], got {tuple(reference.shape)}")
        enc_dtype = module_dtype(self.image_encoder)
        enc_device = module_device(self.image_encoder)
        if self.clip_preprocess == "processor":
            pix = clip_processor_pixels(self.image_processor, reference).to(enc_device, enc_dtype)
        else:
            size = int(self.image_encoder.config.image_size)
            pix = clip_preprocess(reference.to(enc_device), size).to(enc_dtype)
        embeds = self.image_encoder(pixel_values=pix).image_embeds[:, None].detach()
        self.clip_embeds = embeds.to(module_device(self.projection))  # the encoder may be parked elsewhere
        ref = resize(reference.to(module_device(self.vae)).float(), (self.image_size,) * 2)
        self.c_concat = encode_latents(
            self.vae, ref, sample=self.c_concat_mode == "sample", scale=False, generator=generator
        ).detach()

    @staticmethod
    def pose_embedding(views: Views) -> torch.Tensor:
        """``T [B·T, 4]`` of every frame's pose relative to the reference (:func:`camera_embedding`)."""
        n = views.batch * views.frames
        return camera_embedding(views.dpolar.reshape(n), views.dazimuth.reshape(n), views.dradius.reshape(n))

    def conditioning(self, views: Views) -> torch.Tensor:
        """``c = projection([clip_emb, T])`` -> ``[B·T, 1, D]`` for every frame of ``views``."""
        if self.clip_embeds is None:
            raise InputError("Zero123 guidance has no reference image", "call set_reference(image) first")
        cam = self.pose_embedding(views)
        pdtype = module_dtype(self.projection)
        emb = self.clip_embeds.to(pdtype).expand(cam.shape[0], 1, -1)
        x = torch.cat([emb, to_device(cam, emb.device, pdtype)[:, None, :]], dim=-1)
        return self.projection(x)

    def angle_weights(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ_eff [B·T], angle° [B·T])``: λ·angle(v_cam, v_ref)/180° or λ (SPEC 3.8)."""
        n = views.batch * views.frames
        rp, ra, _ = views.reference
        angle = angle_weight(views.polar.reshape(n), views.azimuth.reshape(n), rp, ra, scale=180.0).float()
        lam = self.weight * angle / 180.0 if self.angle_weighting else torch.full((n,), self.weight)
        return lam, angle

    def check_call(self, images: Tensor, views: Views) -> tuple[int, int]:
        if self.c_concat is None:
            raise InputError("Zero123 guidance has no reference image", "call set_reference(image) first")
        return super().check_call(images, views)

    def guide(
        self, images: Tensor, views: Views, *, generator: Gen, noise: Noise, t: Steps
    ) -> GuidanceOutput:
        """SDS on ``images [B, T, 3, H, W]`` seen from ``views`` (relative poses): ``noise`` ``[B·T, 4, h, w]``
        and ``t`` (int or ``[B·T]``) may be injected. Returns ``losses["zero123"]`` (fp32, ∂/∂z = g/(B·T))."""
        n = views.batch * views.frames
        z = self.encode(self.vae_input(images, (self.image_size,) * 2), generator)
        t, noise = self.draw(z, t, noise, n, generator)
        udtype = module_dtype(self.unet)
        with torch.no_grad():
            c = to_device(self.conditioning(views), z.device, udtype)
            cc = self.c_concat.to(device=z.device, dtype=udtype).expand(n, -1, -1, -1)
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t).to(udtype)
            x_in = torch.cat([torch.cat([zt, zt]), torch.cat([torch.zeros_like(cc), cc])], dim=1)
            t_dev = to_device(t, z.device)
            eps_hat = self.guided_noise(x_in, torch.cat([t_dev, t_dev]), torch.cat([torch.zeros_like(c), c]))
        lam, angle = self.angle_weights(views)
        w = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t)
        g = sds.sds_gradient(eps_hat, noise, lam * w, 1.0)
        loss = sds.sds_surrogate_loss(z, g)
        return GuidanceOutput(
            losses={self.loss_key: loss},
            diagnostics={
                "t": float(t.float().mean()),
                "lambda_eff": float(lam.mean()),
                "grad_norm": g.detach().norm(),  # converted when logged (no sync here)
                "angle_deg": float(angle.mean()),
            },
        )
