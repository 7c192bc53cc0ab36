"""Score Distillation Sampling maths as pure functions (SPEC 3.7, 3.8, 6, 11.3, 11.4).

Each prior only computes its noise prediction; the timestep draw, classifier-free guidance, the
weighting, the gradient and the loss that injects it live here, once.

Notation: ``z`` latents, ``ε`` the injected noise, ``ε̂`` the (guided) noise prediction,
``ᾱ_t`` = ``alphas_cumprod[t]``, ``λ`` the guidance weight, ``s`` the CFG scale.
"""

from __future__ import annotations

import math

import torch

from animate124.errors import ConfigError
from animate124.transfer import to_device


def sample_timesteps(
    batch: int,
    t_range: tuple[float, float],
    num_train_timesteps: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``t ~ U{⌊N·lo⌋ … ⌊N·hi⌋}`` (both ends inclusive), N = ``num_train_timesteps`` (SPEC 3.7-3).

    Returns a CPU LongTensor ``[batch]``. ``(0.02, 0.98)`` gives 20…980, ``(0.2, 0.6)`` gives 200…600.
    """
    lo, hi = t_range
    if not (0.0 <= lo <= hi <= 1.0):
        raise ConfigError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {t_range}")
    t_lo = int(math.floor(num_train_timesteps * lo))
    t_hi = min(int(math.floor(num_train_timesteps * hi)), num_train_timesteps - 1)
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(t_lo, t_hi + 1, (batch,), generator=generator, device=gen_device, dtype=torch.long)
    return t.cpu()


def cfg(
    eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float, mode: str = "standard"
) -> torch.Tensor:
    """Classifier-free guidance.

    * ``"standard"``: ``ε̂ = ε_u + s·(ε_c − ε_u)`` (Zero123, SPEC 3.8).
    * ``"upstream"``: ``ε̂ = ε_c + s·(ε_c − ε_u)``, the "+1" form of upstream's SD / ModelScope / ControlNet
      guidance; it equals standard CFG with scale ``s + 1`` (SPEC 3.7-4, 11.3).
    """
    if mode == "standard":
        return eps_uncond + scale * (eps_cond - eps_uncond)
    if mode == "upstream":
        return eps_cond + scale * (eps_cond - eps_uncond)
    raise ConfigError(f"unknown cfg mode {mode!r}", "use 'standard' or 'upstream'")


def _gather(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod.detach().float().cpu()[t.long().cpu()]


def w_one_minus_alpha_bar(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SDS weight ``w(t) = 1 − ᾱ_t`` (SPEC 3.7-5), fp32 CPU ``[len(t)]``."""
    return 1.0 - _gather(alphas_cumprod, t)


def w_x0_target(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Implicit weight of the x̂₀-target loss: ``w(t) = √((1 − ᾱ_t)/ᾱ_t)`` (SPEC 6 step 5, 11.4).

    ≈0.57 at t=200, 1.62 at t=500, 5.1 at t=800 for the SD 1.5 schedule.
    """
    a = _gather(alphas_cumprod, t)
    return torch.sqrt((1.0 - a) / a)


def add_noise(
    alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion ``z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε`` in fp32, returned in ``latents``' dtype.

    ``t`` is ``[N]`` with N = ``latents.shape[0]``; works for 4-D images and 5-D videos
    (the DDIM/DDPM schedulers' ``add_noise`` computes the same formula).
    """
    a = to_device(_gather(alphas_cumprod, t), latents.device)
    shape = (-1,) + (1,) * (latents.ndim - 1)
    zt = a.sqrt().view(shape) * latents.float() + (1.0 - a).sqrt().view(shape) * noise.float()
    return zt.to(latents.dtype)


def sds_gradient(
    eps_pred: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | float, scale: float = 1.0
) -> torch.Tensor:
    """SDS latent gradient ``g = λ · w(t) · (ε̂ − ε)``, NaN/inf → 0, no clipping (SPEC 3.7-5).

    Args:
        eps_pred: guided prediction ε̂, ``[N, ...]``.
        noise: the injected ε, same shape.
        weight: ``w(t)`` as a scalar or ``[N]`` (broadcast over the other dims); may already include
            per-sample λ (Zero123's angle weight).
        scale: the guidance weight λ.

    Returns:
        fp32 ``g`` shaped like ``eps_pred`` (a constant: no graph).
    """
    w = torch.as_tensor(weight, dtype=torch.float32, device=eps_pred.device)
    if w.ndim == 1:
        w = w.view((-1,) + (1,) * (eps_pred.ndim - 1))
    g = scale * w * (eps_pred.detach().float() - noise.detach().float())
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def sds_surrogate_loss(latents: torch.Tensor, grad: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """Surrogate loss that injects ``grad`` into ``latents`` (SPEC 3.7-6, the ``--new_sds`` path).

    ``L = ½·‖z − sg(z − g)‖² / N`` with N = ``latents.shape[0]`` (``reduction="batch"``), so
    ``∂L/∂z = g / N``; ``reduction="sum"`` drops the ``/N``. Being an ordinary loss it goes through the
    AMP GradScaler like every other term (upstream's static stage pushed ``z.backward(g)`` past the scaler
    instead, SPEC 11.1; ``StaticSystem`` reproduces that weighting with a factor 1/S on this loss, see
    ``static.sds_grad_scale``). Returned in fp32.
    """
    z = latents.float()
    target = (z - grad.float()).detach()
    loss = 0.5 * ((z - target) ** 2).sum()
    if reduction == "batch":
        return loss / latents.shape[0]
    if reduction == "sum":
        return loss
    raise ConfigError(f"unknown reduction {reduction!r}", "use 'batch' or 'sum'")


def x0_target_loss(
    latents: torch.Tensor,
    noisy: torch.Tensor,
    eps_pred: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """ControlNet ``--grad_dyn`` loss (SPEC 6 step 5, 11.4): ``½·Σ(z − x̂₀)² / N``.

    ``x̂₀ = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` (detached), N = ``latents.shape[0]`` (the frame count).
    Because ``z − x̂₀ = √((1−ᾱ)/ᾱ)·(ε̂ − ε)``, this equals :func:`sds_surrogate_loss` with weight
    :func:`w_x0_target` and λ = 1: the guidance weight and the ``1 − ᾱ`` factor do not appear.
    """
    a = to_device(_gather(alphas_cumprod, t), latents.device)
    shape = (-1,) + (1,) * (latents.ndim - 1)
    a = a.view(shape)
    x0 = ((noisy.float() - (1.0 - a).sqrt() * eps_pred.float()) / a.sqrt()).detach()
    return 0.5 * ((latents.float() - x0) ** 2).sum() / latents.shape[0]
