"""The ways of running a prior's networks that issue 27 compares, shared by ``bench_guidance.py --variant`` and
the GPU agreement test (``tests/test_guidance_agreement.py``).

Every variant keeps the stages' VAE path (fp32 VAE under fp16 autocast, the encoder recomputed in backward,
blocked attention, fused group norms: ``stage_vae``); it changes how the UNet / ControlNet (and, with
channels-last, the VAE encoder's layout) run. ``eager`` is the reference of the agreement rule.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: variant -> what it runs (the tokens: graphs, cl = channels-last, compile / compile_ma = Inductor default /
#: max-autotune, fp8)
VARIANTS = {
    "eager": "UNet/ControlNet eager (the rule's reference)",
    "graphs": "CUDA graphs, under autocast with the plain UNet norms (the stages' default until 2026-12-07)",
    "defaults": "CUDA graphs, the UNet norms fused, natively in fp16 (the stages' defaults since 2026-12-07)",
    "channels_last": "CUDA graphs, channels-last networks and VAE encoder",
    "compile": "torch.compile, default mode (run.compile_priors)",
    "compile_ma": "torch.compile, max-autotune (run.compile_mode=max-autotune)",
    "compile_cl": "torch.compile, default mode, channels-last",
    "compile_ma_cl": "torch.compile, max-autotune, channels-last",
    "fp8": "fp8 products (run.prior_precision=fp8), CUDA graphs",
    "fp8_compile": "fp8 products, torch.compile default mode",
    "native": "CUDA graphs, UNet/ControlNet natively in fp16 outside autocast (run.native_fp16)",
    "native_compile": "torch.compile default mode, natively in fp16 outside autocast",
    "defaults_compile": "the stages' defaults with the UNet/ControlNet compiled (run.compile_priors): the UNet norms "
    "fused, natively in fp16, torch.compile default mode",
    "unet_norms": "CUDA graphs, the UNet's/ControlNet's group norms (+ SiLU) fused (run.unet_fused_norm)",
    "defaults_cl": "the stages' defaults with channels-last networks and VAE encoder (run.channels_last=all): "
    "the fused norms read NHWC in place, so cuDNN's convolutions lose their NCHW/NHWC transposes",
}


def stage_vae(guid: Any) -> None:
    """The VAE options the stages use by default: blocked attention and fused group norms."""
    from animate124.guidance.attention import use_blocked_vae_attention
    from animate124.guidance.groupnorm import use_fused_vae_norms

    use_blocked_vae_attention(getattr(guid, "vae", None))
    use_fused_vae_norms(getattr(guid, "vae", None))


def apply_variant(guid: Any, variant: str) -> None:
    """Run ``guid``'s networks as ``variant`` (in place; :data:`VARIANTS`)."""
    from animate124.guidance.compiled import compile_prior_networks
    from animate124.guidance.fp8 import use_fp8
    from animate124.guidance.graphs import graph_prior_networks
    from animate124.guidance.layout import use_channels_last

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    if variant in ("unet_norms", "defaults", "defaults_compile", "defaults_cl"):
        from animate124.guidance.groupnorm import use_fused_prior_norms

        use_fused_prior_norms(guid)
    if variant.startswith("native") or variant.startswith("defaults"):
        from animate124.guidance.base import use_native_fp16

        use_native_fp16(guid)
    if variant.startswith("fp8"):
        use_fp8(guid)
    if variant.endswith("_cl") or variant == "channels_last":
        use_channels_last(guid)
    if variant.startswith("compile") or variant.endswith("_compile"):
        compile_prior_networks(guid, "max-autotune" if "_ma" in variant else "default")
    elif variant != "eager":
        graph_prior_networks(guid, enabled=True)


def agreement_of(name: str, variant: str, configs: Path, seed: int = 0) -> Any:
    """The gradient agreement (``guidance/agreement.py``) of ``variant`` with the eager path for the full-size
    random-weight prior ``name`` on CUDA, one call as the stages make it (fp16 networks, fp32 VAE, fp16
    autocast, the VAE recompute); the optimised path runs twice (a CUDA graph records, then replays)."""
    from bench_guidance import build_full, make_call

    from animate124.guidance.agreement import gradient_agreement

    device = torch.device("cuda")
    comp, cn = build_full(name, configs, device, torch.float16, vae_dtype=torch.float32)
    guid, call = make_call(name, comp, cn, False, device, vae_checkpoint=True, autocast=True)
    stage_vae(guid)
    images = torch.rand(call.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    return gradient_agreement(
        guid,
        lambda g: apply_variant(g, variant),
        images,
        call.views,
        seed=seed,
        autocast=torch.float16,
        calls=2,
    )
