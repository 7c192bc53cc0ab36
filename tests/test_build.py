"""The config reaches the library: every field, changed from its value, changes what the build layer makes.

``stages/build.py`` is the only code that turns the config tree into library objects. Here each field of
the sections it translates is changed on its own; the "fingerprint" of everything built from the config
(fields, occupancy grids, ray/camera/clip/loss settings, schedules, trainer settings, optimizers, the
priors' constructor arguments, the preprocessing options, the textual-inversion settings, the model
store, a system's random generator) must change. A field nobody reads would leave it unchanged.

The output commands' sections (render, export, evaluate) are read by their stage modules, each of which
is checked to mention every field of its section.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import torch
from helpers_triton import needs_triton, run_interpreted

from animate124.config import resolve_config
from animate124.config.loader import deep_merge, from_dict, to_dict
from animate124.config.schema import Config
from animate124.errors import ConfigError
from animate124.stages import build

CPU = torch.device("cpu")
PROMPTS = {"static": {"prompt": "a toy"}, "dynamic": {"prompt": "a toy is spinning"},
           "refine": {"prompt": "a <token> is spinning"}}  # fmt: skip

# Fields that cannot change what is built on this machine, each with the reason.
NOT_VARIED = {
    "run.device": "only a CPU here; resolve_device is tested in test_cli (auto/cpu/cuda/bad names)",
    "run.devices": "only a CPU here; test_multi_device runs cpu,cpu through the three stages (same results)",
    "run.cuda_graphs": "wraps only CUDA priors; test_cuda_graphs checks the wiring (CPU) and the replay (GPU)",
    "run.park_encoders": "moves modules of the (recorder) priors; test_park_encoders checks wiring and outputs",
    "run.offload_priors": "wraps the networks of the (recorder) priors; test_offload checks wiring and outputs",
    "run.compile_priors": "compiles the networks of the (recorder) priors; test_guidance_compiled checks it",
    "run.vae_attention": "sets the attention processor of the priors' VAEs; test_guidance_attention checks it",
    "run.vae_fused_norm": "replaces the priors' VAE encoder norms; test_guidance_groupnorm checks wiring and outputs",
    "run.unet_fused_norm": "replaces the priors' and the inversion's UNet norms; test_guidance_groupnorm checks it",
    "run.channels_last": "converts the (recorder) priors' networks; test_guidance_agreement checks wiring and results",
    "run.prior_precision": "fp8 needs a CUDA GPU of compute capability 8.9; test_guidance_fp8 checks the error here",
    "refine.frozen_frames": "read where stages/refine.py makes its system; test_stages_training runs both values",
    "run.deterministic": "read by engine/runner.py around every stage; test_trust and test_reproducible check it",
}
OUTPUT_SECTIONS = {
    "render": "animate124/stages/render.py",
    "export": "animate124/stages/export.py",
    "evaluate": "animate124/stages/evaluate.py",
}


class _Recorder:
    """Stands in for a prior or a loader: remembers how it was called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, torch.Generator):  # its repr is its address, new on every build
                return f"<generator seeded {v.initial_seed()}>"
            return "<obj>" if isinstance(v, (_Recorder, torch.Tensor)) else v

        return repr(([clean(a) for a in self.args], {k: clean(v) for k, v in sorted(self.kwargs.items())}))


@pytest.fixture
def fakes(monkeypatch):
    """Loaders and prior classes replaced by recorders (no model is loaded)."""
    import animate124.guidance.controlnet as cn
    import animate124.guidance.stable_diffusion as sd
    import animate124.guidance.video as vid
    import animate124.guidance.zero123 as z
    import animate124.models.loaders as loaders

    for mod, name in ((sd, "StableDiffusionGuidance"), (z, "Zero123Guidance"), (vid, "VideoGuidance"),
                      (cn, "ControlNetGuidance")):  # fmt: skip
        monkeypatch.setattr(mod, name, _Recorder)
    for name in ("load_sd", "load_zero123", "load_video", "load_controlnet"):
        monkeypatch.setattr(loaders, name, _Recorder)
    monkeypatch.setattr(build, "_store", lambda cfg: "store")


def _describe_module(m: torch.nn.Module) -> str:
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    attrs = {k: v for k, v in vars(m).items() if isinstance(v, (int, float, bool, str, tuple))}
    return repr((shapes, sorted(attrs.items()), repr(m)))


