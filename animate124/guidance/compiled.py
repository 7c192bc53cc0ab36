"""``torch.compile`` of the priors' no-grad networks (``run.compile_priors``; issue 12), and of the textual
inversion's UNet with its backward (the name ``invert``; issue 27), in Inductor's ``run.compile_mode``.

Every SDS step calls a prior's UNet (and ControlNet) forward under ``torch.no_grad`` with inputs of fixed
shapes (SPEC 3.7 step 4, 5.2, 6). Compiled with TorchInductor, the call's group norms, casts, SiLUs, residual
additions and layout changes run as fused Triton kernels instead of hundreds of separate ones. Measured on an
H200 (BENCHMARKS.md §8.9, full-size random weights, one guidance call as the stages make it): ModelScope
16 frames 228 ms eager / about 172 ms replayed from CUDA graphs → **129 ms** compiled; ControlNet-tile + SD at
2 × 1024² 271 ms with graphs → **236 ms** compiled.

What it computes: the same network on the same weights; Inductor fuses the elementwise work between the
matmuls and convolutions (it computes fused fp16 elementwise chains in fp32 registers and rounds once), so the
outputs equal the eager call's up to floating-point rounding, not bit for bit. That is why it is an option and
off at ``paper`` settings (issue 12: an optimisation that does not compute the same function stays off there).
``tests/test_guidance_compiled.py`` checks a compiled tiny prior against the eager one on the CPU.

Cost: compiling takes one to three minutes per network on first use (about 3 minutes for ModelScope's UNet3D
and 2 for ControlNet + UNet on the H200 machine's 16 cores). Inductor's caches (FX graphs and Triton kernels)
go to ``<model cache>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so later stages and later runs on
the same machine load the compiled kernels instead of compiling again. A compiled network is not also
replayed from our CUDA graphs (``run.cuda_graphs``): compiled, its launches are few enough that graphs
measured no gain on ModelScope even before compiling. If compiling fails (no C++ compiler or Triton, an
operator Inductor cannot lower), the network warns once and runs eager (:class:`CompiledCall`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from animate124.guidance.graphs import NETWORK_ATTRS, NetworkWrapper, eager_module

log = logging.getLogger(__name__)

__all__ = [
    "COMPILABLE",
    "COMPILE_MODES",
    "CompiledCall",
    "parse_compile",
    "compile_prior_networks",
    "use_compile_cache",
    "is_compiled",
]

#: what ``run.compile_priors`` may name (``all`` = every one): the priors, whose no-grad networks are compiled, and
#: ``invert``, the textual inversion's UNet (forward and backward)
COMPILABLE = ("sd", "zero123", "video", "controlnet", "invert")
#: ``run.compile_mode``: Inductor's modes ("max-autotune" also tries Triton matmul / convolution templates and
#: replays the compiled graph from CUDA graphs; "-no-cudagraphs" without the graphs)
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")


def parse_compile(value: str) -> tuple[str, ...]:
    """``run.compile_priors``: ``"video,controlnet"`` -> ("video", "controlnet"); ``"all"`` -> every prior."""
    from animate124.guidance.offload import parse_prior_names

    return parse_prior_names(value, COMPILABLE, "run.compile_priors", all_word=True)


def use_compile_cache(cache_root: Path) -> Path:
    """Point Inductor's on-disk caches at ``cache_root/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set
    already (the user's choice wins); returns the directory in use."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current:
        return Path(current)
    path = Path(cache_root) / "inductor"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


class CompiledCall(NetworkWrapper):
    """``module(*args, **kwargs)`` through ``torch.compile(module, dynamic=False)``; if compiling or the compiled
    call fails (no C++ compiler or Triton, an operator Inductor cannot lower), a warning and the eager call,
    for good. Out-of-memory errors propagate (the trainer's retry handles them). Attribute access goes to the
    wrapped module (:class:`~animate124.guidance.graphs.NetworkWrapper`); ``eager`` is that module."""

    def __init__(self, module: torch.nn.Module, mode: str = "default") -> None:
        super().__init__(module)
        self.__dict__["mode"] = mode
        kw = {} if mode == "default" else {"mode": mode}
        self.__dict__["compiled"] = torch.compile(module, dynamic=False, **kw)
        self.__dict__["failed"] = None  # the error that sent it back to eager

    def __repr__(self) -> str:
        return f"CompiledCall({type(self.eager).__name__}, failed={self.failed is not None})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager call computes the same
                self.failed = exc
                log.warning(
                    "run.compile_priors: compiling %s failed (%s: %s); it runs eager from now on",
                    type(self.eager).__name__, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                )  # fmt: skip
        return self.eager(*args, **kwargs)


def is_compiled(module: Any) -> bool:
    """Whether ``module`` is wrapped for ``torch.compile`` (:class:`CompiledCall`)."""
    return isinstance(module, CompiledCall)


def compile_prior_networks(prior: Any, mode: str = "default") -> int:
    """Wrap the prior's no-grad networks (``unet``, ``controlnet``) in :class:`CompiledCall` (static shapes,
    Inductor ``mode``: ``run.compile_mode``); returns how many. A network replayed from CUDA graphs is unwrapped
    first; one compiled already is kept."""
    done = 0
    for name in NETWORK_ATTRS:
        net = getattr(prior, name, None)
        if net is None or is_compiled(net):
            continue
        setattr(prior, name, CompiledCall(eager_module(net), mode))
        done += 1
    if done:
        log.info("%s: %d network(s) compiled on first call (cached under %s)", type(prior).__name__, done,
                 os.environ.get("TORCHINDUCTOR_CACHE_DIR", "the default Inductor cache"))  # fmt: skip
    return done
