"""Fused group norm (+ SiLU) for the priors' VAE encoders under fp16 autocast (issue 12).

The stages keep the VAEs' weights in fp32 and run them under fp16 autocast. There every group norm is an
fp32 op: autocast casts the fp16 convolution output to fp32 (a copy), the norm reads and writes fp32, the
SiLU after it reads and writes fp32, and the next convolution casts back to fp16 (another copy). At the
refine stage's 1024² ControlNet frames these norms and casts took about 80 ms of device time per step and
the casts about 40 ms more (BENCHMARKS.md §8.5, §8.7). :class:`FusedGroupNorm` does the same in one pass
over fp16: statistics and the normalisation in fp32, the SiLU in fp32, one rounding to fp16 at the store.

**The same function.** Under autocast the plain path computes ``fp16(silu(group_norm_fp32(x)))`` (the
rounding happens in the next convolution's cast); the fused kernel computes exactly that, up to the fp32
summation order of the statistics (Welford/Chan merges in tiles against PyTorch's row-wise Welford). Every
output of a patched norm feeds an autocast convolution or linear layer (the resnet blocks' ``conv1`` /
``conv2``, the encoder's ``conv_out``, the attention's ``to_q/k/v``), so handing them fp16 instead of fp32
changes nothing downstream. Backward: ``dx`` in fp32 from the saved fp16 input and the group statistics,
rounded to the input's dtype, as autocast's cast-back does. Outside autocast, with weights that need
gradients, without Triton on the device, or below ``MIN_FUSED_ELEMS`` elements (where the plain path is
faster), the module runs the plain ``F.group_norm`` (+ ``F.silu``).

What :func:`use_fused_vae_norms` patches (encoders only; score distillation never decodes): each resnet
block's ``norm1``/``norm2`` with their SiLU (the block's ``nonlinearity`` becomes identity: a VAE block
has no time embedding, the only other user of it), the encoder's ``conv_norm_out`` with ``conv_act``, and
the mid-block attention's ``group_norm`` (no activation). Any layout ``[N, C, ...]`` whose spatial dims
collapse to one stride (NCHW, channels-last) is read in place; others (the video UNet's temporal transformer
input, ``[B, C, F, H, W]`` permuted) from a contiguous copy. Config: ``run.vae_fused_norm`` (on).

:func:`use_fused_unet_norms` does the same in the priors' fp16 UNets and ControlNet and the textual inversion's
UNet (``run.unet_fused_norm``, off until measured on a GPU; issue 27): there the resnet blocks' SiLU is also
applied to the time embedding, so it moves into ``time_emb_proj``; the transformers' input ``norm`` and the
temporal convolutions' ``GroupNorm, SiLU`` pairs are fused too. In the inversion, whose backward runs through the
UNet, the norms then keep their fp16 input instead of autocast's fp32 copy and the SiLU's fp32 output.
Tests: ``tests/test_guidance_groupnorm.py`` (Triton interpreter on the CPU against ``F.group_norm`` in
float64, the tiny VAE and the tiny SD UNet patched and plain; GPU tests at the refine shapes).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: elements per tile of one program (``BLOCK_C × BLOCK_S``) and the most programs per group in the
#: reductions (each loops over its share of the tiles)
TILE_ELEMS = 4096
MAX_PARTIALS = 128
#: smaller inputs keep the plain path: the first H200 measurement (BENCHMARKS.md §8.8) found the fused
#: kernels faster at the 1024² and 512² levels but a Zero123 call (256², ≤ 8.4 M elements per norm) slower
MIN_FUSED_ELEMS = 2**24


@functools.cache
def _kernels() -> Any:
    from animate124.guidance import gn_kernels

    return gn_kernels


def _interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``, tests): the kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_importable() -> bool:
    try:
        _kernels()
    except Exception:  # pragma: no cover - no Triton on this CUDA machine
        return False
    return True


def _ncs(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``x`` (``[N, C, *spatial]``) and its strides as ``[N, C, S]``; a copy only when the spatial dims do
    not collapse to one stride."""

    def inner(t: Tensor) -> int | None:
        dims = [(n, st) for n, st in zip(t.shape[2:], t.stride()[2:], strict=True) if n > 1]
        if any(a[1] != b[1] * b[0] for a, b in zip(dims, dims[1:], strict=False)):
            return None
        return dims[-1][1] if dims else 1

    s = inner(x)
    if s is None:
        x = x.contiguous()
        s = inner(x)
    return x, (x.stride(0), x.stride(1), int(s or 1))


@dataclass(frozen=True)
class _Launch:
    """The launch shape of one norm: ``BLOCK_C × BLOCK_S`` tiles, ``n_tiles`` per group, ``parts`` reduction
    programs per group of ``per`` tiles each, ``BLOCK_P`` ≥ ``parts`` (the finalize kernel's width)."""

    bc: int
    bs: int
    n_tiles: int
    parts: int
    per: int
    bp: int