def fingerprint(cfg: Config) -> dict[str, str]:
    """What the build layer makes from ``cfg`` (see the module docstring)."""
    from animate124.engine.runtime import model_cache_dir
    from animate124.stages.static import build_static_system
    from animate124.stages.system import ReferenceData

    fp: dict[str, str] = {}
    fp["grid"] = repr(build.grid_config(cfg.field))
    static = build.build_field(cfg.field, "static", CPU)
    fp["static_field"] = _describe_module(static)
    fp["dynamic_field"] = _describe_module(build.build_field(cfg.field, "dynamic", CPU))
    for dyn in (False, True):
        occ = build.build_occupancy(cfg, dynamic=dyn, device=CPU)
        fp[f"occupancy_{dyn}"] = repr(sorted((k, v) for k, v in vars(occ).items() if not k.startswith("_")))
    fp["rays"] = repr(build.ray_settings(cfg))
    fp["clip"] = repr(build.clip_settings(cfg))
    for stage in ("static", "dynamic", "refine"):
        fp[f"camera_{stage}"] = repr(build.camera_settings(cfg, stage))
        fp[f"loss_{stage}"] = repr(build.loss_weights(cfg, stage))
        fp[f"schedules_{stage}"] = repr(build.stage_schedules(cfg, stage))
        fp[f"trainer_{stage}"] = repr(build.trainer_settings(cfg, stage))
        opt = build.build_optimizer(cfg, static, stage)
        fp[f"optim_{stage}"] = repr([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
        fp[f"prompt_{stage}"] = build.stage_prompt(cfg, stage)
    ref = torch.zeros(1, 3, 8, 8)
    fp["sd"] = repr(build.build_sd_guidance(cfg, CPU, "p"))
    fp["zero123_static"] = repr(build.build_zero123_guidance(cfg, CPU, "static", ref))
    fp["zero123_dynamic"] = repr(build.build_zero123_guidance(cfg, CPU, "dynamic", ref))
    fp["video"] = repr(build.build_video_guidance(cfg, CPU, "p"))
    fp["controlnet"] = repr(build.build_controlnet_guidance(cfg, CPU, "p", ("<t>", torch.zeros(4))))
    fp["preprocess"] = repr(build.preprocess_options(cfg))
    fp["ti"] = repr(build.ti_config(cfg, CPU))
    fp["models"] = repr((model_cache_dir(cfg), to_dict(cfg.models)))
    reference = ReferenceData(torch.ones(1, 1, 3, 8, 8), torch.ones(1, 1, 1, 8, 8, dtype=torch.bool), None)
    system, _ = build_static_system(cfg, CPU, reference=reference, priors={})
    fp["system"] = repr((system.generator.initial_seed(), system.timers.enabled, system.sds_grad_scale,
                         system.field.encoder.kernel_options))  # fmt: skip
    return fp


def _alternative(path: str, tp: Any, value: Any, meta: dict[str, Any]) -> list[Any]:
    """Candidate values different from ``value`` for the field at ``path`` (the first valid one is used)."""
    origin = get_origin(tp)
    if origin is Literal:
        return [c for c in get_args(tp) if c != value]
    if tp is bool:
        return [not value]
    if origin is tuple:
        lo, hi = value
        return [(lo, (lo + hi) / 2), ((lo + hi) / 2, hi), (lo * 0.5, hi)]
    if tp is int:
        cands = [value * 2, value + 1, value - 1, max(1, value // 2)]
        return [c for c in cands if c != value]
    if tp is float:
        lo, hi = meta.get("min"), meta.get("max")
        cands = [value * 1.5 + 0.1, value * 0.5, (value + hi) / 2 if hi is not None else value + 1.0]
        if lo is not None and hi is not None:
            cands.append((lo + hi) / 2)
        return [c for c in cands if c != value]
    if tp is str:
        if path == "refine.frames":
            return ["even:3", "0,1"]
        if path.startswith("models.") and path not in ("models.cache_dir",):
            return ["/tmp/animate124-override-" + path.split(".")[1]]
        return [value + " and more", "something else"]
    raise AssertionError(f"no alternative for {path}: {tp}")


def _fields() -> list[tuple[str, Any, Any, dict[str, Any]]]:
    out = []
    base = Config()
    for sec in dataclasses.fields(Config):
        section = getattr(base, sec.name)
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            out.append((f"{sec.name}.{f.name}", hints[f.name], f, dict(f.metadata)))
    return out


BUILT_FIELDS = [
    (p, tp, f, m)
    for p, tp, f, m in _fields()
    if p.split(".")[0] not in OUTPUT_SECTIONS and p not in NOT_VARIED
]


@pytest.fixture(scope="module")
def base_dict() -> dict[str, Any]:
    return to_dict(resolve_config("tiny", None, PROMPTS, []))


def test_every_translated_field_changes_what_is_built(fakes, base_dict):
    base_cfg = from_dict(base_dict)
    base_fp = fingerprint(base_cfg)
    ignored = []
    for path, tp, _f, meta in BUILT_FIELDS:
        sec, name = path.split(".")
        value = getattr(getattr(base_cfg, sec), name)
        tried = 0
        for alt in _alternative(path, tp, value, meta):  # e.g. precision "auto" is fp32 on a CPU too
            try:
                cfg = from_dict(deep_merge(base_dict, {sec: {name: alt}}))
            except ConfigError:
                continue
            tried += 1
            if any(v != base_fp[k] for k, v in fingerprint(cfg).items()):
                break
        else:
            assert tried, f"no valid alternative value for {path}"
            ignored.append(path)
    assert not ignored, f"config fields that change nothing the build layer makes: {ignored}"


def test_output_sections_are_read_by_their_stage_modules():
    root = Path(__file__).resolve().parents[1]
    for sec, module in OUTPUT_SECTIONS.items():
        src = (root / module).read_text()
        fields = [f.name for f in dataclasses.fields(getattr(Config(), sec))]
        missing = [n for n in fields if f".{n}" not in src]
        assert not missing, f"{module} never reads {sec}.{missing}"


def test_library_constructors_have_no_defaults_for_configured_values():
    """The schema is the only place a default lives: the constructors the build layer calls take every
    configured value explicitly (a default there would silently win if the build layer forgot a field)."""
    from animate124.guidance.controlnet import ControlNetGuidance
    from animate124.guidance.stable_diffusion import StableDiffusionGuidance
    from animate124.guidance.video import VideoGuidance
    from animate124.guidance.zero123 import Zero123Guidance
    from animate124.render.sampling import sample_frame_times, sample_training_camera, sample_trajectory
    from animate124.scene.fields import DynamicField, StaticField
    from animate124.scene.grid import GridEncodingConfig
    from animate124.scene.occupancy import OccupancyGrid
    from animate124.stages import system

    configured = {
        StableDiffusionGuidance: (
            "guidance_scale",
            "cfg_mode",
            "t_range",
            "weight",
            "view_dependent",
            "checkpoint_encoder",
            "checkpoint_pixels",
            "checkpoint_keep_pixels",
        ),
        Zero123Guidance: (
            "guidance_scale",
            "cfg_mode",
            "t_range",
            "weight",
            "checkpoint_encoder",
            "checkpoint_pixels",
            "checkpoint_keep_pixels",
        ),  # fmt: skip
        VideoGuidance: (
            "guidance_scale",
            "cfg_mode",
            "t_range",
            "weight",
            "vae_grad_frames",
            "checkpoint_encoder",
            "checkpoint_pixels",
            "checkpoint_keep_pixels",
        ),
        ControlNetGuidance: (
            "image_size",
            "guidance_scale",
            "t_range",
            "target",
            "weight",
            "frames",
            "checkpoint_encoder",
            "checkpoint_pixels",
            "checkpoint_keep_pixels",
        ),
        StaticField: ("hidden_dim", "num_layers", "blob_density", "blob_radius", "backend"),
        DynamicField: ("time_grid_size", "hidden_dim", "num_layers", "blob_density", "blob_radius"),
        GridEncodingConfig: (
            "num_levels",
            "level_dim",
            "base_resolution",
            "desired_resolution",
            "log2_table_size",
            "grid_type",
        ),  # fmt: skip
        sample_training_camera: ("radius", "fovy", "uniform_sphere_rate", "theta_range", "fix_upstream"),
        sample_trajectory: ("frames", "dynamic_cam_rate", "max_dpolar", "max_dazimuth", "clamp_polar"),
        sample_frame_times: ("frames", "precision", "zero_rate"),
        system.RaySettings: ("max_steps", "min_near", "transmittance_thresh", "normal_eps"),
    }
    with_defaults = []
    for obj, names in configured.items():
        params = inspect.signature(obj).parameters
        for n in names:
            assert n in params, (obj, n)
            if params[n].default is not inspect.Parameter.empty:
                with_defaults.append(f"{getattr(obj, '__name__', obj)}.{n}")
    assert not with_defaults, with_defaults
    # the occupancy grid's constructor is called with every configured value by the build layer
    occ = build.build_occupancy(resolve_config("tiny"), dynamic=True, device=CPU)
    assert isinstance(occ, OccupancyGrid) and occ.num_slots == resolve_config("tiny").raymarch.time_slots


# ------------------------------------------------------------------------------------------------ destinations
STAGES = ("static", "dynamic", "refine")


def built(cfg: Config, monkeypatch) -> dict[str, Any]:
    """The objects the build layer makes from ``cfg`` (priors and loaders: recorders), by name."""
    from animate124.engine import runtime
    from animate124.stages.static import build_static_system
    from animate124.stages.system import ReferenceData

    monkeypatch.setattr("animate124.models.tiny.ensure_tiny_cache", lambda cache: None)
    b: dict[str, Any] = {"grid": build.grid_config(cfg.field), "rays": build.ray_settings(cfg)}
    b["static_field"] = build.build_field(cfg.field, "static", CPU)
    b["dynamic_field"] = build.build_field(cfg.field, "dynamic", CPU)
    b["occ_static"] = build.build_occupancy(cfg, dynamic=False, device=CPU)
    b["occ_dynamic"] = build.build_occupancy(cfg, dynamic=True, device=CPU)
    b["clip"] = build.clip_settings(cfg)
    for stage in STAGES:
        b[f"camera_{stage}"] = build.camera_settings(cfg, stage)
        b[f"loss_{stage}"] = build.loss_weights(cfg, stage)
        b[f"sched_{stage}"] = build.stage_schedules(cfg, stage)
        b[f"trainer_{stage}"] = build.trainer_settings(cfg, stage)
        opt = build.build_optimizer(cfg, b["static_field"], stage)
        b[f"optim_{stage}"] = {g["name"]: g["lr"] for g in opt.param_groups} | dict(opt.defaults)
        b[f"prompt_{stage}"] = build.stage_prompt(cfg, stage)
    ref = torch.zeros(1, 3, 8, 8)
    b["sd"] = build.build_sd_guidance(cfg, CPU, "p")
    b["zero123_static"] = build.build_zero123_guidance(cfg, CPU, "static", ref)
    b["zero123_dynamic"] = build.build_zero123_guidance(cfg, CPU, "dynamic", ref)
    b["video"] = build.build_video_guidance(cfg, CPU, "p")
    b["video_refine"] = build.build_video_guidance(cfg, CPU, "p", "refine")
    b["zero123_refine"] = build.build_zero123_guidance(cfg, CPU, "refine", ref)
    b["controlnet"] = build.build_controlnet_guidance(cfg, CPU, "p", ("<t>", torch.zeros(4)))
    b["preprocess"] = build.preprocess_options(cfg)
    b["ti"] = build.ti_config(cfg, CPU)
    b["store"] = runtime.model_store(cfg)
    reference = ReferenceData(torch.ones(1, 1, 3, 8, 8), torch.ones(1, 1, 1, 8, 8, dtype=torch.bool), None)
    b["system"], _ = build_static_system(cfg, CPU, reference=reference, priors={})
    return b


def _attr(name: str, *path: str):
    def get(b: dict[str, Any]) -> Any:
        v = b[name]
        for p in path:
            v = v[p] if isinstance(v, dict) else getattr(v, p)
        return v

    get.__name__ = ".".join((name, *path))
    return get


def _kw(name: str, key: str):
    def get(b: dict[str, Any]) -> Any:
        return b[name].kwargs[key]

    get.__name__ = f"{name}({key}=)"
    return get


def _each(prefix: str, *path: str, stages=STAGES):
    return [_attr(f"{prefix}_{s}", *path) for s in stages]


_PRIORS = ("sd", "zero123_static", "zero123_dynamic", "video", "controlnet")
#: field -> the places its value must arrive (each getter reads one place from ``built``)
DESTINATIONS: dict[str, list] = {
    "run.seed": [lambda b: b["system"].generator.initial_seed(), _attr("ti", "seed"),
                 lambda b: b["zero123_static"].kwargs["generator"].initial_seed()],
    "run.precision": [*_each("trainer", "precision")],
    "run.checkpoint_every": _each("trainer", "checkpoint_every"),
    "run.log_every": _each("trainer", "log_every"),
    "run.grad_stats_every": _each("trainer", "grad_stats_every"),
    "run.tensorboard": [*_each("trainer", "tensorboard"), _attr("ti", "tensorboard")],
    "run.compile_mode": [_attr("ti", "compile_mode")],
    "run.fused_adamw": [_attr("ti", "fused_adamw")],
    "run.native_fp16": [_attr("ti", "native_fp16"), *[_attr(p, "native_fp16") for p in _PRIORS]],
    "run.profile": [lambda b: b["system"].timers.enabled],
    "run.fused_normals": [lambda b: b["system"].field.encoder.kernel_options.fused_normals],
    "run.trace_steps": [*_each("trainer", "trace_steps"), _attr("ti", "trace_steps")],
    "run.trace_parts": [*_each("trainer", "trace_parts"), _attr("ti", "trace_parts")],
    "run.preview_every": _each("trainer", "preview_every"),
    "run.vae_checkpoint": [_kw(p, "checkpoint_encoder") for p in _PRIORS],
    "run.vae_checkpoint_pixels": [_kw(p, "checkpoint_pixels") for p in _PRIORS],
    # each stage's own priors only; refine's keep 0 (test_refine_priors_keep_no_encoder_activations)
    "static.vae_keep_pixels": [_kw("sd", "checkpoint_keep_pixels"), _kw("zero123_static", "checkpoint_keep_pixels")],
    "dynamic.vae_keep_pixels": [
        _kw("video", "checkpoint_keep_pixels"), _kw("zero123_dynamic", "checkpoint_keep_pixels")
    ],
    "models.tiny": [lambda b: b["store"].cache_dir.name == "tiny-models"],
    "models.cache_dir": [lambda b: str(b["store"].cache_dir).removesuffix("/tiny-models")],
    "models.video_model": [lambda b: b["video"].args[0].kwargs["which"]],
    **{f"models.{r}": [lambda b, r=r: b["store"].overrides.get(r)]
       for r in ("sd", "zero123", "video", "controlnet", "depth", "matting", "segment", "clip")},
    **{f"preprocess.{k}": [_attr("preprocess", k)]
       for k in ("framing", "size", "border_ratio", "segment_query", "min_foreground_fraction", "min_side")},
    **{f"invert.{k}": [_attr("ti", k)]
       for k in ("placeholder", "initializer", "steps", "lr", "batch_size", "resolution", "augment",
                 "upstream_aug_range_bug", "checkpoint_every")},
    **{f"field.{k}": [_attr("grid", k)]
       for k in ("num_levels", "level_dim", "base_resolution", "desired_resolution", "log2_table_size", "grid_type")},
    **{f"field.{k}": [_attr("static_field", k), _attr("dynamic_field", k)]
       for k in ("hidden_dim", "num_layers", "blob_density", "blob_radius", "backend")},
    "field.time_grid_size": [_attr("dynamic_field", "time_grid_size")],
    **{f"raymarch.{k}": [_attr("rays", k)]
       for k in ("max_steps", "min_near", "transmittance_thresh", "normal_eps", "checkpoint_normals",
                 "checkpoint_field", "live_normals", "fused_march")},
    "raymarch.metric_step": [_attr("rays", "delta_mode")],
    "raymarch.chunk": [_attr("rays", "chunk")],
    "raymarch.occupancy_resolution": [_attr("occ_static", "resolution"), _attr("occ_dynamic", "resolution")],
    "raymarch.time_slots": [_attr("occ_dynamic", "num_slots")],
    "raymarch.density_thresh": [_attr("occ_static", "density_thresh"), _attr("occ_dynamic", "density_thresh")],
    "raymarch.occupancy_decay": [_attr("occ_static", "decay"), _attr("occ_dynamic", "decay")],
    "raymarch.upstream_times_bug": [_attr("occ_dynamic", "upstream_times_bug")],
    "raymarch.update_interval": _each("sched", "occupancy", "interval"),
    **{f"camera.{k}": _each("camera", k)
       for k in ("radius", "fovy", "uniform_sphere_rate", "polar_range", "azimuth_range", "upstream_sphere_sampling",
                 "reference_noise")},
    **{f"camera.{k}": [_attr("clip", k)] for k in ("max_dpolar", "max_dazimuth", "clamp_polar")},
    "shading.ambient_range": _each("sched", "shading", "ambient_range"),
    "shading.light_noise": _each("camera", "light_noise"),
    "shading.random_background": _each("camera", "random_background"),
    "optim.betas": _each("optim", "betas"),
    "optim.eps": _each("optim", "eps"),
    # each stage's groups: the grids at lr · encoder scale, the MLP at lr · mlp scale (lr = the stage's)
    "optim.encoder_lr_scale": [lambda b, s=s: b[f"optim_{s}"]["encoder"] / b[f"optim_{s}"]["lr"] for s in STAGES],
    "optim.mlp_lr_scale": [lambda b, s=s: b[f"optim_{s}"]["sigma_net"] / b[f"optim_{s}"]["lr"] for s in STAGES],
    **{f"loss.{k}": _each("loss", k)
       for k in ("rgb", "mask", "depth", "entropy", "orientation", "normal_tv", "normal_blur", "time_tv_points",
                 "time_tv_mode")},
    "loss.time_tv": _each("loss", "time_tv", stages=("dynamic", "refine")),
    "static.prompt": [_attr("prompt_static")],
    "static.prompt_suffix": [_attr("prompt_static")],
    "static.negative_prompt": [_kw("sd", "negative_prompt")],
    "static.iters": [_attr("trainer_static", "iters"), _attr("sched_dynamic", "clock", "offset")],
    "static.render_size": [_attr("camera_static", "render_size")],
    "static.ref_size": [_attr("camera_static", "ref_size")],
    "static.known_iters": [_attr("sched_static", "reference", "known_iters")],
    "static.ref_interval": [_attr("sched_static", "reference", "interval")],
    "static.sd_weight": [_kw("sd", "weight")],
    "static.sd_guidance_scale": [_kw("sd", "guidance_scale")],
    "static.sd_t_range": [_kw("sd", "t_range")],
    "static.view_dependent_text": [_kw("sd", "view_dependent")],
    "static.zero123_weight": [_kw("zero123_static", "weight")],
    "static.zero123_guidance_scale": [_kw("zero123_static", "guidance_scale")],
    "static.zero123_t_range": [_kw("zero123_static", "t_range")],
    "static.zero123_c_concat": [_kw("zero123_static", "c_concat_mode")],
    "static.zero123_clip_preprocess": [_kw("zero123_static", "clip_preprocess")],
    "static.cfg_mode": [_kw("sd", "cfg_mode")],
    "static.sds_grad_scale": [_attr("system", "sds_grad_scale")],
    "static.normal_warmup_iters": [_attr("sched_static", "shading", "normal_until")],
    "static.grid_mask_iters": [_attr("sched_static", "level_mask", "until")],
    "static.grid_mask_levels": [_attr("sched_static", "level_mask", "levels")],
    "static.textureless_rate": [_attr("sched_static", "shading", "textureless_rate")],
    "static.lr": [_attr("optim_static", "lr")],
    "static.grad_clip": [_attr("trainer_static", "grad_clip")],
    "dynamic.prompt": [_attr("prompt_dynamic")],
    "dynamic.prompt_suffix": [_attr("prompt_dynamic")],
    "dynamic.negative_prompt": [_kw("video", "negative_prompt")],
    "dynamic.iters": [_attr("trainer_dynamic", "iters"),
                      lambda b: b["sched_refine"].clock.offset - b["sched_dynamic"].clock.offset],
    **{f"dynamic.{k}": [_attr("clip", k)] for k in ("frames", "time_precision", "zero_rate", "dynamic_cam_rate")},
    "dynamic.render_size": _each("camera", "render_size", stages=("dynamic", "refine")),
    "dynamic.ref_size": _each("camera", "ref_size", stages=("dynamic", "refine")),
    "dynamic.ref_interval": _each("sched", "reference", "interval", stages=("dynamic", "refine")),
    "dynamic.video_weight": [_kw("video", "weight")],
    "dynamic.video_guidance_scale": [_kw("video", "guidance_scale")],
    "dynamic.video_t_range": [_kw("video", "t_range")],
    "dynamic.cfg_mode": [_kw("video", "cfg_mode")],
    "dynamic.vae_grad_frames": [_kw("video", "vae_grad_frames")],
    "dynamic.zero123_weight": [_kw("zero123_dynamic", "weight")],
    "dynamic.zero123_guidance_scale": [_kw("zero123_dynamic", "guidance_scale")],
    "dynamic.zero123_t_range": [_kw("zero123_dynamic", "t_range")],
    "dynamic.zero123_c_concat": [_kw("zero123_dynamic", "c_concat_mode")],
    "dynamic.zero123_clip_preprocess": [_kw("zero123_dynamic", "clip_preprocess")],
    "dynamic.upstream_view_text": [_kw("video", "upstream_view_text"), _kw("controlnet", "upstream_view_text")],
    "dynamic.textureless_rate": [_attr("sched_dynamic", "shading", "textureless_rate")],
    "dynamic.lr": [_attr("optim_dynamic", "lr")],
    "dynamic.grad_clip": [_attr("trainer_dynamic", "grad_clip")],
    "refine.prompt": [_attr("prompt_refine")],
    "refine.prompt_suffix": [_attr("prompt_refine")],
    "refine.negative_prompt": [_kw("controlnet", "negative_prompt")],
    "refine.iters": [_attr("trainer_refine", "iters")],
    "refine.image_size": [_kw("controlnet", "image_size")],
    "refine.frames": [_kw("controlnet", "frames")],
    "refine.guidance_scale": [_kw("controlnet", "guidance_scale")],
    "refine.cfg_mode": [_kw("controlnet", "cfg_mode")],
    "refine.t_range": [_kw("controlnet", "t_range")],
    "refine.target": [_kw("controlnet", "target")],
    "refine.weight": [_kw("controlnet", "weight")],
    "refine.controlnet_prompt": [_kw("controlnet", "controlnet_prompt")],
    "refine.textureless_rate": [_attr("sched_refine", "shading", "textureless_rate")],
    "refine.lr": [_attr("optim_refine", "lr")],
    "refine.grad_clip": [_attr("trainer_refine", "grad_clip")],
}  # fmt: skip


def _expected(path: str, cfg: Config) -> Any:
    """What the destinations of ``path`` must hold for ``cfg`` (the value, or the build layer's documented
    translation of it)."""
    from animate124.models.store import default_cache_dir

    sec, name = path.split(".")
    v = getattr(getattr(cfg, sec), name)
    s = getattr(cfg, sec)
    special = {
        "run.precision": lambda: build.precision_of(cfg, CPU),
        "models.tiny": lambda: v,
        "models.cache_dir": lambda: str(Path(v).expanduser()) if v else str(default_cache_dir()),
        "preprocess.size": lambda: v or None,
        "raymarch.metric_step": lambda: "metric" if v else "upstream",
        "raymarch.chunk": lambda: v or None,
        "static.prompt": lambda: v.strip() + s.prompt_suffix,
        "static.prompt_suffix": lambda: s.prompt.strip() + v,
        "dynamic.prompt": lambda: v.strip() + s.prompt_suffix,
        "dynamic.prompt_suffix": lambda: s.prompt.strip() + v,
        "refine.prompt": lambda: v.strip() + s.prompt_suffix,
        "refine.prompt_suffix": lambda: s.prompt.strip() + v,
        "refine.frames": lambda: build.frame_selection(v),
        "loss.time_tv": lambda: v,
    }
    if path.startswith("models.") and path not in special and path != "models.video_model":
        return v or None
    return special[path]() if path in special else v


def _check_destinations(path: str, b: dict[str, Any], cfg: Config) -> list[str]:
    want = _expected(path, cfg)
    bad = []
    for get in DESTINATIONS[path]:
        got = get(b)
        if isinstance(want, float) and isinstance(got, float):
            ok = got == pytest.approx(want, rel=1e-12)
        else:
            ok = got == want
        if not ok:
            bad.append(f"{path} -> {get.__name__}: {got!r} != {want!r}")
    return bad


def test_each_field_arrives_at_its_destination(fakes, base_dict, monkeypatch):
    """Every field the build layer translates (``BUILT_FIELDS``) has named destinations, and each holds the
    field's value, in the base config and with that field alone changed: a field passed to another
    field's place (a swap in ``stages/build.py``) fails here, even where both have the same value."""
    assert set(DESTINATIONS) | NO_DESTINATION.keys() == {p for p, *_ in BUILT_FIELDS}, sorted(
        {p for p, *_ in BUILT_FIELDS} - set(DESTINATIONS) - NO_DESTINATION.keys()
    )
    base_cfg = from_dict(base_dict)
    base = built(base_cfg, monkeypatch)
    bad = [m for path in DESTINATIONS for m in _check_destinations(path, base, base_cfg)]
    assert not bad, bad
    for path, tp, _f, meta in BUILT_FIELDS:
        if path not in DESTINATIONS:
            continue
        sec, name = path.split(".")
        value = getattr(getattr(base_cfg, sec), name)
        for alt in _alternative(path, tp, value, meta):
            try:
                cfg = from_dict(deep_merge(base_dict, {sec: {name: alt}}))
            except ConfigError:
                continue
            bad += _check_destinations(path, built(cfg, monkeypatch), cfg)
            break
    assert not bad, bad


def test_refine_priors_keep_no_encoder_activations(fakes, base_dict, monkeypatch):
    """``static.vae_keep_pixels`` reaches the static stage's SD and Zero123 only, ``dynamic.vae_keep_pixels`` the
    dynamic stage's video prior and Zero123 only: refine's priors (the same video prior and Zero123, ControlNet)
    recompute every batch, whatever they say (its memory is the tightest)."""
    cfg = from_dict(
        deep_merge(base_dict, {"static": {"vae_keep_pixels": 12345}, "dynamic": {"vae_keep_pixels": 678}})
    )
    b = built(cfg, monkeypatch)
    got = {p: b[p].kwargs["checkpoint_keep_pixels"] for p in (*_PRIORS, "video_refine", "zero123_refine")}
    assert got == {
        "sd": 12345, "zero123_static": 12345, "zero123_dynamic": 678, "video": 678, "controlnet": 0,
        "video_refine": 0, "zero123_refine": 0,
    }  # fmt: skip


#: translated fields without a single place to read back, each with the reason
NO_DESTINATION = {
    "models.offline": "the store also goes offline when HF_HUB_OFFLINE is set, as it is in every test",
}


# ------------------------------------------------------------------------------------------------ run.fused_normals
def _reference() -> Any:
    from animate124.stages.system import ReferenceData

    return ReferenceData(torch.ones(1, 1, 3, 8, 8), torch.ones(1, 1, 1, 8, 8, dtype=torch.bool), None)


def test_run_fused_normals_parses_and_is_on_in_every_preset():
    """``--set run.fused_normals=false`` turns it off like any boolean key; every preset has it on since the oracle
    check ran with it on a GPU (BENCHMARKS.md §15.9), while a bare ``KernelOptions`` keeps it off (the plain path
    the kernel tests compare against)."""
    from animate124.config.presets import PRESETS
    from animate124.scene.grid import KernelOptions

    assert KernelOptions().fused_normals is False
    for preset in PRESETS:
        assert resolve_config(preset).run.fused_normals is True, preset
        for text, value in (("true", True), ("false", False)):
            cfg = resolve_config(preset, sets=[f"run.fused_normals={text}"])
            assert cfg.run.fused_normals is value, (preset, text)
    with pytest.raises(ConfigError):
        resolve_config("tiny", sets=["run.fused_normals=sometimes"])


@pytest.mark.parametrize("on", [False, True])
def test_run_fused_normals_reaches_every_field_the_stages_build_or_load(tmp_path, on):
    """The static stage's field (``build_static_system``), the 4D field the dynamic stage makes from the saved
    static result (``dynamic_field_from_static``: artifacts.py, then ``DynamicField.from_static``), refine's
    field and frozen copy (``refine_fields``) and the output commands' fields (``load_field``) all hold
    ``KernelOptions(fused_normals=run.fused_normals)``, every other option at its default."""
    from animate124.project import Project
    from animate124.scene.grid import KernelOptions
    from animate124.stages.artifacts import load_field, save_trained
    from animate124.stages.dynamic import dynamic_field_from_static
    from animate124.stages.refine import refine_fields
    from animate124.stages.static import build_static_system

    cfg = resolve_config("tiny", None, PROMPTS, [f"run.fused_normals={str(on).lower()}"])
    system, _ = build_static_system(cfg, CPU, reference=_reference(), priors={})
    project = Project(tmp_path / "p")
    save_trained(project.artifact("static_model"), system.field, system.occupancy, kind="static",
                 field_cfg=cfg.field)  # fmt: skip
    dyn, occ, fcfg = dynamic_field_from_static(project, cfg, CPU)
    save_trained(project.artifact("dynamic_model"), dyn, occ, kind="dynamic", field_cfg=fcfg)
    trained, frozen = refine_fields(project, cfg, CPU)
    got = {
        "static": system.field.encoder.kernel_options,
        "dynamic": dyn.encoder.kernel_options,
        "refine": trained.field.encoder.kernel_options,
        "refine frozen": frozen.field.encoder.kernel_options,
        **{
            f"output of {stage}": load_field(cfg, project.artifact(f"{stage}_model"), CPU).field.encoder.kernel_options
            for stage in ("static", "dynamic")
        },
    }  # fmt: skip
    assert got == dict.fromkeys(got, KernelOptions(fused_normals=on))


def test_stages_and_output_commands_load_fields_through_load_field():
    """Nothing outside ``stages/artifacts.py`` calls ``load_trained``: the stages and output commands load through
    its ``load_field`` (the run's kernel options); one that loaded a field directly would drop ``run.fused_normals``."""
    root = Path(__file__).resolve().parents[1] / "animate124"
    callers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "artifacts.py" and "load_trained(" in p.read_text()
    )
    assert not callers, callers
    loaders = ("dynamic", "refine", "render", "export", "evaluate")
    missing = [m for m in loaders if "load_field(cfg" not in (root / "stages" / f"{m}.py").read_text()]
    assert not missing, missing


def _interp_stage_fused_normals() -> dict:
    """Under ``TRITON_INTERPRET=1`` (``helpers_triton.run_interpreted``): the tiny preset's fields on the Triton
    backend, built and loaded by the stages' own code with ``run.fused_normals`` on and off."""
    import tempfile

    from test_scene_stencil import _points, fused_vs_plain

    from animate124.project import Project
    from animate124.stages.artifacts import load_field, save_trained
    from animate124.stages.dynamic import dynamic_field_from_static
    from animate124.stages.static import build_static_system

    out: dict[str, Any] = {}
    x = _points()
    for on in (True, False):
        sets = [f"run.fused_normals={str(on).lower()}", "field.backend=triton"]
        cfg = resolve_config("tiny", None, PROMPTS, sets)
        torch.manual_seed(0)
        system, _ = build_static_system(cfg, CPU, reference=_reference(), priors={})
        field = system.field
        with torch.no_grad():
            field.encoder.embeddings.uniform_(-1, 1)
        out[f"static_ready_{on}"] = bool(field.fused_normals_ready(x))
        with tempfile.TemporaryDirectory() as tmp:
            project = Project(tmp)
            save_trained(project.artifact("static_model"), field, system.occupancy, kind="static",
                         field_cfg=cfg.field)  # fmt: skip
            loaded = load_field(cfg, project.artifact("static_model"), CPU).field
            dyn, _, _ = dynamic_field_from_static(project, cfg, CPU)
        out[f"loaded_ready_{on}"] = bool(loaded.fused_normals_ready(x))
        # a clip frame of the dynamic stage: enough samples for the slot path (6 neighbours per normal)
        n = -(-dyn.encoder.kernel_options.slot_min_points_per_time // 6)
        xd = torch.rand(n, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
        out[f"dynamic_ready_{on}"] = bool(dyn.fused_normals_ready(xd, torch.full((n, 1), 0.5)))
        if on:
            with torch.no_grad():
                out["loaded_same_normals"] = bool(torch.equal(loaded.normals(x), field.normals(x)))
            out["static"] = fused_vs_plain(field, x)
    return out


#: How much farther from float64 than the plain path the stage field's fused normals and gradients may be here.
#: This test checks the wiring (the stage's field reaches the fused kernel with its own grid and MLP); the
#: kernel's accuracy is ``test_scene_stencil``'s (at most 3x the plain path's error, on its seeded cases). Both
#: paths are fp32 evaluations of the same formula in different orders, so their errors against float64 are
#: rounding draws of the same size (over 16 seeds of this field the ratio reached 3.3 for the normals and 8.3 for
#: a gradient; b2's exact gradient is 0, so its two errors are both pure rounding and the floor of
#: ``test_scene_stencil``'s criterion, a few ulps of b1's gradient, judges it); a field that reached the kernel
#: with the wrong table, level count or weights is off by O(1) of the normals' unit length, some 10^4 times the
#: plain path's error. 100x separates the two with a wide margin on either side.
WIRING_FACTOR = 100


@needs_triton
def test_run_fused_normals_runs_the_fused_kernel_in_the_stage_fields():
    """With ``run.fused_normals`` on, the static stage's field, the same field loaded from its saved result and
    the 4D field made from that (a clip frame's samples) take the fused path, and the static field's normals and
    gradients agree with float64 as the plain path's do, up to :data:`WIRING_FACTOR`; off, none does."""
    from test_scene_stencil import FLOOR

    r = run_interpreted("test_build", "_interp_stage_fused_normals", timeout=300)
    for part in ("static", "loaded", "dynamic"):
        assert r[f"{part}_ready_True"] and not r[f"{part}_ready_False"], (part, r)
    assert r["loaded_same_normals"], r
    s = r["static"]
    assert s["fused_ready"] and not s["plain_ready"] and s["fused_calls"] == 1, s
    assert s["normal_fused"] <= WIRING_FACTOR * s["normal_plain"] + 1e-6, s
    for k in ("table", "w1", "b1", "w2", "b2"):
        floor = FLOOR * (s[f"{k}_scale"] + s["b1_norm"])
        assert s[f"{k}_fused"] <= WIRING_FACTOR * s[f"{k}_plain"] + floor, (k, s)
