"""Zero123-XL SDS guidance (SPEC 3.8, 11.13, 11.14).

Reference conditioning, computed once from the white-composited reference RGB ``[1, 3, H, W]``:

* CLIP image embedding ``[1, 1, D]`` (``image_embeds`` of CLIPVisionModelWithProjection). We do the
  CLIP preprocessing in torch instead of the PIL CLIPImageProcessor: bicubic resize (antialiased) of
  the image to the encoder's ``image_size`` (224 for the real model; the reference is square, so
  the processor's "shortest edge 224 + centre crop 224" is the same resize), clamp to [0, 1], then
  normalise with the CLIP mean (0.48145466, 0.4578275, 0.40821073) and std
  (0.26862954, 0.26130258, 0.27577711). Upstream fed an int 0..255 tensor to the PIL processor;
  the difference is the resampling kernel only (SPEC 11.14).
* ``c_concat = VAE.encode(2x − 1)`` posterior MODE, unscaled (no 0.18215), at the Zero123 input size
  (original Zero123 uses the mode; upstream Animate124 sampled: ``c_concat_mode="sample"``).

Per call: the render is resized to 256² (the model's ``unet.sample_size × 8``), encoded to
``z = 0.18215·E(2x−1)`` with grad, ``t ~ U{200…600}``, and the camera embedding

    T = [rad(Δpolar), sin(rad(−Δaz)), cos(rad(Δaz)), Δr]        (upstream sign, see camera_embedding)

is projected with the CLIP embedding: ``c = projection([clip_emb, T])`` ``[N, 1, D]``. The
unconditional branch uses zeros after the projection and a zero ``c_concat``; the UNet input is
``[z_t ‖ c_concat]`` (8 channels), batch ``[uncond, cond]``; standard CFG with s = 5. The gradient is
``g = λ_eff · (1 − ᾱ_t) · (ε̂ − ε)`` with the angle weight ``λ_eff = λ · angle(v_cam, v_ref)/180°``
(λ = 40 upstream), injected through the surrogate loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from animate124.errors import InputError
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
    per_sample,
    resize,
    timesteps_and_noise,
    vae_scale_factor,
)

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: the reference camera of every stage: polar 90°, azimuth 0°, radius 1.8 (SPEC 0, 3.4)
REFERENCE_CAMERA = (90.0, 0.0, 1.8)


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
    look-at, this sign must flip too.
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
    scale: float = 40.0,
) -> torch.Tensor:
    """``λ_eff = scale · angle(v_cam, v_ref) / 180°`` ``[N]`` float64 (SPEC 3.8, ``zero123_grad_scale angle``).

    0 at the reference view and ``scale`` directly behind it; radii do not matter (unit vectors).
    """
    v = camera_position(polar_deg, azimuth_deg, 1.0)
    vr = camera_position(ref_polar_deg, ref_azimuth_deg, 1.0)
    cos = (v * vr).sum(-1).clamp(-1.0, 1.0)
    return scale * torch.rad2deg(torch.arccos(cos)) / 180.0


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


class Zero123Guidance:
    """Zero123-XL novel-view SDS (SPEC 3.8).

    Args:
        components: object with ``vae, unet, image_encoder, projection, scheduler`` (Zero123Components).
        reference: optional white-composited reference ``[1, 3, H, W]`` in [0, 1] (or call
            :meth:`set_reference`).
        image_size: Zero123 input size; None = ``unet.sample_size × VAE factor`` (256 for Zero123-XL).
        guidance_scale: standard CFG scale (5).
        t_range: 0.2–0.6.
        weight: λ (40 upstream); with ``angle_weighting`` the effective weight is λ·angle/180°.
        angle_weighting: use the angle weight (upstream ``zero123_grad_scale angle``), else λ.
        reference_camera: (polar°, azimuth°, radius) of the reference view.
        c_concat_mode: ``"mode"`` (default, original Zero123, SPEC 11.14) or ``"sample"`` (upstream).
        latent_mode: posterior ``"sample"`` (upstream) or ``"mode"`` for the render latents.
    """

    def __init__(
        self,
        components: object,
        *,
        reference: torch.Tensor | None = None,
        image_size: int | None = None,
        guidance_scale: float = 5.0,
        cfg_mode: str = "standard",
        t_range: tuple[float, float] = (0.2, 0.6),
        weight: float = 40.0,
        angle_weighting: bool = True,
        reference_camera: tuple[float, float, float] = REFERENCE_CAMERA,
        c_concat_mode: str = "mode",
        latent_mode: str = "sample",
        use_xformers: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.vae = components.vae  # type: ignore[attr-defined]
        self.unet = components.unet  # type: ignore[attr-defined]
        self.image_encoder = components.image_encoder  # type: ignore[attr-defined]
        self.projection = components.projection  # type: ignore[attr-defined]
        self.scheduler = components.scheduler  # type: ignore[attr-defined]
        freeze(self.vae, self.unet, self.image_encoder, self.projection)
        maybe_enable_xformers([self.unet, self.vae], use_xformers)
        self.image_size = int(image_size or self.unet.config.sample_size * vae_scale_factor(self.vae))
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self.t_range = tuple(t_range)
        self.weight = float(weight)
        self.angle_weighting = bool(angle_weighting)
        self.reference_camera = tuple(float(v) for v in reference_camera)
        self.c_concat_mode = c_concat_mode
        self.latent_sample = latent_mode == "sample"
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler)
        self.num_train_timesteps = num_train_timesteps_of(self.scheduler)
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
        dev = next(self.image_encoder.parameters()).device
        size = int(self.image_encoder.config.image_size)
        pix = clip_preprocess(reference.to(dev), size).to(enc_dtype)
        self.clip_embeds = self.image_encoder(pixel_values=pix).image_embeds[:, None].detach()
        ref = resize(reference.to(next(self.vae.parameters()).device).float(), (self.image_size,) * 2)
        self.c_concat = encode_latents(
            self.vae, ref, sample=self.c_concat_mode == "sample", scale=False, generator=generator
        ).detach()

    def conditioning(self, cam: torch.Tensor) -> torch.Tensor:
        """``c = projection([clip_emb, T])`` -> ``[N, 1, D]`` for camera vectors ``cam [N, 4]``."""
        if self.clip_embeds is None:
            raise InputError("Zero123 guidance has no reference image", "call set_reference(image) first")
        pdtype = module_dtype(self.projection)
        n = cam.shape[0]
        emb = self.clip_embeds.to(pdtype).expand(n, 1, -1)
        x = torch.cat([emb, cam.to(device=emb.device, dtype=pdtype)[:, None, :]], dim=-1)
        return self.projection(x)

    def __call__(
        self,
        images: torch.Tensor,
        *,
        polar_deg: torch.Tensor | float | Iterable[float],
        azimuth_deg: torch.Tensor | float | Iterable[float],
        radius: torch.Tensor | float | Iterable[float],
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> GuidanceOutput:
        """SDS on ``images [B, T, 3, H, W]`` seen from absolute cameras (one per B or per B·T).

        Δpolar = polar − ref_polar, Δaz = azimuth − ref_azimuth, Δr = radius − ref_radius.
        Returns ``losses["zero123"]`` (fp32, ∂/∂z = g/(B·T)).
        """
        if self.c_concat is None:
            raise InputError("Zero123 guidance has no reference image", "call set_reference(image) first")
        b, tt = check_images(images)
        n = b * tt
        rp, ra, rr = self.reference_camera
        pol = per_sample(polar_deg, n, rp)
        azi = per_sample(azimuth_deg, n, ra)
        rad = per_sample(radius, n, rr)
        cam = camera_embedding(pol - rp, azi - ra, rad - rr)

        x = resize(images.reshape(n, *images.shape[2:]).to(module_dtype(self.vae)), (self.image_size,) * 2)
        z = encode_latents(self.vae, x, sample=self.latent_sample, generator=generator)
        t, noise = timesteps_and_noise(z, t, noise, n, self.t_range, self.num_train_timesteps, generator)

        udtype = module_dtype(self.unet)
        with torch.no_grad():
            c = self.conditioning(cam.to(z.device)).to(udtype)
            cc = self.c_concat.to(device=z.device, dtype=udtype).expand(n, -1, -1, -1)
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t).to(udtype)
            x_in = torch.cat([torch.cat([zt, zt]), torch.cat([torch.zeros_like(cc), cc])], dim=1)
            t_dev = t.to(z.device)
            eps = self.unet(
                x_in, torch.cat([t_dev, t_dev]), encoder_hidden_states=torch.cat([torch.zeros_like(c), c])
            ).sample
            eps_u, eps_c = eps.chunk(2)
            eps_hat = sds.cfg(eps_u.float(), eps_c.float(), self.guidance_scale, self.cfg_mode)
        angle = angle_weight(pol, azi, rp, ra, scale=180.0).float()  # degrees
        lam = self.weight * angle / 180.0 if self.angle_weighting else torch.full((n,), self.weight)
        w = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t)
        g = sds.sds_gradient(eps_hat, noise, lam * w, 1.0)
        loss = sds.sds_surrogate_loss(z, g)
        return GuidanceOutput(
            losses={"zero123": loss},
            diagnostics={
                "t": float(t.float().mean()),
                "lambda_eff": float(lam.mean()),
                "grad_norm": float(g.norm()),
                "angle_deg": float(angle.mean()),
            },
        )
