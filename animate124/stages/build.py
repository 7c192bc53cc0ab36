"""The one translation layer from the config tree to library objects.

Nothing else in the package reads the config sections that configure the library (``field``,
``raymarch``, ``camera``, ``shading``, ``optim``, ``loss``, the stage sections' training values): the
library constructors take explicit values, the schema (``config/schema.py``) is the only place a
default is written, and this module passes every field to where it is used. ``tests/test_build.py``
changes every field from its default and checks that each change arrives.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from animate124.config.schema import Config, FieldConfig
from animate124.engine.runtime import training_device
from animate124.engine.schedules import (
    GRAD_SCALER,
    EntropyRamp,
    Every,
    LevelMaskSchedule,
    LossScaleSchedule,
    ReferenceSchedule,
    ShadingSchedule,
    StepClock,
)
from animate124.engine.trainer import TrainerSettings
from animate124.errors import ConfigError
from animate124.stages.settings import CameraSettings, ClipSettings, LossWeights, RaySettings, Schedules

log = logging.getLogger(__name__)

__all__ = [
    "precision_of",
    "prior_dtype",
    "grid_config",
    "kernel_options",
    "build_field",
    "build_occupancy",
    "ray_settings",
    "camera_settings",
    "clip_settings",
    "loss_weights",
    "stage_clock",
    "stage_schedules",
    "build_optimizer",
    "trainer_settings",
    "stage_prompt",
]


# ------------------------------------------------------------------------------------ run-time
def precision_of(cfg: Config, device: torch.device) -> str:
    """``run.precision`` resolved: auto = fp16 on CUDA (upstream's AMP), fp32 elsewhere."""
    p = cfg.run.precision
    if p == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return p


def prior_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """dtype of the pretrained models' weights: fp16 on CUDA (bf16 or fp32 if asked), fp32 on the CPU."""
    p = precision_of(cfg, device)
    if device.type != "cuda":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}.get(p, torch.float16)


def preprocess_options(cfg: Config) -> dict[str, Any]:
    """``preprocess`` section -> keyword arguments of ``preprocess.pipeline.preprocess_image``."""
    p = cfg.preprocess
    return dict(
        framing=p.framing,
        size=p.size or None,
        border_ratio=p.border_ratio,
        segment_query=p.segment_query,
        min_foreground_fraction=p.min_foreground_fraction,
        min_side=p.min_side,
    )


def ti_config(cfg: Config, device: torch.device) -> Any:
    """``invert`` section (+ ``run.seed``, ``run.precision`` and the speed options ``run.compile_priors`` /
    ``run.channels_last`` naming ``invert``, ``run.compile_mode``, ``run.fused_adamw``) -> the textual
    inversion's settings."""
    from animate124.guidance.compiled import parse_compile
    from animate124.guidance.layout import parse_channels_last
    from animate124.guidance.textual_inversion import TIConfig

    c = cfg.invert
    return TIConfig(
        placeholder=c.placeholder,
        initializer=c.initializer,
        steps=c.steps,
        lr=c.lr,
        batch_size=c.batch_size,
        resolution=c.resolution,
        augment=c.augment,
        upstream_aug_range_bug=c.upstream_aug_range_bug,
        seed=cfg.run.seed,
        checkpoint_every=c.checkpoint_every,
        mixed_precision=precision_of(cfg, device) == "fp16",
        trace_steps=cfg.run.trace_steps,
        trace_parts=cfg.run.trace_parts,
        tensorboard=cfg.run.tensorboard,
        compile_unet="invert" in parse_compile(cfg.run.compile_priors),
        compile_mode=cfg.run.compile_mode,
        channels_last="invert" in parse_channels_last(cfg.run.channels_last),
        fused_adamw=cfg.run.fused_adamw,
        native_fp16=cfg.run.native_fp16,
    )


# ------------------------------------------------------------------------------------ fields
def grid_config(f: FieldConfig) -> Any:
    """``field`` section -> the grid encoding's config."""
    from animate124.scene.grid import GridEncodingConfig

    return GridEncodingConfig(
        num_levels=f.num_levels,
        level_dim=f.level_dim,
        base_resolution=f.base_resolution,
        desired_resolution=f.desired_resolution,
        log2_table_size=f.log2_table_size,
        grid_type=f.grid_type,
    )


