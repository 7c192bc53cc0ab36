"""Oracle priors: diffusion "denoisers" that know the ground truth (issue 10).

An oracle implements the :class:`~animate124.guidance.interface.Guidance` protocol and is handed to the
real stage code in place of SD / Zero123 / the video prior; the stage cannot tell the difference.
It works in pixel space (``z = 2x − 1`` of the render, no VAE) with the real priors' noise schedule
(SD 1.5's scaled-linear DDPM ᾱ over 1000 steps, which ModelScope and Zero123-XL share), the same
timestep draw and the same SDS weighting and injection (``animate124/guidance/sds.py``)::

    t ~ U{⌊1000·lo⌋ … ⌊1000·hi⌋},  ε ~ N(0, I),  z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε
    ε̂ = (z_t − √ᾱ_t·z₀) / √(1 − ᾱ_t)             (the exact noise estimate of a denoiser that knows z₀)
    g = λ·w(t)·(ε̂ − ε),  w(t) = 1 − ᾱ_t
    loss = ½‖z − sg(z − g)‖² / N                  (∂loss/∂z = g / N)

Since ``ε̂ − ε = √(ᾱ/(1−ᾱ))·(z − z₀)``, SDS becomes a noise-free weighted L2 towards the ground truth:
``g = λ·√(ᾱ(1−ᾱ))·(z − z₀)``. If a stage then converges to the wrong object, the path is broken.

The ground truth ``z₀`` of a render is found **by its camera pose**: :class:`PoseBank` holds the dataset's
camera-to-world matrices and images and returns the image whose c2w is nearest to the one in
``views.c2w`` (max-abs difference ≤ ``atol``); a pose that is not in the bank is an error. Nothing is
passed alongside the cameras: the oracle sees exactly what a real prior sees.

* :class:`ImageOracle` (``name="sd"``): B·T independent images, one t per image (as the SD prior).
* :class:`VideoOracle` (``name="video"``): B clips of T frames, one t per clip (as the video prior),
  each frame looked up by its own pose.

Samplers that replace a stage's random cameras: :func:`bank_camera_sampler` (one of the bank's cameras
per step) and :func:`consecutive_clip_sampler` (F consecutive frames of a time-ordered capture, each
with its own camera and time).

The renders must be composited on white (``shading.random_background=false``): the oracle does not know
a random background colour. Lighting it cannot know either, so the oracle checks use albedo shading.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from animate124.errors import Animate124Error
from animate124.guidance import sds
from animate124.guidance.common import check_images
from animate124.guidance.interface import GuidanceOutput, Views
from animate124.render.cameras import Cameras, focal_from_fovy

__all__ = [
    "OracleError",
    "sd_alphas_cumprod",
    "PoseBank",
    "ImageOracle",
    "VideoOracle",
    "bank_camera_sampler",
    "consecutive_clip_sampler",
]

#: SD 1.5 (and ModelScope, Zero123-XL) DDPM schedule: scaled-linear betas (scheduler_config.json)
SD_BETA_START = 0.00085
SD_BETA_END = 0.012
SD_TIMESTEPS = 1000


class OracleError(Animate124Error):
    """The oracle was asked about a camera it has no ground truth for (or was built inconsistently)."""


def sd_alphas_cumprod(
    n: int = SD_TIMESTEPS, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END
) -> Tensor:
    """ᾱ [n] of diffusers' ``scaled_linear`` schedule, computed as diffusers does (fp32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class PoseBank:
    """Ground-truth images indexed by camera pose.

    Args:
        c2w: ``[N, 4, 4]`` camera-to-world matrices of the images (the cameras the stage will be handed).
        images: ``[N, H, W, 3]`` in [0, 1], composited on white.
        times: optional ``[N]`` capture times (informational: the lookup uses the pose only).
        atol: a query pose matches an entry when ``max|c2w_query − c2w_entry| ≤ atol`` (over the 3×4
            upper rows). Bank entries closer to each other than ``2·atol`` are refused as ambiguous.
        antialias: how an image is brought to the render's size. False (default): bilinear
            interpolation at the render's pixel centres (``align_corners=False``, the codebase's resize
            convention), i.e. the ground truth *point-sampled* where the renderer casts its rays, which
            is what a pixel-centre render computes, so a field fitted from small renders stays sharp at
            the full size. True: an antialiased (area-like) resize, whose targets are blurred by the
            render's pixel footprint.
        fovy_deg: ``[N]`` (or one) vertical field of view of the images; needed for rotated queries.
        max_rotation_deg: a query whose *centre* matches an entry (within ``atol``) but whose rotation
            differs by at most this angle is answered exactly: a pinhole camera turned about its centre
            sees the same rays, so its image is the homography ``K R K⁻¹`` warp of the captured one
            (bilinear at the query's pixel centres, white outside the capture). 0 (default) refuses any
            pose that is not in the bank. This lets a sampler jitter a camera by a fraction of a pixel
            (:func:`consecutive_clip_sampler`'s ``jitter_px``) so that small renders of a fixed set of
            cameras do not cast the same rays at every step.
    """

    def __init__(
        self,
        c2w: Tensor,
        images: Tensor,
        times: Tensor | None = None,
        *,
        atol: float = 1e-4,
        antialias: bool = False,
        fovy_deg: Tensor | float | None = None,
        max_rotation_deg: float = 0.0,
    ):
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise OracleError(f"c2w must be [N,4,4], got {tuple(c2w.shape)}")
        if images.ndim != 4 or images.shape[0] != c2w.shape[0] or images.shape[-1] != 3:
            raise OracleError(f"images must be [N={c2w.shape[0]},H,W,3], got {tuple(images.shape)}")
        self.c2w = c2w.detach().to("cpu", torch.float64)
        self.images = images.detach().to("cpu", torch.float32).permute(0, 3, 1, 2).contiguous()  # [N,3,H,W]
        self.times = None if times is None else times.detach().cpu().float()
        self.atol = float(atol)
        self.antialias = bool(antialias)
        n = len(self)
        if n > 1:
            d = self._distances(self.c2w)
            d.fill_diagonal_(float("inf"))
            if float(d.min()) <= 2 * self.atol:
                i, j = divmod(int(d.argmin()), n)
                raise OracleError(f"bank poses {i} and {j} are within {2 * self.atol} of each other")
        self.max_rotation_deg = float(max_rotation_deg)
        self.fovy_deg: Tensor | None = None
        if fovy_deg is not None:
            self.fovy_deg = torch.as_tensor(fovy_deg, dtype=torch.float64).flatten().cpu().expand(n).clone()
        if self.max_rotation_deg > 0 and self.fovy_deg is None:
            raise OracleError("a bank that answers rotated cameras (max_rotation_deg > 0) needs fovy_deg")
        self._cache: dict[tuple[int, int, str], Tensor] = {}
        self._c2w_dev: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def _distances(self, query: Tensor) -> Tensor:
        """``[M, N]`` max-abs difference of the upper 3×4 of each query pose to each bank pose."""
        q = query.to(self.c2w)[:, None, :3, :]
        return (q - self.c2w[None, :, :3, :]).abs().amax(dim=(-1, -2))

    def lookup(self, c2w: Tensor) -> Tensor:
        """``[M, 4, 4]`` query poses -> ``[M]`` bank indices (CPU long); OracleError for an unknown pose."""
        return self.match(c2w)[0]

    def match(self, c2w: Tensor) -> tuple[Tensor, Tensor]:
        """``[M, 4, 4]`` query poses -> (``[M]`` bank indices, ``[M]`` bool "rotated about the entry's
        centre") on the CPU; OracleError for a pose the bank cannot answer (see ``max_rotation_deg``)."""
        q = c2w.detach().reshape(-1, 4, 4).cpu().to(torch.float64)
        d = self._distances(q)
        best, idx = d.min(dim=1)
        rotated = best > self.atol
        if not bool(rotated.any()):
            return idx, rotated
        rows = torch.nonzero(rotated).flatten()
        near = (q[rows, None, :3, 3] - self.c2w[None, :, :3, 3]).abs().amax(dim=-1) <= self.atol  # [M', N]
        rel = self.c2w[None, :, :3, :3].transpose(-1, -2) @ q[rows, None, :3, :3]  # R_bᵀ R_q
        cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.arccos(cos)).masked_fill(~near, float("inf"))
        a_best, i_best = angle.min(dim=1)
        bad = torch.nonzero(a_best > self.max_rotation_deg).flatten()
        if bad.numel():
            k = int(rows[bad[0]])
            turned = float(a_best[bad[0]])
            why = (
                f"no bank camera has its centre (within {self.atol:g})"
                if not math.isfinite(turned)
                else f"the camera at its centre is turned by {turned:.3g}° > {self.max_rotation_deg:g}°"
            )
            raise OracleError(
                f"the oracle has no ground truth for camera {k} of the query: the nearest bank pose "
                f"(#{int(idx[k])}) differs by {float(best[k]):.3g} > {self.atol:g} and {why}",
                "the stage rendered a camera that the sampler did not hand it",
            )
        idx[rows] = i_best
        return idx, rotated

    def resized(self, height: int, width: int, device: torch.device | str) -> Tensor:
        """All images ``[N, 3, height, width]`` on ``device`` (resized as ``antialias`` says; cached)."""
        key = (int(height), int(width), str(device))
        if key not in self._cache:
            x = self.images
            if tuple(x.shape[-2:]) != (height, width):
                x = F.interpolate(
                    x, size=(height, width), mode="bilinear", antialias=self.antialias, align_corners=False
                )
            self._cache[key] = x.clamp(0, 1).to(device)
        return self._cache[key]

    def ground_truth(self, c2w: Tensor, height: int, width: int, device: torch.device | str) -> Tensor:
        """``[M, 3, height, width]`` ground truth of the query poses ``[M, 4, 4]``."""
        idx, rotated = self.match(c2w)
        out = self.resized(height, width, device)[idx.to(device)]
        if bool(rotated.any()):
            rows = torch.nonzero(rotated).flatten()
            q = c2w.detach().reshape(-1, 4, 4)[rows.to(c2w.device)]
            out[rows.to(out.device)] = self.warped(q, idx[rows], height, width, device)
        return out

    def warped(self, c2w: Tensor, idx: Tensor, height: int, width: int, device: torch.device | str) -> Tensor:
        """``[M, 3, height, width]``: bank images ``idx`` seen by cameras ``c2w`` that share their centres.

        For each pixel centre of the query (the renderer's convention, ``render/cameras.py``
        ``generate_rays``), the ray direction is taken into the bank camera's frame and projected with the
        bank image's focal length; the full-resolution image is sampled there (bilinear, white outside).
        """
        assert self.fovy_deg is not None
        dev = torch.device(device)
        full = self.resized(self.images.shape[-2], self.images.shape[-1], dev)[idx.to(dev)]
        hb, wb = full.shape[-2:]
        fovy = self.fovy_deg[idx].to(dev)  # [M] float64
        f_q, f_b = focal_from_fovy(fovy, height), focal_from_fovy(fovy, hb)
        jj, ii = torch.meshgrid(
            torch.arange(height, dtype=torch.float64, device=dev),
            torch.arange(width, dtype=torch.float64, device=dev),
            indexing="ij",
        )
        x = (ii.reshape(1, -1) + 0.5 - width / 2.0) / f_q[:, None]
        y = -(jj.reshape(1, -1) + 0.5 - height / 2.0) / f_q[:, None]
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [M, HW, 3]
        r_q = c2w[:, :3, :3].to(dev, torch.float64)
        r_b = self.c2w[idx, :3, :3].to(dev)
        d_b = d_cam @ (r_b.transpose(1, 2) @ r_q).transpose(1, 2)  # R_bᵀ R_q d
        depth = -d_b[..., 2]
        u = d_b[..., 0] / depth * f_b[:, None] + wb / 2.0  # continuous pixel coordinates (centres at k+½)
        v = -d_b[..., 1] / depth * f_b[:, None] + hb / 2.0
        grid = torch.stack([2.0 * u / wb - 1.0, 2.0 * v / hb - 1.0], dim=-1).view(-1, height, width, 2)
        out = F.grid_sample(
            full - 1.0, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return (out + 1.0).clamp(0, 1)

    def positions(self) -> Tensor:
        """``[N, 3]`` camera centres (float64, CPU)."""
        return self.c2w[:, :3, 3]


def _device_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """ε ~ N(0, I) shaped like ``like`` (fp32, on its device), drawn reproducibly from ``generator``.

    Noise images are large in pixel space; instead of drawing them on the generator's device (the
    stages' generator is a CPU one) and copying, one 63-bit seed is drawn from ``generator`` and the
    noise is drawn on ``like``'s device from a generator with that seed. The result depends only on the
    generator's state, so a resumed run draws the same noise.
    """
    if generator is None or generator.device == like.device:
        gdev = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=gdev, dtype=torch.float32).to(like.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    g = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(like.shape, generator=g, device=like.device, dtype=torch.float32)


class _Oracle:
    """Shared machinery; subclasses define the latent layout (images vs. clips)."""

    name = "oracle"
    loss_key = "oracle"

    def __init__(
        self,
        bank: PoseBank,
        *,
        weight: float,
        t_range: tuple[float, float],
        alphas_cumprod: Tensor | None = None,
        sign: float = 1.0,
        angle_reference: Tensor | None = None,
    ) -> None:
        self.bank = bank
        self.weight = float(weight)
        self.t_range = (float(t_range[0]), float(t_range[1]))
        self.alphas_cumprod = (
            (sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).float().cpu()
        )
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.sign = float(sign)
        self.angle_reference = None if angle_reference is None else angle_reference.double().cpu().reshape(3)

    # -- subclass hooks -------------------------------------------------------------------------------
    def _to_latents(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _batch(self, b: int, t: int) -> int:
        """How many independent samples (one timestep each) a ``[B, T]`` call holds."""
        raise NotImplementedError

    # -- the prior -------------------------------------------------------------------------------------
    def angle_weights(self, c2w: Tensor) -> Tensor:
        """``[M]`` angle factor ``angle(camera, reference)/180°`` of Zero123's weighting (SPEC 3.8), or 1."""
        m = c2w.shape[0]
        if self.angle_reference is None:
            return torch.ones(m, dtype=torch.float32)
        p = F.normalize(c2w[:, :3, 3].detach().cpu().double(), dim=-1)
        r = F.normalize(self.angle_reference, dim=0)
        ang = torch.rad2deg(torch.arccos((p @ r).clamp(-1.0, 1.0)))
        return (ang / 180.0).float()

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        step: int,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        t: Tensor | int | None = None,
    ) -> GuidanceOutput:
        b, tt = check_images(images)
        views.check(images)
        if views.c2w is None:
            raise OracleError(
                "the oracle needs the cameras' c2w in Views (build them with Views.from_cameras)"
            )
        h, w = images.shape[-2:]
        c2w = views.c2w.reshape(b * tt, 4, 4)
        x0 = self.bank.ground_truth(c2w, h, w, images.device).reshape(b, tt, 3, h, w)
        z = self._to_latents(images.float() * 2.0 - 1.0)
        z0 = self._to_latents(x0 * 2.0 - 1.0)
        n = self._batch(b, tt)
        if t is None:
            t = sds.sample_timesteps(n, self.t_range, self.num_train_timesteps, generator)
        t = torch.as_tensor(t, dtype=torch.long).flatten().cpu().expand(n).clone()
        if noise is None:
            noise = _device_noise(z, generator)
        noise = noise.to(z.device, torch.float32)
        a = self.alphas_cumprod[t].to(z.device).view((-1,) + (1,) * (z.ndim - 1))
        with torch.no_grad():
            zt = sds.add_noise(self.alphas_cumprod, z.detach(), noise, t)
            eps_hat = (zt - a.sqrt() * z0) / (1.0 - a).sqrt()
        lam = self.angle_weights(c2w).reshape(b, tt)
        lam = lam.reshape(n, -1).mean(dim=1)  # one weight per sample (a clip's frames share it)
        wt = sds.w_one_minus_alpha_bar(self.alphas_cumprod, t) * lam
        g = sds.sds_gradient(eps_hat, noise, wt, self.sign * self.weight)
        loss = sds.sds_surrogate_loss(z, g)
        with torch.no_grad():
            mse = F.mse_loss(images.detach().float().clamp(0, 1), x0)
        return GuidanceOutput(
            losses={self.loss_key: loss},
            diagnostics={
                "t": float(t.float().mean()),
                "w": float(wt.mean()),
                "grad_norm": float(g.norm()),
                "psnr": -10.0 * math.log10(max(float(mse), 1e-12)),
            },
        )


class ImageOracle(_Oracle):
    """Image prior: the B·T frames are independent images, one t each (SD 1.5's layout, ``"sd"``).

    ``angle_reference`` (a camera position ``[3]``) multiplies λ by ``angle/180°`` as Zero123's weighting;
    ``name`` / ``loss_key`` can be changed to stand in for another image prior (``"zero123"``).
    """

    name = "sd"
    loss_key = "sds"

    def __init__(self, bank: PoseBank, *, name: str = "sd", loss_key: str = "sds", **kw) -> None:
        super().__init__(bank, **kw)
        self.name = name
        self.loss_key = loss_key

    def _to_latents(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *x.shape[2:])  # [B·T, 3, H, W]

    def _batch(self, b: int, t: int) -> int:
        return b * t


class VideoOracle(_Oracle):
    """Video prior: each of the B rows is one clip ``[3, T, H, W]`` with one t (the video prior's layout)."""

    name = "video"
    loss_key = "video_sds"

    def _to_latents(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]

    def _batch(self, b: int, t: int) -> int:
        return b


# --------------------------------------------------------------------------------------------- samplers
def bank_camera_sampler(cameras: Cameras, size: int) -> Callable[[torch.Generator], Cameras]:
    """A static stage's camera sampler: one of ``cameras`` per step, uniformly, rendered at ``size``²."""
    cams = cameras.with_size(size, size)

    def sample(generator: torch.Generator) -> Cameras:
        i = int(torch.randint(0, len(cams), (1,), generator=generator))
        return cams[i]

    return sample


def consecutive_clip_sampler(
    cameras: Cameras, times: Tensor, frames: int, size: int, *, jitter_px: float = 0.0
) -> Callable[[torch.Generator], object]:
    """A dynamic stage's clip sampler: ``frames`` consecutive frames of a time-ordered capture.

    Each frame has its own camera and time (a moving-camera clip: ``static_camera=False``);
    ``from_zero`` when the clip starts at the first frame (t = times[0], which must be 0).

    ``jitter_px > 0`` turns each frame's camera about its centre by a random angle of up to ``jitter_px``
    pixels of the render (uniform, about the camera's up and right axes), so that a small render of a
    fixed capture does not cast the same rays at every step; the bank must answer rotated cameras
    (``PoseBank(max_rotation_deg=...)``). The draw comes from the stage's generator (resumable).
    """
    from animate124.stages.system import Clip

    if times.ndim != 1 or times.shape[0] != len(cameras):
        raise OracleError(f"times must be [{len(cameras)}], got {tuple(times.shape)}")
    if len(cameras) < frames:
        raise OracleError(f"a clip of {frames} frames needs at least {frames} cameras, got {len(cameras)}")
    if bool((times[1:] < times[:-1]).any()):
        raise OracleError("the capture's frames must be in time order")
    cams = cameras.with_size(size, size)
    tdev = times.float().to(cams.device)

    def sample(generator: torch.Generator) -> Clip:
        start = int(torch.randint(0, len(cams) - frames + 1, (1,), generator=generator))
        sl = slice(start, start + frames)
        from_zero = start == 0 and float(tdev[0]) == 0.0
        clip = cams[sl]
        if jitter_px > 0:
            f = focal_from_fovy(clip.fovy_deg.double().cpu(), size)  # [F] pixels
            ang = (torch.rand(frames, 2, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * jitter_px
            # in float64 on the CPU: on the H200 the float32 CUDA product moved the centres by ~3e-3
            turned = clip.c2w.detach().cpu().double() @ _turn(ang[:, 0] / f, ang[:, 1] / f)
            clip = replace(clip, c2w=turned.to(clip.c2w))
        return Clip(clip, tdev[sl][None].clone(), from_zero, False)

    return sample


def _turn(yaw: Tensor, pitch: Tensor) -> Tensor:
    """``[F, 4, 4]`` camera-frame rotations: ``yaw`` about the camera's up axis (y), then ``pitch`` about
    its right axis (x), radians; right-multiplying a c2w turns the camera about its centre."""
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).view(-1, 3, 3)
    out = torch.eye(4, dtype=yaw.dtype).repeat(yaw.shape[0], 1, 1)
    out[:, :3, :3] = ry @ rx
    return out
