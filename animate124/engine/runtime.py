"""Run-time context shared by the stages: device, dtype, model store, versions."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

from animate124.config.schema import Config
from animate124.errors import ConfigError

log = logging.getLogger(__name__)


DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str) -> None:
    """Raise a ConfigError unless ``name`` is auto, cpu, cuda or cuda:N (a syntax check, no torch)."""
    if not _DEVICE_RE.fullmatch(name):
        raise ConfigError(
            f"run.device: {name!r} is not a device", hint=f"use one of: {', '.join(DEVICE_CHOICES)}"
        )


def resolve_device(name: str):
    """``auto`` -> cuda if available else cpu; an explicit name must exist on this machine.

    Raises ConfigError for a name that is not a device and for a CUDA device that this machine does
    not have, so a command can check its device before it creates or changes anything.
    """
    check_device_name(name)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device is {name} but this machine has no usable CUDA GPU",
                hint="use --device cpu (with --preset tiny for a quick run) or --device auto",
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"run.device is {name} but this machine has {count} CUDA GPU(s)",
                hint=f"use cuda:0 .. cuda:{count - 1}, or auto",
            )
    return dev


@contextlib.contextmanager
def deterministic_algorithms(cfg: Config) -> Iterator[bool]:
    """Within the block, PyTorch's deterministic algorithms when ``run.deterministic`` asks for them
    (``auto``: on the CPU); yields whether they are on. The previous settings come back afterwards.

    What it fixes: reductions whose order depends on thread scheduling, chiefly ``index_put_`` with
    ``accumulate=True`` (the backward of a plain ``tensor[index]`` gather) on a multi-threaded CPU, and
    atomics on a GPU (cuDNN's algorithm choice, the grid encoder's Triton backward: ``auto`` grids run the
    torch encoder). Operations without a deterministic implementation warn instead of failing. With the
    same seed, machine and thread count, two runs then give identical tensors. The hot gathers of the
    field and the renderer already differentiate to ``index_add_`` (fixed order on the CPU, and faster),
    so on the CPU this mode costs little.
    """
    import torch

    mode = cfg.run.deterministic
    device = resolve_device(cfg.run.device)
    on = mode == "on" or (mode == "auto" and device.type == "cpu")
    if not on:
        yield False
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":  # cuBLAS reads this when its first handle is made (the stage's first matmul)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield True
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def model_cache_dir(cfg: Config) -> Path:
    """Where the models of this config live (the tiny preset uses its own sub-cache)."""
    from animate124.models.store import default_cache_dir

    base = Path(cfg.models.cache_dir).expanduser() if cfg.models.cache_dir else default_cache_dir()
    return base / "tiny-models" if cfg.models.tiny else base


def model_store(cfg: Config):
    """A ModelStore for ``cfg``; for the tiny preset, builds the tiny models on first use (offline)."""
    from animate124.models.store import ModelStore

    cache = model_cache_dir(cfg)
    if cfg.models.tiny:
        from animate124.models.tiny import ensure_tiny_cache

        ensure_tiny_cache(cache)  # safe when several processes start on an empty cache
    overrides = {
        role: getattr(cfg.models, role)
        for role in ("sd", "zero123", "video", "controlnet", "depth", "matting", "segment", "clip")
        if getattr(cfg.models, role)
    }
    return ModelStore(cache_dir=cache, offline=cfg.models.offline, overrides=overrides)


def versions() -> dict[str, str]:
    """Library and GPU versions recorded in the manifest."""
    out: dict[str, str] = {"python": platform.python_version()}
    import importlib.metadata as md

    for pkg in ("animate124", "torch", "diffusers", "transformers", "huggingface_hub", "triton"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["cuda"] = str(torch.version.cuda)
    except Exception:  # pragma: no cover - best effort
        pass
    return out
