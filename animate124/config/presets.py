"""Presets: named override sets on top of the schema defaults (which are the paper settings).

Each preset is a function with a one-line docstring (shown by ``animate124 config presets``) that
returns a nested dict of overrides. Presets never introduce defaults of their own: a value that is
not overridden comes from ``schema.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from animate124.errors import ConfigError


def paper() -> dict[str, Any]:
    """SPEC section 12's effective settings (5k/10k/5k steps, 1024 samples per ray), upstream bugs fixed."""
    return {}


def fast() -> dict[str, Any]:
    """About a third of the paper's steps and half the samples per ray: a quick look at a result."""
    return {
        "invert": {"steps": 1000},
        "static": {"iters": 2000, "normal_warmup_iters": 400, "grid_mask_iters": 1200},
        "dynamic": {"iters": 3000},
        "refine": {"iters": 1500},
        "raymarch": {"max_steps": 512},
        "render": {"frames": 32, "views": 6},
    }


def low_vram() -> dict[str, Any]:
    """Paper steps, memory knobs down: VAE grads through 4 frames, 512 px refinement, TI batch 4, 512 samples.

    What changes the result: ``dynamic.vae_grad_frames`` 4 (the video prior's gradient reaches 4 of the 16
    frames), ``refine.image_size`` 512 (ControlNet at 512² instead of 1024²), ``invert.batch_size`` 4 and
    ``raymarch.max_steps`` 512 (half the samples per ray). What does not: ``run.vae_checkpoint_pixels``
    256² (the VAE recompute in backward one 256² frame at a time, larger images block by block: the same
    gradients, slower), ``run.offload_priors`` zero123 (Zero123's UNet, used only on clips that start
    at t = 0, stays in host memory and is copied in for each call: 1.6 GiB less, the same outputs) and
    ``raymarch.checkpoint_field`` 2^22 (a training render keeps its field activations for 4.2 M samples
    and re-runs the others' in backward: about 280 bytes less per sample beyond, the same gradients).
    """
    return {
        "run": {"vae_checkpoint_pixels": 256 * 256, "offload_priors": "zero123"},
        "dynamic": {"vae_grad_frames": 4},
        "refine": {"image_size": 512},
        "invert": {"batch_size": 4},
        "raymarch": {"max_steps": 512, "checkpoint_field": 2**22},
    }


def tiny() -> dict[str, Any]:
    """Tiny random models, tiny renders, a few steps: every stage runs on a CPU in seconds (tests, smoke runs)."""
    return {
        "run": {
            "device": "cpu",
            "precision": "fp32",
            "checkpoint_every": 5,
            "log_every": 1,
            "grad_stats_every": 0,
        },
        "models": {"tiny": True},
        "invert": {"steps": 10, "batch_size": 2, "resolution": 64, "checkpoint_every": 5},
        "field": {
            "num_levels": 4,
            "base_resolution": 4,
            "desired_resolution": 32,
            "log2_table_size": 12,
            "hidden_dim": 16,
            "time_grid_size": 4,
        },
        "raymarch": {"max_steps": 32, "occupancy_resolution": 16, "time_slots": 2},
        "loss": {"time_tv_points": 256},
        "static": {
            "iters": 8,
            "render_size": 32,
            "ref_size": 32,
            "known_iters": 2,
            "normal_warmup_iters": 2,
            "grid_mask_iters": 2,
            "grid_mask_levels": 2,
        },
        "dynamic": {"iters": 8, "frames": 4, "render_size": 16, "time_precision": 16},
        "refine": {"iters": 4, "image_size": 64},
        "render": {"size": 32, "views": 2, "frames": 4, "orbit_frames": 8, "fps": 8},
        "export": {
            "resolution": 48,
            "frames": 4,
            "silhouette_size": 32,
            "silhouette_views": 4,
            "texture_size": 256,
            "fit_iters": 40,
            "turntable": 96,
        },
        "evaluate": {"size": 32, "frames": 4, "views": 2, "ref_size": 64},
    }


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "paper": paper,
    "fast": fast,
    "low-vram": low_vram,
    "tiny": tiny,
}


def preset_overrides(name: str) -> dict[str, Any]:
    """The override dict of preset ``name``; a ConfigError lists the valid names."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}", hint=f"choose one of: {', '.join(PRESETS)}") from None


def preset_descriptions() -> dict[str, str]:
    """name -> one-line description."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in PRESETS.items()}
