"""``run.compile_priors``: a prior's UNet / ControlNet through ``torch.compile`` gives the eager call's loss and
gradient up to float rounding, the config reaches the built priors, and Inductor's cache goes to the model
cache unless the user chose one."""

from __future__ import annotations

import pytest
import torch
from helpers_guidance import assert_same_prior_output, make_video

from animate124.errors import ConfigError
from animate124.guidance.compiled import (
    COMPILABLE,
    compile_prior_networks,
    is_compiled,
    parse_compile,
    use_compile_cache,
)
from animate124.guidance.graphs import GraphedCall


def test_parse_compile() -> None:
    assert parse_compile("") == ()
    assert parse_compile("all") == COMPILABLE
    assert parse_compile(" video, controlnet ") == ("video", "controlnet")
    with pytest.raises(ConfigError, match="unet"):
        parse_compile("video,unet")


def test_the_compile_cache_goes_to_the_model_cache_unless_set(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    got = use_compile_cache(tmp_path / "models")
    assert got == tmp_path / "models" / "inductor" and got.is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache(tmp_path / "models") == tmp_path / "mine"


def test_a_failed_compile_falls_back_to_the_eager_call_for_good(monkeypatch, caplog) -> None:
    from animate124.guidance import compiled as C

    calls = []

    def broken(module, dynamic=None):
        def run(*a, **kw):
            calls.append(1)
            raise RuntimeError("no C++ compiler found\nmore")

        return run

    monkeypatch.setattr(C.torch, "compile", broken)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    call = C.CompiledCall(net)
    x = torch.randn(2, 4)
    with caplog.at_level("WARNING"):
        assert torch.equal(call(x), net(x)) and torch.equal(call(x), net(x))
    assert calls == [1] and "no C++ compiler found" in caplog.text and "more" not in caplog.text
    assert call.weight is net.weight and C.is_compiled(call) and not C.is_compiled(net)

    def oom(module, dynamic=None):
        def run(*a, **kw):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return run

    monkeypatch.setattr(C.torch, "compile", oom)
    with pytest.raises(torch.OutOfMemoryError):  # left to the trainer's retry, not swallowed
        C.CompiledCall(net)(x)


def _check_compiled(build, name: str, networks: int, rel: float) -> None:
    def compiled(prior):
        assert compile_prior_networks(prior) == networks
        assert is_compiled(prior.unet) and compile_prior_networks(prior) == 0  # kept, not wrapped twice

    torch._dynamo.reset()
    assert_same_prior_output(build, compiled, name, rel=rel)


@pytest.mark.slow
def test_compiled_video_prior_gives_the_eager_loss_and_gradient(store, tmp_path, monkeypatch) -> None:
    """Real Inductor compilation of the tiny video UNet3D (CPU, float32; about a minute on 2 cores)."""
    from animate124.models.loaders import load_video

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    _check_compiled(lambda: make_video(load_video(store)), "video", 1, rel=1e-4)


def test_config_reaches_the_built_priors(store, monkeypatch, tmp_path) -> None:
    from animate124.config import resolve_config
    from animate124.stages import build

    monkeypatch.setattr(build, "_store", lambda cfg: store)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    for value, compiled in (("video", True), ("all", True), ("zero123", False), ("", False)):
        cfg = resolve_config("tiny", sets=[f"run.compile_priors={value}"])
        prior = build.build_video_guidance(cfg, torch.device("cpu"), "a cat is dancing")
        assert is_compiled(prior.unet) is compiled and not isinstance(prior.unet, GraphedCall), value
    # offloaded wins: its weights move every call
    cfg = resolve_config("tiny", sets=["run.compile_priors=video", "run.offload_priors=video"])
    assert not is_compiled(build.build_video_guidance(cfg, torch.device("cpu"), "a cat").unet)
    assert resolve_config("paper").run.compile_priors == ""  # not bit-identical: off in paper
    with pytest.raises(ConfigError):
        build.build_video_guidance(
            resolve_config("tiny", sets=["run.compile_priors=videos"]), torch.device("cpu"), "a cat"
        )
