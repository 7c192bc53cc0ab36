"""``run.native_fp16`` (issue 27): the priors' UNet / ControlNet and the textual inversion's UNet called outside
autocast when their weights are in half precision, as upstream calls its fp16 UNets.

On the CPU the stages run fp32 networks, where the option changes nothing (bit-identical here). The wiring is
checked with the tiny networks in bf16 under CPU autocast: the networks must see autocast off with the option and
on without it. Whether the half-precision result passes the gradient agreement rule is a GPU question (fp16
UNets, the full-size networks): ``benchmarks/guidance_variants.py`` ``native`` under ``pytest -m gpu``
(``A124_GPU_AGREEMENT=native``) and ``benchmarks/bench_invert.py --native-fp16 --agreement``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers_guidance import (
    assert_same_prior_output,
    make_controlnet,
    make_sd,
    make_video,
    make_zero123,
    still_views,
)

from animate124.guidance.base import native_half_precision, use_native_fp16

PRIORS = ("sd", "zero123", "video", "controlnet")


def _build(store, name: str) -> Any:
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    if name == "sd":
        return make_sd(load_sd(store))
    if name == "zero123":
        prior = make_zero123(load_zero123(store))
        prior.set_reference(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
        return prior
    if name == "video":
        return make_video(load_video(store))
    return make_controlnet(load_sd(store), load_controlnet(store))


def _networks(prior: Any) -> dict[str, torch.nn.Module]:
    nets = {"unet": prior.unet}
    if getattr(prior, "controlnet", None) is not None:
        nets["controlnet"] = prior.controlnet
    return nets


def test_native_half_precision_turns_autocast_off_only_for_half_weights() -> None:
    cpu = torch.device("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for dtype, inside in ((torch.bfloat16, False), (torch.float16, False), (torch.float32, True)):
            with native_half_precision(dtype, cpu):
                assert torch.is_autocast_enabled("cpu") is inside, dtype
        assert torch.is_autocast_enabled("cpu")  # restored on exit


@pytest.mark.parametrize("name", PRIORS)
def test_fp32_priors_are_bit_identical_with_and_without_it(store, name: str) -> None:
    """The stages' CPU networks are fp32: the option is a no-op there (the tiny preset, CI)."""
    assert_same_prior_output(lambda: _build(store, name), use_native_fp16, name)


@pytest.mark.parametrize("name", PRIORS)
def test_half_precision_networks_run_outside_autocast_with_it(store, name: str) -> None:
    """Each network the prior calls (its UNet; ControlNet's ControlNet too) sees autocast off with the option and
    on without it, under the stage's autocast, and the call gives a finite loss and image gradient."""
    seen: dict[bool, dict[str, bool]] = {}
    for on in (False, True):
        prior = _build(store, name)
        state: dict[str, bool] = {}
        for key, net in _networks(prior).items():
            net.to(torch.bfloat16)
            net.register_forward_pre_hook(
                lambda _m, _a, key=key, state=state: state.__setitem__(key, torch.is_autocast_enabled("cpu"))
            )
        use_native_fp16(prior, on)
        frames = 2 if name in ("video", "controlnet") else 1
        gen = torch.Generator().manual_seed(0)
        cond = torch.rand(1, frames, 3, 16, 16, generator=gen)
        views = still_views(20.0, -10.0, frames=frames, condition=cond)
        images = torch.rand(1, frames, 3, 16, 16, generator=gen, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = prior(images, views, step=0, generator=torch.Generator().manual_seed(1))
        loss = out.losses[prior.loss_key]
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(images.grad).all() and images.grad.abs().max() > 0
        seen[on] = state
    assert seen[False] == dict.fromkeys(seen[False], True) and seen[False], seen
    assert seen[True] == dict.fromkeys(seen[False], False), seen


def _ti_step(store, *, native: bool, dtype: torch.dtype) -> tuple[torch.Tensor, list[bool]]:
    from animate124.guidance.textual_inversion import TextualInversionSystem, TIConfig
    from animate124.models.loaders import load_sd

    cfg = TIConfig(
        placeholder="<t>", initializer="cat", steps=1, lr=1e-3, batch_size=2, resolution=64, augment=True,
        upstream_aug_range_bug=False, seed=0, checkpoint_every=10, mixed_precision=False, native_fp16=native,
    )  # fmt: skip
    comps = load_sd(store)
    comps.unet.to(dtype)
    seen: list[bool] = []
    comps.unet.register_forward_pre_hook(lambda _m, _a: seen.append(torch.is_autocast_enabled("cpu")))
    photo = torch.rand(3, 70, 80, generator=torch.Generator().manual_seed(1))
    system = TextualInversionSystem(comps, photo, cfg, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        loss = system.training_step(1, 1.0).losses["mse"]
    loss.backward()
    return system.vec.grad, seen


def test_textual_inversion_unet_runs_outside_autocast_with_it(store) -> None:
    """The inversion's UNet (bf16 here, fp16 on a GPU) sees autocast off with the option and on without it, and
    the vector gets a finite gradient; with the fp32 UNet of the CPU the gradient is bit-identical either way."""
    for native in (False, True):
        grad, seen = _ti_step(store, native=native, dtype=torch.bfloat16)
        assert seen == [not native], (native, seen)
        assert torch.isfinite(grad).all() and grad.abs().max() > 0
    g0, _ = _ti_step(store, native=False, dtype=torch.float32)
    g1, _ = _ti_step(store, native=True, dtype=torch.float32)
    assert torch.equal(g0, g1)
