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
    "run.cuda_graphs": "wraps only CUDA priors; test_cuda_graphs checks the wiring (CPU) and the replay (GPU)",
    "run.park_encoders": "moves modules of the (recorder) priors; test_park_encoders checks wiring and outputs",
    "run.offload_priors": "wraps the networks of the (recorder) priors; test_offload checks wiring and outputs",
    "run.compile_priors": "compiles the networks of the (recorder) priors; test_guidance_compiled checks it",
    "run.vae_attention": "sets the attention processor of the priors' VAEs; test_guidance_attention checks it",
    "run.vae_fused_norm": "replaces the priors' VAE encoder norms; test_guidance_groupnorm checks wiring and outputs",
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
    fp["system"] = repr((system.generator.initial_seed(), system.timers.enabled, system.legacy_sds_scaling))
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
        ),
        Zero123Guidance: (
            "guidance_scale",
            "cfg_mode",
            "t_range",
            "weight",
            "checkpoint_encoder",
            "checkpoint_pixels",
        ),  # fmt: skip
        VideoGuidance: (
            "guidance_scale",
            "cfg_mode",
            "t_range",
            "weight",
            "vae_grad_frames",
            "checkpoint_encoder",
            "checkpoint_pixels",
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
