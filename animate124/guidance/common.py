"""Helpers shared by the diffusion priors: freezing, dtype/device, VAE encoding, resizing, timesteps
and noise.

Plain functions, no state: the priors' shared base lives in ``base.py``, the call interface and its types in
``interface.py``, the formulas in ``sds.py``. The VAE *encoder* runs with grad so the SDS gradient reaches the rendered images
(SPEC 3.7-2); the UNet runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from animate124.errors import InputError
from animate124.transfer import to_device

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler


log = logging.getLogger(__name__)

#: latent scaling of the SD 1.x VAE (SPEC 3.7-2); the VAE config's ``scaling_factor`` wins when present.
SD_LATENT_SCALE = 0.18215


def freeze(*modules: torch.nn.Module | None) -> None:
    """Put modules in eval mode and switch off ``requires_grad`` for all their parameters."""
    for m in modules:
        if m is None:
            continue
        m.eval()
        m.requires_grad_(False)


#: the parts of a diffusers ``AutoencoderKL`` that only decode: score distillation never runs them
VAE_DECODER_PARTS = ("decoder", "post_quant_conv")


def park_encoders(prior: object, device: torch.device | str = "cpu") -> object:
    """Move the prior's text and image encoders, and its VAE's decoder, to ``device`` (the CPU).

    The priors embed their prompts (and Zero123 its reference) when they are built and keep the
    embeddings on the training device; the encoders are idle afterwards. The VAE decoder is never used:
    score distillation only encodes. Parking them frees their GPU memory (text/image encoders 0.8-1.4 GiB
    per stage, BENCHMARKS.md §8.4; each fp32 VAE decoder 0.18 GiB) and changes no number the training
    uses. A later re-embedding (``set_prompt``, ``set_reference``) runs on the parked encoder and moves the
    result to the training device; a decode would need ``prior.vae.to(device)`` first. Config:
    ``run.park_encoders``. Returns ``prior``.
    """
    text = getattr(prior, "text", None)
    cache = getattr(text, "cache", None)
    if cache is not None:
        cache.text_encoder.to(device)
    image_encoder = getattr(prior, "image_encoder", None)
    if isinstance(image_encoder, torch.nn.Module):
        image_encoder.to(device)
    vae = getattr(prior, "vae", None)
    for name in VAE_DECODER_PARTS:
        part = getattr(vae, name, None)
        if isinstance(part, torch.nn.Module):
            part.to(device)
    return prior


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the first floating-point parameter (``torch.float32`` for a parameter-less module)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of the first parameter (CPU for a parameter-less module)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def maybe_enable_xformers(modules: Iterable[torch.nn.Module | None], use_xformers: bool) -> bool:
    """Switch the given diffusers models to xformers attention if asked *and* installed.

    The default (PyTorch SDPA, ``AttnProcessor2_0``) is fast on torch 2; xformers is optional
    (ecosystem.md section 2). Returns whether xformers is now active.
    """
    if not use_xformers:
        return False
    try:
        from diffusers.utils.import_utils import is_xformers_available
    except ImportError:  # pragma: no cover - very old diffusers
        return False
    if not is_xformers_available():
        log.warning("use_xformers=True but xformers is not installed; using PyTorch SDPA attention")
        return False
    for m in modules:
        if m is not None and hasattr(m, "enable_xformers_memory_efficient_attention"):
            m.enable_xformers_memory_efficient_attention()
    return True


def check_images(images: torch.Tensor, name: str = "images") -> tuple[int, int]:
    """Validate a ``[B, T, 3, H, W]`` batch and return ``(B, T)``."""
    if images.ndim != 5 or images.shape[2] != 3:
        raise InputError(
            f"{name} must be shaped [B, T, 3, H, W], got {tuple(images.shape)}",
            "pass a still as [B, 1, 3, H, W]",
        )
    return int(images.shape[0]), int(images.shape[1])


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[N, C, H, W]`` to ``size`` (no-op when already that size).

    Upstream uses ``F.interpolate(..., mode="bilinear", align_corners=False)`` without antialiasing for
    both up- (128 -> 512) and down-sampling (SPEC 3.7-1); we do the same.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Spatial down-sampling factor of an AutoencoderKL: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_scaling(vae: AutoencoderKL) -> float:
    """``vae.config.scaling_factor`` (0.18215 for SD 1.x), falling back to :data:`SD_LATENT_SCALE`."""
    return float(getattr(vae.config, "scaling_factor", SD_LATENT_SCALE) or SD_LATENT_SCALE)


#: pixels the encoder recomputes at once in backward under ``checkpoint=True``: 4 frames at 256² (about
#: 2.4 GiB of activations in fp16 autocast); an image larger than this is recomputed alone, with the
#: encoder's own per-block checkpointing on (a 1024² image: ~10 GiB of activations otherwise)
CHECKPOINT_PIXELS = 4 * 256 * 256


def _moments(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    return vae.encode(x).latent_dist.parameters


def encoder_stages(vae: AutoencoderKL) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """A diffusers ``AutoencoderKL``'s encoding as consecutive pieces whose composition is ``vae.encode``'s
    moments: ``conv_in``, each down block, the mid block, and the tail (output norm, activation, ``conv_out``,
    ``quant_conv``). None for another kind of VAE or a tiling one (then the encoder's own block
    checkpointing is used)."""
    enc = getattr(vae, "encoder", None)
    parts = ("conv_in", "down_blocks", "mid_block", "conv_norm_out", "conv_act", "conv_out")
    if (
        enc is None
        or not all(getattr(enc, n, None) is not None for n in parts)
        or getattr(vae, "use_tiling", False)
    ):
        return None
    quant = getattr(vae, "quant_conv", None)

    def tail(h: torch.Tensor) -> torch.Tensor:
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(h)))
        return quant(h) if quant is not None else h

    return [enc.conv_in, *enc.down_blocks, enc.mid_block, tail]


class _RecomputedEncoder(torch.autograd.Function):
    """Moments of the whole batch in one no-grad pass; backward recomputes the encoder in chunks.

    Only the input is kept. Backward re-runs ``chunk`` images at a time under the forward's autocast state
    and back-propagates each chunk at once, so the activations alive at any moment are one chunk's. With
    ``inner`` (images above the pixel budget) the forward also keeps the inputs of the encoder's pieces
    (:func:`encoder_stages`; a 1024² image: ~0.4 GiB in fp16) and backward recomputes and back-propagates
    one piece at a time, the last first: the activations alive are one piece's, and the encoder runs twice
    per image in all, where its own block checkpointing would run it three times (the no-grad pass, the
    checkpointed pass, the blocks' recompute). Gradients reach the input only (the priors' VAEs are frozen:
    :func:`encoder_moments` takes the generic path otherwise).
    """

    @staticmethod
    def forward(ctx, x, vae, chunk, inner):
        ctx.vae, ctx.chunk, ctx.inner = vae, chunk, inner
        dev = x.device.type
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.stages = encoder_stages(vae) if inner else None
        if ctx.stages is None:
            ctx.save_for_backward(x)
            return _moments(vae, x)
        h, bounds = x, []
        for stage in ctx.stages:
            bounds.append(h)
            h = stage(h)
        ctx.save_for_backward(*bounds)  # the input and the input of every later piece
        return h

    @staticmethod
    def backward(ctx, grad):
        x, *later = ctx.saved_tensors
        dev, enabled, dtype = ctx.autocast
        vae, chunk = ctx.vae, ctx.chunk
        gx = torch.empty_like(x)
        if ctx.stages is not None:
            bounds = [x, *later]
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                for s in range(0, x.shape[0], chunk):
                    g = grad[s : s + chunk]
                    for stage, b in zip(reversed(ctx.stages), reversed(bounds), strict=True):
                        bi = b[s : s + chunk].detach().requires_grad_(True)
                        (g,) = torch.autograd.grad(stage(bi), bi, g)
                    gx[s : s + chunk] = g
            return gx, None, None, None
        inner = ctx.inner and hasattr(vae, "enable_gradient_checkpointing")
        was = bool(getattr(vae.encoder, "gradient_checkpointing", False))
        try:
            if inner:
                vae.enable_gradient_checkpointing()
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                for s in range(0, x.shape[0], chunk):
                    xi = x[s : s + chunk].detach().requires_grad_(True)
                    mi = _moments(vae, xi)
                    (gx[s : s + chunk],) = torch.autograd.grad(mi, xi, grad[s : s + chunk])
        finally:
            if inner and not was:
                vae.disable_gradient_checkpointing()
        return gx, None, None, None


def encoder_moments(
    vae: AutoencoderKL, x: torch.Tensor, *, checkpoint: bool = False, chunk_pixels: int = CHECKPOINT_PIXELS
) -> torch.Tensor:
    """``[N, 2C, h, w]`` posterior parameters (mean ‖ log-variance) of ``vae.encode(x)``, ``x`` in [−1, 1].

    ``checkpoint=True`` (only acts with grad enabled and ``x`` requiring grad) keeps no encoder activations
    for backward (issue 12; ``run.vae_checkpoint``). The forward is the plain batched call, run without
    grad, so the moments are bit-identical to the plain path's. Backward re-runs the encoder on chunks of
    ``max(1, chunk_pixels // (H·W))`` images (4 frames at 256², one image at 512² and above) and, for an
    image of more than ``chunk_pixels`` pixels, one piece of the encoder at a time from the piece inputs the
    forward kept (:func:`encoder_stages`; other VAEs: the encoder's own block checkpointing). The encoder
    treats images independently and draws nothing at random, so the gradients are those of the plain
    path up to floating-point summation order (a chunk's convolution may sum in another order than the
    batch's). Memory held for backward: the input only (for the images above ``chunk_pixels``, also the
    inputs of the encoder's pieces); at the backward peak, one chunk's (or one piece's) activations.
    Cost: one more encoder forward per image.
    A VAE with trainable parameters takes ``torch.utils.checkpoint`` per image instead, which also
    gives the parameters their gradients.
    """
    if not (checkpoint and torch.is_grad_enabled() and x.requires_grad):
        return _moments(vae, x)
    if any(p.requires_grad for p in vae.parameters()):
        from torch.utils.checkpoint import checkpoint as activation_checkpoint

        parts = [
            activation_checkpoint(_moments, vae, x[i : i + 1], use_reentrant=False) for i in range(x.shape[0])
        ]
        return torch.cat(parts)
    pixels = int(x.shape[-2]) * int(x.shape[-1])
    chunk = max(1, int(chunk_pixels) // max(pixels, 1))
    return _RecomputedEncoder.apply(x, vae, chunk, pixels > chunk_pixels)


def posterior(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` of the diagonal Gaussian from :func:`encoder_moments` (diffusers'
    ``DiagonalGaussianDistribution``: log-variance clamped to [−30, 20], ``std = exp(logvar/2)``)."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))


def encode_latents(
    vae: AutoencoderKL,
    x01: torch.Tensor,
    *,
    sample: bool = True,
    scale: bool = True,
    generator: torch.Generator | None = None,
    checkpoint: bool = False,
    checkpoint_pixels: int = CHECKPOINT_PIXELS,
) -> torch.Tensor:
    """VAE-encode images WITH grad: ``z = s · E(2x − 1)``.

    Args:
        x01: ``[N, 3, H, W]`` in [0, 1]; cast to the VAE's dtype here.
        sample: posterior ``sample()`` (upstream SDS, SPEC 3.7-2) or ``mode()`` (mean).
        scale: multiply by the latent scaling factor ``s`` (0.18215); Zero123's ``c_concat`` is unscaled.
        generator: draws the posterior sample; the draw is ``mean + std · randn`` with the generator's
            device, so a CPU generator works for CUDA models and tests can reproduce it. It is drawn outside
            the encoder, so activation checkpointing never re-draws it.
        checkpoint: recompute the encoder in backward, ``checkpoint_pixels`` pixels at a time, instead of
            keeping its activations (:func:`encoder_moments`; ``run.vae_checkpoint_pixels``).

    Returns:
        ``[N, 4, H/8, W/8]`` latents in the VAE dtype, differentiable w.r.t. ``x01``.
    """
    dtype = module_dtype(vae)
    moments = encoder_moments(
        vae, x01.to(dtype) * 2.0 - 1.0, checkpoint=checkpoint, chunk_pixels=checkpoint_pixels
    )
    mean, std = posterior(moments)
    if sample:
        eps = torch.randn(mean.shape, generator=generator, device=_gen_device(generator, mean))
        z = mean + std * to_device(eps, mean.device, mean.dtype)
    else:
        z = mean
    return z * latent_scaling(vae) if scale else z


def _gen_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator`` (on its own device), in fp32."""
    n = torch.randn(x.shape, generator=generator, device=_gen_device(generator, x), dtype=torch.float32)
    return to_device(n, x.device)


def alphas_cumprod_of(scheduler: DDIMScheduler) -> torch.Tensor:
    """The scheduler's ``alphas_cumprod`` [num_train_timesteps] as a CPU fp32 tensor."""
    return torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float32)


def num_train_timesteps_of(scheduler: DDIMScheduler) -> int:
    """``scheduler.config.num_train_timesteps`` (the attribute form is gone in new diffusers, SPEC 11.17)."""
    cfg = getattr(scheduler, "config", None)
    n = getattr(cfg, "num_train_timesteps", None) if cfg is not None else None
    if n is None:
        n = len(alphas_cumprod_of(scheduler))
    return int(n)


def as_timesteps(t: torch.Tensor | int | Iterable[int], n: int) -> torch.Tensor:
    """Turn an injected ``t`` (int, list or tensor) into a CPU LongTensor of length ``n``."""
    tt = torch.as_tensor(t, dtype=torch.long).flatten().cpu()
    if tt.numel() == 1 and n != 1:
        tt = tt.expand(n).clone()
    if tt.numel() != n:
        raise InputError(f"expected {n} timesteps, got {tt.numel()}")
    return tt


def timesteps_and_noise(
    z: torch.Tensor,
    t: torch.Tensor | int | Iterable[int] | None,
    noise: torch.Tensor | None,
    n: int,
    t_range: tuple[float, float],
    num_train_timesteps: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t [n], ε like z)``: drawn from ``generator`` (t first, then ε) unless injected by the caller."""
    from animate124.guidance import sds

    if t is None:
        t = sds.sample_timesteps(n, t_range, num_train_timesteps, generator)
    t = as_timesteps(t, n)
    if noise is None:
        noise = randn_like(z, generator)
    return t, to_device(noise, z.device)
