"""Run-time context shared by the stages: device, dtype, model store, versions."""

from __future__ import annotations

import contextlib
import logging
import platform
from pathlib import Path
from typing import Any

from animate124.config.schema import Config
from animate124.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str):
    """``auto`` -> cuda if available else cpu; validates explicit names."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"run.device: {name!r} is not a device name", hint="use auto, cpu, cuda or cuda:N"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device is cuda but no CUDA GPU is available", hint="use --device cpu or auto")
    return dev


def resolve_dtype(precision: str, device) -> Any:
    """The dtype of the pretrained priors: fp16 on CUDA for ``auto``, fp32 on CPU."""
    import torch

    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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
        from animate124.models.tiny import build_tiny_cache, is_tiny_cache

        if not is_tiny_cache(cache):
            log.info("building tiny random models in %s", cache)
            build_tiny_cache(cache)
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
