"""Attention for the VAE encoder's mid block at large images: exact softmax attention in query blocks.

The SD VAE's mid block attends over every latent position with one 512-wide head: 16,384 tokens for the
refine stage's 1024² ControlNet frames. PyTorch's flash kernels stop at head width 256, so SDPA falls back
to the generic memory-efficient kernel, whose backward alone took 63 ms per refine step on an H200
(BENCHMARKS.md §8.6). :func:`blocked_attention` computes the same attention as
``F.scaled_dot_product_attention`` the way flash attention does, but with large blocks and cuBLAS:

* forward: for each block of queries, ``S = q kᵀ·scale`` in fp32 (fp16 inputs, fp32 output), the row
  max ``m``, ``P = exp(S − m)``, ``O = (P v)/Σ P``; keeps ``q, k, v, O`` and ``lse = m + log Σ P``;
* backward: ``D = rowsum(dO ∘ O)`` and per block ``P = exp(S − lse)``, ``dV += Pᵀ dO``, ``dP = dO vᵀ``,
  ``dS = P ∘ (dP − D)``, ``dQ = dS k·scale``, ``dK += dSᵀ q·scale``.

Logits, softmax and its statistics are fp32; ``P`` and ``dS`` enter the value/key matmuls in the input
dtype, as in flash attention. Memory beyond the inputs: one block of ``[B·H, block, N]`` fp32 scores (64 M
entries by default, 256 MB). ``BlockedAttnProcessor`` (:func:`blocked_processor`) puts it into a diffusers ``Attention`` for
sequences of at least ``min_tokens`` with heads wider than flash supports, and is SDPA otherwise.
Config: ``run.vae_attention`` (``blocked`` default; ``sdpa`` keeps PyTorch's choice). Tests:
``tests/test_guidance_attention.py`` (values and gradients against SDPA).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

#: score entries per block (B·H·block·N): 64 M fp32 = 256 MB
BLOCK_SCORES = 2**26


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``q kᵀ·scale`` in fp32 (``[G, Mq, d] × [G, N, d] -> [G, Mq, N]``); fp16/bf16 inputs stay in their
    dtype on CUDA (fp32 output from the matmul)."""
    kt = k.transpose(1, 2)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _has_out_dtype():
        return torch.bmm(q, kt, out_dtype=torch.float32).mul_(scale)
    return torch.bmm(q.float(), kt.float()).mul_(scale)


@functools.cache
def _has_out_dtype() -> bool:
    """Whether this torch has ``bmm(..., out_dtype=float32)`` for half inputs on CUDA (torch >= 2.8)."""
    try:
        a = torch.zeros(1, 1, 1, device="cuda", dtype=torch.float16)
        return torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


