"""The invert stage (SPEC section 2): textual inversion of one SD 1.5 token on the original photo."""

from __future__ import annotations

import logging
from typing import Any

from animate124.config.loader import replace as cfg_replace
from animate124.config.schema import Config
from animate124.engine.interrupt import graceful_interrupt
from animate124.engine.progress import rich_progress
from animate124.engine.runner import StageContext, StageResult, run_stage
from animate124.engine.runtime import model_store, resolve_device
from animate124.fileio import atomic_path, file_sha256
from animate124.preprocess.image_io import load_photo
from animate124.project import Project
from animate124.stages.build import prior_dtype, ti_config
from animate124.stages.preprocess import source_image
from animate124.stages.spec import get_stage

log = logging.getLogger(__name__)


def run_invert(
    project: Project,
    cfg: Config,
    *,
    force: bool = False,
    show_progress: bool = True,
) -> StageResult:
    """Train (or resume) the token and write ``<project>/invert/learned_embeds.safetensors``.

    The initializer must be one token (InputError otherwise); the pre-flight of the CLI decides the word
    (:func:`animate124.stages.preflight.decide_initializer`) before any stage runs.
    """
    project.require()
    src = source_image(project)

    def body(ctx: StageContext) -> dict:
        import torch

        from animate124.guidance.textual_inversion import (
            save_learned_embeds,
            train_textual_inversion,
        )
        from animate124.models.loaders import load_sd

        device = resolve_device(cfg.run.device)
        torch.manual_seed(cfg.run.seed)  # the process-wide generator too: runs and resumes are reproducible
        comps = load_sd(model_store(cfg), device=device, dtype=prior_dtype(cfg, device))
        comps.text_encoder.float()  # the token is trained through an fp32 text encoder, as upstream (SPEC 2)
        if cfg.run.vae_fused_norm:
            from animate124.guidance.groupnorm import use_fused_vae_norms

            use_fused_vae_norms(comps.vae)  # the same function (BENCHMARKS.md §8.8)
        if cfg.run.unet_fused_norm:
            from animate124.guidance.groupnorm import use_fused_unet_norms

            use_fused_unet_norms(comps.unet)  # the same up to summation order; fp16 activations for backward
        c = cfg.invert
        ti = ti_config(cfg, device)
        if ti.compile_unet:  # run.compile_priors names invert: Inductor's caches under the model cache
            from animate124.engine.runtime import model_cache_dir
            from animate124.guidance.compiled import use_compile_cache

            use_compile_cache(model_cache_dir(cfg))
        photo = load_photo(src)
        train_metrics: dict = {}
        ckpt = project.stage("invert").checkpoints
        ckpt.mkdir(parents=True, exist_ok=True)
        with rich_progress("invert", enabled=show_progress) as prog, graceful_interrupt() as stop:

            def train(ti: Any) -> Any:  # TIConfig -> the learned vector
                return train_textual_inversion(
                    comps,
                    photo,
                    ti,
                    checkpoint_dir=ckpt,
                    device=device,
                    progress=prog,
                    should_stop=stop,
                    log_path=project.log_path("invert"),
                    metrics=train_metrics,
                )

            vec = train(ti)
        if stop.requested:
            return {}  # graceful_interrupt raises KeyboardInterrupt on exit; the runner marks it interrupted
        with atomic_path(project.learned_embeds) as tmp:
            save_learned_embeds(tmp, {c.placeholder: vec.detach().float().cpu()})
        return {
            "artifacts": {"learned_embeds": project.learned_embeds},
            "metrics": {
                "placeholder": c.placeholder,
                "initializer": ti.initializer,
                "norm": float(vec.float().norm()),
                **train_metrics,
            },
        }

    return run_stage(project, get_stage("invert"), cfg, body, force=force, extra_hash=file_sha256(src))


__all__ = ["run_invert", "load_photo", "cfg_replace"]