def _launch(cg: int, s: int) -> _Launch:
    import triton

    bc = triton.next_power_of_2(cg)
    bs = min(max(16, TILE_ELEMS // bc), triton.next_power_of_2(s))
    n_tiles = triton.cdiv(s, bs)
    per = triton.cdiv(n_tiles, min(n_tiles, MAX_PARTIALS))
    parts = triton.cdiv(n_tiles, per)
    return _Launch(bc, bs, n_tiles, parts, per, triton.next_power_of_2(parts))


class _FusedGN(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        x, weight, bias, groups, eps, act, out_dtype = args
        k = _kernels()
        n, c = x.shape[:2]
        x, xs = _ncs(x)
        s = x.numel() // max(n * c, 1)
        cg = c // groups
        plan = _launch(cg, s)
        ng = n * groups
        f32 = dict(device=x.device, dtype=torch.float32)
        partial = torch.empty(3, ng, plan.parts, **f32)
        k.gn_stats_kernel[(ng, plan.parts)](
            x,
            partial[0],
            partial[1],
            partial[2],
            s,
            cg,
            groups,
            plan.parts,
            plan.per,
            *xs,
            BLOCK_C=plan.bc,
            BLOCK_S=plan.bs,
        )
        mean, rstd = torch.empty(ng, **f32), torch.empty(ng, **f32)
        k.gn_finalize_kernel[(ng,)](
            partial[0], partial[1], partial[2], mean, rstd, plan.parts, float(eps), BLOCK_P=plan.bp
        )
        y, ys = _ncs(torch.empty_like(x, dtype=out_dtype))
        k.gn_apply_kernel[(ng, plan.n_tiles)](
            x, y, mean, rstd, weight, bias, s, cg, groups, *xs, *ys, ACT=act, BLOCK_C=plan.bc, BLOCK_S=plan.bs
        )
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.meta = (groups, act, s, cg, plan, xs)
        return y

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        (dy,) = grads
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, act, s, cg, plan, xs = ctx.meta
        k = _kernels()
        ng = x.shape[0] * groups
        dy, ds = _ncs(dy)
        psum = torch.empty(2, ng, plan.parts, device=x.device, dtype=torch.float32)
        k.gn_bwd_partial_kernel[(ng, plan.parts)](
            x, dy, mean, rstd, weight, bias, psum, s, cg, groups, plan.parts, ng, plan.per, *xs, *ds,
            ACT=act, BLOCK_C=plan.bc, BLOCK_S=plan.bs,
        )  # fmt: skip
        sums = psum.sum(dim=2)
        dx, dxs = _ncs(torch.empty_like(x))
        k.gn_bwd_apply_kernel[(ng, plan.n_tiles)](
            x, dy, dx, mean, rstd, weight, bias, sums, s, cg, groups, ng, *xs, *ds, *dxs,
            ACT=act, BLOCK_C=plan.bc, BLOCK_S=plan.bs,
        )  # fmt: skip
        return dx, None, None, None, None, None, None


def fused_group_norm(
    x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float, act: bool, out_dtype: torch.dtype
) -> Tensor:
    """``act(group_norm(x))`` in fp32 with the result stored as ``out_dtype`` (Triton; gradient to ``x``
    only). ``x``: ``[N, C, ...]``, ``C`` divisible by ``groups``; ``act``: SiLU or identity."""
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    return _FusedGN.apply(x, weight, bias, int(groups), float(eps), bool(act), out_dtype)


class FusedGroupNorm(nn.Module):
    """A ``GroupNorm`` (sharing its parameters), optionally followed by SiLU, that runs fused in fp16 under
    fp16/bf16 autocast (:func:`fused_group_norm`) and as the plain ``F.group_norm`` (+ ``F.silu``)
    otherwise. ``calls`` counts the fused calls (tests assert the fused path ran)."""

    def __init__(self, norm: nn.GroupNorm, act: bool) -> None:
        super().__init__()
        if not norm.affine:
            raise ValueError("FusedGroupNorm needs an affine GroupNorm")
        self.num_groups, self.num_channels, self.eps = norm.num_groups, norm.num_channels, norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.act = bool(act)
        self.calls = 0

    def _fused_dtype(self, x: Tensor) -> torch.dtype | None:
        """The autocast dtype when the fused kernel computes what the plain path does here: CUDA autocast
        (where ``group_norm`` is an fp32 op; CPU autocast keeps it in the low precision, so on the CPU only
        Triton's interpreter takes this path, for the tests), frozen weights, Triton available, at least
        ``MIN_FUSED_ELEMS`` elements (any size in the interpreter)."""
        dev, interp = x.device.type, _interpreting()
        if dev != "cuda" and not interp:
            return None
        if not torch.is_autocast_enabled(dev) or self.weight.requires_grad or self.bias.requires_grad:
            return None
        dtype = torch.get_autocast_dtype(dev)
        if dtype not in (torch.float16, torch.bfloat16) or x.dtype not in (dtype, torch.float32):
            return None
        if interp:
            return dtype
        return dtype if x.numel() >= MIN_FUSED_ELEMS and _triton_importable() else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = self._fused_dtype(x)
        if dtype is None:
            y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
            return F.silu(y) if self.act else y
        self.calls += 1
        return fused_group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.act, dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, act={'silu' if self.act else None}"


def _is_silu(m: Any) -> bool:
    return isinstance(m, nn.SiLU) or m is F.silu


def _fuse_norms(root: nn.Module) -> int:
    """Put :class:`FusedGroupNorm` into ``root`` wherever the plain path is a ``GroupNorm`` (+ SiLU) whose
    output feeds only what autocast runs in fp16 (see the module docstring); returns how many norms it replaced.

    - a resnet block (``norm1``/``norm2`` with the block's SiLU ``nonlinearity``, the default time-embedding
      form, no up/down-sampling inside): both norms fused with their SiLU and ``nonlinearity`` made identity. In a
      UNet the block also applies ``nonlinearity`` to the time embedding before ``time_emb_proj``; that SiLU
      moves into ``time_emb_proj`` (``Sequential(SiLU, proj)``), so the block computes what it did;
    - a ``GroupNorm`` followed by a SiLU inside an ``nn.Sequential`` (the video UNet's temporal convolutions):
      fused, the SiLU made identity;
    - ``group_norm`` (attention blocks) and ``norm`` (the transformer blocks' input norm) without activation;
    - ``conv_norm_out`` with ``conv_act`` (the encoder's and the UNet's output norm)."""
    done = 0
    for mod in list(root.modules()):
        n1, n2 = getattr(mod, "norm1", None), getattr(mod, "norm2", None)
        if (
            type(n1) is nn.GroupNorm
            and type(n2) is nn.GroupNorm
            and _is_silu(getattr(mod, "nonlinearity", None))
            and getattr(mod, "time_embedding_norm", "default") == "default"
            and getattr(mod, "upsample", None) is None
            and getattr(mod, "downsample", None) is None
        ):
            proj = getattr(mod, "time_emb_proj", None)
            if proj is not None and not getattr(mod, "skip_time_act", False):
                mod.time_emb_proj = nn.Sequential(nn.SiLU(), proj)
            mod.norm1, mod.norm2 = FusedGroupNorm(n1, act=True), FusedGroupNorm(n2, act=True)
            mod.nonlinearity = nn.Identity()
            done += 2
        if isinstance(mod, nn.Sequential):
            kids = list(mod)
            for i, (a, b) in enumerate(zip(kids, kids[1:], strict=False)):
                if type(a) is nn.GroupNorm and _is_silu(b):
                    mod[i], mod[i + 1] = FusedGroupNorm(a, act=True), nn.Identity()
                    done += 1
        for name in ("group_norm", "norm"):
            gn = getattr(mod, name, None)
            if type(gn) is nn.GroupNorm:
                setattr(mod, name, FusedGroupNorm(gn, act=False))
                done += 1
        if type(getattr(mod, "conv_norm_out", None)) is nn.GroupNorm and _is_silu(
            getattr(mod, "conv_act", None)
        ):
            mod.conv_norm_out = FusedGroupNorm(mod.conv_norm_out, act=True)
            mod.conv_act = nn.Identity()
            done += 1
    return done


def use_fused_vae_norms(vae: nn.Module | None) -> int:
    """Put :class:`FusedGroupNorm` into ``vae.encoder`` (see the module docstring); returns how many norms it
    replaced (0 for a VAE without a diffusers encoder, or one already patched)."""
    enc = getattr(vae, "encoder", None)
    return 0 if enc is None else _fuse_norms(enc)


def use_fused_unet_norms(network: Any) -> int:
    """Put :class:`FusedGroupNorm` into a UNet or ControlNet (``run.unet_fused_norm``; a wrapper's ``eager``
    module, or the module itself); returns how many norms it replaced (0 if already patched or not a module).

    Under fp16 autocast the fp16 UNet's norms run on fp32 copies (autocast's fp32 ops): each keeps for backward
    its fp32 input and the SiLU its fp32 output, where the fused norm keeps the fp16 input and the group
    statistics. The same function as autocast's (statistics and SiLU in fp32, one rounding to fp16), so unlike
    running the UNet outside autocast (``run.native_fp16``) it changes only the summation order."""
    module = getattr(network, "eager", network)
    return _fuse_norms(module) if isinstance(module, nn.Module) else 0


def use_fused_prior_norms(prior: Any) -> int:
    """:func:`use_fused_unet_norms` on a prior's UNet and, for ControlNet-tile, its ControlNet."""
    return sum(use_fused_unet_norms(getattr(prior, name, None)) for name in ("unet", "controlnet"))


def fused_norm_calls(vae: nn.Module | None) -> int:
    """Fused calls made so far by the patched norms of ``vae``'s encoder (0 when unpatched)."""
    enc = getattr(vae, "encoder", None)
    return fused_calls(enc)


def fused_calls(module: Any) -> int:
    """Fused calls made so far by the patched norms inside ``module`` (a wrapper's ``eager`` module too)."""
    module = getattr(module, "eager", module)
    if not isinstance(module, nn.Module):
        return 0
    return sum(m.calls for m in module.modules() if isinstance(m, FusedGroupNorm))