def _block(n_queries: int, n_keys: int, groups: int, block_scores: int) -> int:
    return max(1, min(n_queries, block_scores // max(1, n_keys * groups)))


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        q, k, v, scale, block_scores = args
        with torch.autocast(q.device.type, enabled=False):
            return _BlockedAttention._forward(ctx, q, k, v, scale, block_scores)

    @staticmethod
    def _forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, block_scores: int) -> Tensor:
        g, m, _ = q.shape
        bq = _block(m, k.shape[1], g, block_scores)
        out = torch.empty(g, m, v.shape[2], device=q.device, dtype=q.dtype)
        lse = torch.empty(g, m, device=q.device, dtype=torch.float32)
        for s in range(0, m, bq):
            sc = _scores(q[:, s : s + bq], k, scale)
            mx = sc.amax(dim=-1, keepdim=True)
            p = sc.sub_(mx).exp_()
            denom = p.sum(dim=-1, keepdim=True)
            o = torch.bmm(p.to(v.dtype), v).float().div_(denom)
            out[:, s : s + bq] = o.to(q.dtype)
            lse[:, s : s + bq] = (mx + denom.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.bq = scale, bq
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (d_out,) = grads
        with torch.autocast(d_out.device.type, enabled=False):
            return _BlockedAttention._backward(ctx, d_out)

    @staticmethod
    def _backward(ctx, d_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        scale, bq = ctx.scale, ctx.bq
        d_out = d_out.contiguous()
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        big_d = (d_out.float() * out.float()).sum(-1)  # [G, M]
        for s in range(0, q.shape[1], bq):
            qs, dos = q[:, s : s + bq], d_out[:, s : s + bq]
            p = _scores(qs, k, scale).sub_(lse[:, s : s + bq, None]).exp_()
            dv += torch.bmm(p.to(v.dtype).transpose(1, 2), dos).float()
            dp = _scores(dos, v, 1.0)
            ds = p.mul_(dp.sub_(big_d[:, s : s + bq, None])).to(q.dtype)
            dq[:, s : s + bq] = (torch.bmm(ds, k).float() * scale).to(q.dtype)
            dk += torch.bmm(ds.transpose(1, 2), qs).float().mul_(scale)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, block_scores: int = BLOCK_SCORES) -> Tensor:
    """``softmax(q kᵀ/√d) v`` for ``[..., N, d]`` tensors (no mask, no dropout), as
    ``F.scaled_dot_product_attention(q, k, v)``; see the module docstring for the numerics."""
    lead = q.shape[:-2]
    d = q.shape[-1]
    qf, kf, vf = (x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous() for x in (q, k, v))
    out = _BlockedAttention.apply(qf, kf, vf, 1.0 / math.sqrt(d), block_scores)
    return out.reshape(*lead, q.shape[-2], v.shape[-1])


@functools.cache
def _processor_class() -> type:
    """:class:`BlockedAttnProcessor`, built on first use (diffusers is imported lazily)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class BlockedAttnProcessor(AttnProcessor2_0):
        """diffusers ``AttnProcessor2_0`` with :func:`blocked_attention` for self-attention over at least
        ``min_tokens`` positions with heads wider than ``max_flash_dim`` (the VAE mid block at 512² and up).

        Everything around the attention (group norm, projections, residual, rescale) is the processor's
        own sequence of operations, so outside the attention the values are the SDPA processor's."""

        def __init__(self, min_tokens: int = 4096, max_flash_dim: int = 256) -> None:
            super().__init__()
            self.min_tokens = int(min_tokens)
            self.max_flash_dim = int(max_flash_dim)

        def applies(self, attn, hidden_states: Tensor, encoder_hidden_states, attention_mask) -> bool:
            if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 4:
                return False
            if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
                return False
            tokens = hidden_states.shape[2] * hidden_states.shape[3]
            return tokens >= self.min_tokens and attn.inner_dim // attn.heads > self.max_flash_dim

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):  # fmt: skip
            if not self.applies(attn, hidden_states, encoder_hidden_states, attention_mask):
                return super().__call__(
                    attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
                )
            residual = hidden_states
            b, c, h, w = hidden_states.shape
            x = hidden_states.view(b, c, h * w).transpose(1, 2)
            if attn.group_norm is not None:
                x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
            query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
            head_dim = key.shape[-1] // attn.heads
            query, key, value = (
                t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value)
            )
            x = blocked_attention(query, key, value)
            x = x.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
            x = attn.to_out[1](attn.to_out[0](x))
            x = x.transpose(-1, -2).reshape(b, c, h, w)
            if attn.residual_connection:
                x = x + residual
            return x / attn.rescale_output_factor

    return BlockedAttnProcessor


def blocked_processor(min_tokens: int = 4096, max_flash_dim: int = 256):
    """A new ``BlockedAttnProcessor`` (see :func:`_processor_class`)."""
    return _processor_class()(min_tokens=min_tokens, max_flash_dim=max_flash_dim)


def use_blocked_vae_attention(vae: torch.nn.Module | None, **kwargs: int) -> int:
    """Give the attention layers of a diffusers VAE's encoder a ``BlockedAttnProcessor`` (``kwargs`` go to
    :func:`blocked_processor`); returns how many (0 for a VAE without them)."""
    enc = getattr(vae, "encoder", None)
    n = 0
    if enc is None:
        return n
    for module in enc.modules():
        if hasattr(module, "set_processor") and hasattr(module, "to_q"):
            module.set_processor(blocked_processor(**kwargs))
            n += 1
    return n


__all__ = ["BLOCK_SCORES", "blocked_attention", "blocked_processor", "use_blocked_vae_attention"]