def kernel_options(cfg: Config) -> Any:
    """The grid kernels' options of every field a stage or an output command builds (``build_field``) or loads
    (``stages.artifacts.load_field``): the
    ``KernelOptions`` defaults (the fastest measured, BENCHMARKS.md §2, §15.6) with ``fused_normals`` from
    ``run.fused_normals`` (the same function up to fp32 rounding; BENCHMARKS.md §15.8)."""
    from animate124.scene.grid import KernelOptions

    return KernelOptions(fused_normals=cfg.run.fused_normals)


def build_field(f: FieldConfig, kind: str, device: torch.device | str, kernel_options: Any = None) -> Any:
    """A fresh static (``kind="static"``) or 4D (``"dynamic"``) field from a ``field`` section, its grid
    kernels launched with ``kernel_options`` (:func:`kernel_options` of the run's config; None: the defaults)."""
    from animate124.scene.fields import DynamicField, StaticField

    common = dict(
        hidden_dim=f.hidden_dim,
        num_layers=f.num_layers,
        blob_density=f.blob_density,
        blob_radius=f.blob_radius,
        backend=f.backend,
        kernel_options=kernel_options,
    )
    enc = grid_config(f)
    if kind == "static":
        field = StaticField(encoding_cfg=enc, **common)
    elif kind == "dynamic":
        field = DynamicField(encoding_cfg=enc, time_grid_size=f.time_grid_size, **common)
    else:
        raise ConfigError(f"unknown field kind {kind!r}")
    return field.to(device)


