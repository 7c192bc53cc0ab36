"""``run.offload_priors``: a prior's UNet / ControlNet kept in host memory between calls computes the same
outputs, holds no device copy of its weights between calls, and the config reaches the built priors."""

from __future__ import annotations

import pytest
import torch
from helpers_guidance import assert_same_prior_output, make_controlnet, make_video, make_zero123

from animate124.errors import ConfigError
from animate124.guidance.offload import OffloadedCall, offload_prior_networks, parse_offload


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.register_buffer("shift", torch.arange(3.0))

    def forward(self, x):
        return self.lin(x) + self.shift


def test_offloaded_call_same_output_and_no_weights_between_calls() -> None:
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(5, 4)
    want = net(x)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    off = OffloadedCall(net)
    assert off.nbytes == sum(v.numel() * v.element_size() for v in weights.values())
    assert all(p.numel() == 0 for p in net.parameters()) and net.shift.numel() == 0
    assert net.lin.weight.dtype == torch.float32 and net.lin.weight.device.type == "cpu"
    for _ in range(2):
        assert torch.equal(off(x), want)
    assert off.loads == 2 and all(p.numel() == 0 for p in net.parameters())
    assert off.lin is net.lin  # attributes reach the module
    off._load()  # the host copy is exact
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_parse_offload() -> None:
    assert parse_offload("") == ()
    assert parse_offload(" zero123, video ") == ("zero123", "video")
    with pytest.raises(ConfigError, match="unet"):
        parse_offload("zero123,unet")


def test_offloaded_priors_give_the_same_loss_and_gradient(store) -> None:
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    ref = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    builds = {
        "zero123": lambda: make_zero123(load_zero123(store), reference=ref),
        "video": lambda: make_video(load_video(store)),
        "controlnet": lambda: make_controlnet(load_sd(store), load_controlnet(store)),
    }

    def offload(prior):
        offload_prior_networks(prior)
        assert isinstance(prior.unet, OffloadedCall)
        assert all(p.numel() == 0 for p in prior.unet.parameters())

    for name, build in builds.items():
        assert_same_prior_output(build, offload, name)


def test_config_reaches_the_built_priors(store, monkeypatch) -> None:
    from animate124.config import resolve_config
    from animate124.stages import build

    monkeypatch.setattr(build, "_store", lambda cfg: store)
    for value, wrapped in (("video", True), ("zero123", False), ("", False)):
        cfg = resolve_config("tiny", sets=[f"run.offload_priors={value}"])
        prior = build.build_video_guidance(cfg, torch.device("cpu"), "a cat is dancing")
        assert isinstance(prior.unet, OffloadedCall) is wrapped, value
    assert resolve_config("low-vram").run.offload_priors == "zero123"
    with pytest.raises(ConfigError):
        build.build_video_guidance(
            resolve_config("tiny", sets=["run.offload_priors=videos"]), torch.device("cpu"), "a cat"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offloaded_call_on_the_gpu_frees_the_weights_between_calls() -> None:
    torch.manual_seed(0)
    net = (
        torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))
        .cuda()
        .half()
    )
    x = torch.randn(64, 1024, device="cuda", dtype=torch.half)
    want = net(x)
    off = OffloadedCall(net)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for _ in range(3):
        got = off(x)
        torch.cuda.synchronize()
        assert torch.equal(got, want)
        del got
        assert torch.cuda.memory_allocated() <= base  # the weights (16 MiB) left with the call
    assert net[0].weight.device.type == "cuda" and net[0].weight.dtype == torch.half