def field_section_from_dict(data: dict[str, Any]) -> FieldConfig:
    """A ``FieldConfig`` from the metadata saved with a trained field (unknown keys are ignored)."""
    names = {f.name for f in dataclasses.fields(FieldConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return FieldConfig(**values)


def build_occupancy(cfg: Config, dynamic: bool, device: torch.device | str) -> Any:
    """The occupancy grid of a static field (1 slot) or a 4D one (``raymarch.time_slots`` slots)."""
    from animate124.scene.occupancy import OccupancyGrid

    r = cfg.raymarch
    return OccupancyGrid(
        resolution=r.occupancy_resolution,
        num_slots=r.time_slots if dynamic else 1,
        bound=1.0,
        density_thresh=r.density_thresh,
        decay=r.occupancy_decay,
        dynamic=dynamic,
        upstream_times_bug=r.upstream_times_bug,
    ).to(device)


# ------------------------------------------------------------------------------------ settings
def ray_settings(cfg: Config) -> RaySettings:
    r = cfg.raymarch
    return RaySettings(
        max_steps=r.max_steps,
        min_near=r.min_near,
        transmittance_thresh=r.transmittance_thresh,
        normal_eps=r.normal_eps,
        delta_mode="metric" if r.metric_step else "upstream",
        chunk=r.chunk or None,
        checkpoint_normals=r.checkpoint_normals,
        live_normals=r.live_normals,
        checkpoint_field=r.checkpoint_field,
        fused_march=r.fused_march,
    )


def camera_settings(cfg: Config, stage: str) -> CameraSettings:
    c, sh = cfg.camera, cfg.shading
    st = cfg.static if stage == "static" else cfg.dynamic
    return CameraSettings(
        radius=c.radius,
        fovy=c.fovy,
        uniform_sphere_rate=c.uniform_sphere_rate,
        polar_range=c.polar_range,
        azimuth_range=c.azimuth_range,
        upstream_sphere_sampling=c.upstream_sphere_sampling,
        reference_noise=c.reference_noise,
        render_size=st.render_size,
        ref_size=st.ref_size,
        light_noise=sh.light_noise,
        random_background=sh.random_background,
    )


def clip_settings(cfg: Config) -> ClipSettings:
    d, c = cfg.dynamic, cfg.camera
    return ClipSettings(
        frames=d.frames,
        time_precision=d.time_precision,
        zero_rate=d.zero_rate,
        dynamic_cam_rate=d.dynamic_cam_rate,
        max_dpolar=c.max_dpolar,
        max_dazimuth=c.max_dazimuth,
        clamp_polar=c.clamp_polar,
    )


def loss_weights(cfg: Config, stage: str) -> LossWeights:
    w = cfg.loss
    return LossWeights(
        rgb=w.rgb,
        mask=w.mask,
        depth=w.depth,
        entropy=w.entropy,
        orientation=w.orientation,
        normal_tv=w.normal_tv,
        normal_blur=w.normal_blur,
        time_tv=w.time_tv if stage != "static" else 0.0,
        time_tv_points=w.time_tv_points,
        time_tv_mode=w.time_tv_mode,
    )


def stage_clock(cfg: Config, stage: str) -> StepClock:
    """Upstream's cumulative global step (SPEC 0): dynamic continues after static, refine after both."""
    if stage == "static":
        return StepClock(0, cfg.static.iters)
    if stage == "dynamic":
        return StepClock(cfg.static.iters, cfg.dynamic.iters)
    if stage == "refine":
        return StepClock(cfg.static.iters + cfg.dynamic.iters, cfg.refine.iters)
    raise ConfigError(f"{stage!r} is not a training stage")


def stage_schedules(cfg: Config, stage: str) -> Schedules:
    clock = stage_clock(cfg, stage)
    sh = cfg.shading
    if stage == "static":
        s = cfg.static
        reference = ReferenceSchedule(s.known_iters, s.ref_interval)
        shading = ShadingSchedule(s.normal_warmup_iters, s.textureless_rate, sh.ambient_range)
        mask: LevelMaskSchedule | None = LevelMaskSchedule(
            s.grid_mask_iters, s.grid_mask_levels, cfg.field.num_levels
        )
    else:
        rate = cfg.dynamic.textureless_rate if stage == "dynamic" else cfg.refine.textureless_rate
        reference = ReferenceSchedule(0, cfg.dynamic.ref_interval)
        shading = ShadingSchedule(0, rate, sh.ambient_range)
        mask = None  # upstream's masking ends at global step 3000, before the 4D stages start
    return Schedules(
        clock=clock,
        reference=reference,
        entropy=EntropyRamp(clock.total),
        shading=shading,
        level_mask=mask,
        occupancy=Every(cfg.raymarch.update_interval),
        loss_scale=LossScaleSchedule(
            float(GRAD_SCALER["init_scale"]),
            float(GRAD_SCALER["growth_factor"]),
            int(GRAD_SCALER["growth_interval"]),
        ),
    )


# ------------------------------------------------------------------------------------ optimisation
def stage_lr_and_clip(cfg: Config, stage: str) -> tuple[float, float]:
    sec = {"static": cfg.static, "dynamic": cfg.dynamic, "refine": cfg.refine}[stage]
    return sec.lr, sec.grad_clip


def build_optimizer(cfg: Config, field: Any, stage: str) -> torch.optim.Optimizer:
    """Adam with the two parameter groups of SPEC 3.9 (grids at lr·encoder scale, MLP at lr·mlp scale)."""
    o = cfg.optim
    lr, _ = stage_lr_and_clip(cfg, stage)
    groups = field.param_groups(lr, o.encoder_lr_scale, o.mlp_lr_scale)
    return torch.optim.Adam(groups, lr=lr, betas=o.betas, eps=o.eps)


def trainer_settings(cfg: Config, stage: str, config_hash: str = "") -> TrainerSettings:
    device = training_device(cfg)
    _, clip = stage_lr_and_clip(cfg, stage)
    return TrainerSettings(
        iters=stage_clock(cfg, stage).iters,
        device=device,
        precision=precision_of(cfg, device),
        grad_clip=clip,
        checkpoint_every=cfg.run.checkpoint_every,
        log_every=cfg.run.log_every,
        preview_every=cfg.run.preview_every,
        config_hash=config_hash,
        label=stage,
        trace_steps=cfg.run.trace_steps,
        trace_parts=cfg.run.trace_parts,
        tensorboard=cfg.run.tensorboard,
        grad_stats_every=cfg.run.grad_stats_every,
    )


def stage_prompt(cfg: Config, stage: str) -> str:
    """The stage's prompt with its suffix (SPEC 0 "Prompt decoration"); empty prompts are an error."""
    sec = {"static": cfg.static, "dynamic": cfg.dynamic, "refine": cfg.refine}[stage]
    if not sec.prompt.strip():
        raise ConfigError(
            f"the {stage} stage has no prompt",
            hint=f'pass --prompt "..." (or set {stage}.prompt), or use `animate124 run-all IMAGE PROMPT`',
        )
    return sec.prompt.strip() + sec.prompt_suffix


# ------------------------------------------------------------------------------------ priors
def _store(cfg: Config) -> Any:
    from animate124.engine.runtime import model_store

    return model_store(cfg)


def _finish_prior(cfg: Config, prior: Any, name: str) -> Any:
    """The prior ``name`` with its UNet/ControlNet replayed from CUDA graphs when ``run.cuda_graphs``, or kept
    in host memory between calls when ``name`` is in ``run.offload_priors``, and its text / image encoders
    and VAE decoder parked on the CPU when ``run.park_encoders``, its VAE encoder's attention blocked when
    ``run.vae_attention=blocked``, its VAE encoder's group norms fused when ``run.vae_fused_norm`` (all five:
    the same function), its UNet's and ControlNet's when ``run.unet_fused_norm`` (the same up to summation
    order); run outside autocast with ``run.native_fp16`` (the same up to fp16 rounding); its convolutions channels-last when ``name`` is in ``run.channels_last``, or its networks
    compiled (``run.compile_mode``) when ``name`` is in ``run.compile_priors`` (the same up to rounding, so off in
    paper); its UNet/ControlNet products in fp8 with ``run.prior_precision=fp8`` (lower precision, opt-in)."""
    from animate124.guidance.attention import use_blocked_vae_attention
    from animate124.guidance.base import use_native_fp16
    from animate124.guidance.common import park_encoders
    from animate124.guidance.compiled import compile_prior_networks, parse_compile, use_compile_cache
    from animate124.guidance.graphs import graph_prior_networks
    from animate124.guidance.groupnorm import use_fused_prior_norms, use_fused_vae_norms
    from animate124.guidance.layout import parse_channels_last, use_channels_last
    from animate124.guidance.offload import offload_prior_networks, parse_offload

    if cfg.run.park_encoders:
        park_encoders(prior)
    use_native_fp16(prior, cfg.run.native_fp16)
    if cfg.run.vae_attention == "blocked":
        use_blocked_vae_attention(getattr(prior, "vae", None))
    if cfg.run.vae_fused_norm:
        use_fused_vae_norms(getattr(prior, "vae", None))
    if cfg.run.unet_fused_norm:
        use_fused_prior_norms(prior)
    if cfg.run.prior_precision == "fp8":
        from animate124.guidance.fp8 import use_fp8

        use_fp8(prior)  # ConfigError off a CUDA GPU of compute capability 8.9+
    if name in parse_channels_last(cfg.run.channels_last):
        use_channels_last(prior)
    compile_it = name in parse_compile(cfg.run.compile_priors)
    if name in parse_offload(cfg.run.offload_priors):
        if compile_it:
            log.warning(
                "run.compile_priors: %s is offloaded (run.offload_priors), so it runs uncompiled", name
            )
        return offload_prior_networks(prior)  # its weights move every call: no graph
    if compile_it:
        from animate124.engine.runtime import model_cache_dir

        use_compile_cache(model_cache_dir(cfg))
        compile_prior_networks(prior, cfg.run.compile_mode)  # compiled: no CUDA graph either
        return prior
    return graph_prior_networks(prior, enabled=cfg.run.cuda_graphs)


def _encoder_options(cfg: Config, stage: str = "") -> dict[str, Any]:
    """The VAE-encoder recompute settings every prior takes (``run.vae_checkpoint*``; in the static and dynamic
    stages also ``static.vae_keep_pixels`` / ``dynamic.vae_keep_pixels``; refine, whose memory is tightest,
    keeps nothing)."""
    keep = {"static": cfg.static.vae_keep_pixels, "dynamic": cfg.dynamic.vae_keep_pixels}.get(stage, 0)
    return {
        "checkpoint_encoder": cfg.run.vae_checkpoint,
        "checkpoint_pixels": cfg.run.vae_checkpoint_pixels,
        "checkpoint_keep_pixels": keep,
    }


def build_sd_guidance(cfg: Config, device: torch.device, prompt: str, components: Any = None) -> Any:
    """SD 1.5 SDS of the static stage (SPEC 3.7, 4)."""
    from animate124.guidance.stable_diffusion import StableDiffusionGuidance
    from animate124.models.loaders import load_sd

    s = cfg.static
    comps = components or load_sd(_store(cfg), device=device, dtype=prior_dtype(cfg, device))
    return _finish_prior(
        cfg,
        StableDiffusionGuidance(
            comps,
            prompt=prompt,
            negative_prompt=s.negative_prompt,
            guidance_scale=s.sd_guidance_scale,
            cfg_mode=s.cfg_mode,
            t_range=s.sd_t_range,
            weight=s.sd_weight,
            view_dependent=s.view_dependent_text,
            **_encoder_options(cfg, "static"),
        ),
        "sd",
    )


def build_zero123_guidance(cfg: Config, device: torch.device, stage: str, reference: torch.Tensor) -> Any:
    """Zero123-XL SDS conditioned on the reference view (SPEC 3.8); stage static or dynamic/refine."""
    from animate124.guidance.zero123 import Zero123Guidance
    from animate124.models.loaders import load_zero123

    sec = cfg.static if stage == "static" else cfg.dynamic
    comps = load_zero123(_store(cfg), device=device, dtype=prior_dtype(cfg, device))
    return _finish_prior(
        cfg,
        Zero123Guidance(
            comps,
            guidance_scale=sec.zero123_guidance_scale,
            cfg_mode="standard",  # Zero123 uses the standard CFG form upstream (SPEC 3.8); not a setting
            t_range=sec.zero123_t_range,
            weight=sec.zero123_weight,
            c_concat_mode=sec.zero123_c_concat,
            clip_preprocess=sec.zero123_clip_preprocess,
            reference=reference.to(device),
            # upstream drew its c_concat sample from torch's global generator; ours is seeded by run.seed
            generator=torch.Generator().manual_seed(cfg.run.seed),
            **_encoder_options(cfg, stage),
        ),
        "zero123",
    )


def build_video_guidance(cfg: Config, device: torch.device, prompt: str, stage: str = "dynamic") -> Any:
    """Text-to-video SDS of the 4D stages (SPEC 3.7, 5.2); ``stage`` ("dynamic" or "refine") picks the VAE
    activations it keeps (``dynamic.vae_keep_pixels`` in the dynamic stage, none in refine)."""
    from animate124.guidance.video import VideoGuidance
    from animate124.models.loaders import load_video

    d = cfg.dynamic
    comps = load_video(
        _store(cfg), device=device, dtype=prior_dtype(cfg, device), which=cfg.models.video_model
    )
    return _finish_prior(
        cfg,
        VideoGuidance(
            comps,
            prompt=prompt,
            negative_prompt=d.negative_prompt,
            guidance_scale=d.video_guidance_scale,
            cfg_mode=d.cfg_mode,
            t_range=d.video_t_range,
            weight=d.video_weight,
            vae_grad_frames=d.vae_grad_frames,
            upstream_view_text=d.upstream_view_text,
            **_encoder_options(cfg, stage),
        ),
        "video",
    )


def build_controlnet_guidance(
    cfg: Config, device: torch.device, prompt: str, token: tuple[str, torch.Tensor]
) -> Any:
    """ControlNet-tile + SD 1.5 with the learned token (SPEC 6); one SD UNet, shared with nothing else."""
    from animate124.guidance.controlnet import ControlNetGuidance
    from animate124.models.loaders import load_controlnet, load_sd

    r = cfg.refine
    dtype = prior_dtype(cfg, device)
    store = _store(cfg)
    sd = load_sd(store, device=device, dtype=dtype)
    cn = load_controlnet(store, device=device, dtype=dtype)
    return _finish_prior(
        cfg,
        ControlNetGuidance(
            sd,
            cn,
            prompt=prompt,
            negative_prompt=r.negative_prompt,
            controlnet_prompt=r.controlnet_prompt,
            image_size=r.image_size,
            guidance_scale=r.guidance_scale,
            cfg_mode=r.cfg_mode,
            t_range=r.t_range,
            target=r.target,
            weight=r.weight,
            frames=frame_selection(r.frames),
            upstream_view_text=cfg.dynamic.upstream_view_text,
            learned_token=token,
            **_encoder_options(cfg),
        ),
        "controlnet",
    )


def frame_selection(spec: str) -> str | list[int]:
    """``refine.frames``: "even:N", "all", or comma-separated indices ("0,8")."""
    spec = spec.strip()
    if spec == "all" or spec.startswith("even:"):
        return spec
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"refine.frames: {spec!r} is not 'even:N', 'all' or a list of frame indices",
            hint="for example --set refine.frames=even:2 or --set refine.frames=0,8",
        ) from None
