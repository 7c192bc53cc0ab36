"""Every field of the ``paper`` preset against SPEC.md (section 12's table and the sections it summarises).

``PAPER`` lists every config field with its paper value and where that value comes from:

* ``SPEC …``: the effective upstream setting (the scripts' flags over upstream's defaults);
* ``fix SPEC 11.n``: upstream bug fixed by default, the field's other value brings upstream back;
* ``impl``: no SPEC value (paths, devices, logging, memory and speed knobs that give the same result, the
  output commands' own choices); pinned here so that a change is deliberate.

A field missing from the table (a new field) fails the test, so each new field gets classified.
"""

from __future__ import annotations

import dataclasses

from animate124.config import Config, resolve_config, to_dict

PAPER: dict[str, tuple[object, str]] = {
    # run
    "run.seed": (3407, "SPEC 3.9: seed 3407"),
    "run.device": ("auto", "impl"),
    "run.devices": ("", "impl (one device; several give the same results)"),
    "run.precision": ("auto", "SPEC 3.9/12: -O = fp16 autocast + GradScaler (auto = fp16 on CUDA)"),
    "run.checkpoint_every": (500, "impl (upstream: every 10 epochs = 1000 steps, SPEC 3.9)"),
    "run.log_every": (10, "impl"),
    "run.grad_stats_every": (100, "impl (gradient-balance record; same training)"),
    "run.profile": (False, "impl"),
    "run.trace_steps": (0, "impl"),
    "run.trace_parts": ("all", "impl"),
    "run.preview_every": (250, "impl"),
    "run.vae_checkpoint": (True, "impl (same gradients)"),
    "run.vae_checkpoint_pixels": (4 * 256 * 256, "impl (same gradients)"),
    "run.vae_attention": ("blocked", "impl (same function)"),
    "run.vae_fused_norm": (True, "impl (same function)"),
    "run.unet_fused_norm": (
        True,
        "impl (same up to summation order; on since measured on an H100, BENCHMARKS §10)",
    ),
    "run.park_encoders": (True, "impl (same embeddings)"),
    "run.offload_priors": ("", "impl (same outputs)"),
    "run.cuda_graphs": (True, "impl (same outputs)"),
    "run.native_fp16": (
        True,
        "impl (same function up to fp16 rounding; on since measured on an H100, BENCHMARKS §10)",
    ),
    "run.fused_normals": (
        True,
        "impl (same function up to fp32 rounding; on since the oracle check, BENCHMARKS §15.9)",
    ),
    "run.compile_priors": (
        "",
        "impl (same up to rounding; off until measured with the defaults of 2026-12-07)",
    ),
    "run.compile_mode": ("default", "impl (used only with compile_priors)"),
    "run.channels_last": ("", "impl (off: not bit-identical)"),
    "run.fused_adamw": (False, "impl (off: not bit-identical)"),
    "run.prior_precision": ("fp16", "SPEC 3.9/12: fp16 priors (-O); fp8 is an opt-in, lower precision"),
    "run.tensorboard": (False, "impl (logging only)"),
    "run.deterministic": ("auto", "impl (fixed summation order; on on the CPU, off on a GPU)"),
    # models
    "models.tiny": (False, "impl"),
    "models.cache_dir": ("", "impl"),
    "models.offline": (True, "impl"),
    "models.video_model": (
        "modelscope",
        "SPEC 5: --hf_key text-to-video-ms-1.7b; fix SPEC 11.8 (no substring)",
    ),
    "models.sd": ("", "impl (SPEC 10: SD 1.5 by default)"),
    "models.zero123": ("", "impl (SPEC 3.8: Zero123-XL by default)"),
    "models.video": ("", "impl"),
    "models.controlnet": ("", "impl (SPEC 6: ControlNet v1.1 tile by default)"),
    "models.depth": ("", "impl (SPEC 1: DPT-BEiT-L-512 by default)"),
    "models.matting": ("", "impl"),
    "models.segment": ("", "impl"),
    "models.clip": ("", "impl"),
    # preprocess (SPEC 1)
    "preprocess.framing": ("pad", "SPEC 1: pad to a square, no recentring"),
    "preprocess.size": (0, "SPEC 1: output = the input's long side"),
    "preprocess.border_ratio": (0.2, "impl (only with framing=recenter; [ts] default 0.2)"),
    "preprocess.segment_query": ("the main object", "impl"),
    "preprocess.min_foreground_fraction": (0.001, "impl"),
    "preprocess.min_side": (64, "impl"),
    # invert (SPEC 2)
    "invert.placeholder": ("<a124>", "impl (SPEC 2: user-chosen, e.g. _panda_)"),
    "invert.initializer": ("object", "impl (SPEC 2: user-chosen word)"),
    "invert.steps": (3000, "SPEC 2: max_train_steps 3000"),
    "invert.lr": (1e-4, "SPEC 2: lr 1e-4, constant"),
    "invert.batch_size": (16, "SPEC 2: batch 16"),
    "invert.resolution": (512, "SPEC 2: resolution 512"),
    "invert.augment": (True, "SPEC 2: --use_augmentations"),
    "invert.upstream_aug_range_bug": (False, "fix SPEC 11.5"),
    "invert.checkpoint_every": (500, "SPEC 2: every 500 steps"),
    # field (SPEC 3.1)
    "field.grid_type": ("tiled", "SPEC 3.1: --grid_type tiledgrid"),
    "field.num_levels": (16, "SPEC 3.1: 16 levels"),
    "field.level_dim": (2, "SPEC 3.1: 2 features per level"),
    "field.base_resolution": (16, "SPEC 3.1: base resolution 16"),
    "field.desired_resolution": (2048, "SPEC 3.1: finest 2048"),
    "field.log2_table_size": (16, "SPEC 3.1: log2_hashmap_size 16"),
    "field.hidden_dim": (64, "SPEC 3.1: hidden_dim 64"),
    "field.num_layers": (2, "SPEC 3.1: num_layers 2"),
    "field.blob_density": (10.0, "SPEC 3.1: blob_density 10"),
    "field.blob_radius": (0.2, "SPEC 3.1: blob_radius 0.2"),
    "field.time_grid_size": (64, "SPEC 5/12: --time_grid_size 64"),
    "field.backend": ("auto", "impl (same function)"),
    # raymarch (SPEC 3.2)
    "raymarch.max_steps": (1024, "SPEC 3.2: at most 1024 samples, dt = 2√3/1024"),
    "raymarch.min_near": (0.2, "SPEC 3.2: min-near 0.2"),
    "raymarch.transmittance_thresh": (1e-4, "SPEC 3.2: stop once T < 1e-4"),
    "raymarch.occupancy_resolution": (128, "SPEC 3.2: 128³ grid"),
    "raymarch.time_slots": (16, "SPEC 3.2/12: --time_size 16 slots"),
    "raymarch.density_thresh": (10.0, "SPEC 3.2: density_thresh 10"),
    "raymarch.occupancy_decay": (0.95, "SPEC 3.2: max(0.95·grid, new)"),
    "raymarch.update_interval": (16, "SPEC 3.2: every 16 steps"),
    "raymarch.normal_eps": (0.01, "SPEC 3.1: finite differences with ε = 0.01"),
    "raymarch.metric_step": (True, "deviation (README): metric δ; false = SPEC 3.2's dt"),
    "raymarch.upstream_times_bug": (False, "fix SPEC 11.2"),
    "raymarch.chunk": (0, "impl (same function)"),
    "raymarch.checkpoint_normals": (True, "impl (same gradients)"),
    "raymarch.checkpoint_field": (0, "impl (same gradients)"),
    "raymarch.live_normals": (True, "impl (same images and gradients)"),
    "raymarch.fused_march": (True, "impl (same samples up to rounding at cell faces; BENCHMARKS §15.10)"),
    # camera (SPEC 3.3, 3.4)
    "camera.radius": (1.8, "SPEC 3.3: radius 1.8"),
    "camera.fovy": (40.0, "SPEC 3.3: fovy 40"),
    "camera.uniform_sphere_rate": (0.5, "SPEC 3.3: branch A with p = 0.5"),
    "camera.polar_range": ([45.0, 135.0], "SPEC 3.3: theta_range [45, 135]"),
    "camera.azimuth_range": ([-180.0, 180.0], "SPEC 3.3: phi_range [-180, 180)"),
    "camera.upstream_sphere_sampling": (False, "fix SPEC 11.12 (hemisphere branch area-uniform)"),
    "camera.reference_noise": (1e-3, "SPEC 3.4: N(0,1)·1e-3 ray noise"),
    "camera.max_dpolar": (45.0, "SPEC 3.3: Δθ ~ U(-45, 45)"),
    "camera.max_dazimuth": (90.0, "SPEC 3.3: Δφ ~ U(-90, 90)"),
    "camera.clamp_polar": (True, "fix SPEC 11.12 (no pole crossing)"),
    # shading (SPEC 3.1, 4, 5.2)
    "shading.ambient_range": ([0.1, 1.0], "SPEC 4/5.2/12: k ~ U[0.1, 1]"),
    "shading.light_noise": (1.0, "SPEC 3.1: normalize(origin + N(0, I))"),
    "shading.random_background": (True, "SPEC 3.1: one random colour per step"),
    # optim (SPEC 3.9)
    "optim.betas": ([0.9, 0.99], "SPEC 3.9: Adam β = (0.9, 0.99)"),
    "optim.eps": (1e-15, "SPEC 3.9/12: eps 1e-15"),
    "optim.encoder_lr_scale": (10.0, "SPEC 3.9/12: grids at 1e-3·10"),
    "optim.mlp_lr_scale": (1.0, "SPEC 3.9/12: MLP at 1e-3"),
    # loss (SPEC 3.5, 3.6)
    "loss.rgb": (5.0, "SPEC 3.5/12: lambda_rgb 5"),
    "loss.mask": (0.5, "SPEC 3.5/12: lambda_mask 0.5"),
    "loss.depth": (0.01, "SPEC 3.5/12: lambda_depth 0.01"),
    "loss.entropy": (1e-3, "SPEC 3.6/12: 1e-3 with the ramp"),
    "loss.orientation": (1e-2, "SPEC 3.6/12: 1e-2"),
    "loss.normal_tv": (0.5, "SPEC 3.6/12: 0.5"),
    "loss.normal_blur": (0.5, "SPEC 3.6/12: 0.5"),
    "loss.time_tv": (0.1, "SPEC 3.6/12: lambda_time_tv 0.1"),
    "loss.time_tv_points": (100_000, "SPEC 3.6: 100k points per step"),
    "loss.time_tv_mode": ("points", "SPEC 3.6: TV on random points"),
    # static (SPEC 4)
    "static.prompt": ("", "impl (given per run)"),
    "static.prompt_suffix": (", 8k, good quality", "SPEC 0: static script's suffix"),
    "static.negative_prompt": ("", "SPEC 0: empty negative prompt"),
    "static.iters": (5000, "SPEC 4/12: 5000 steps"),
    "static.vae_keep_pixels": (
        512 * 512,
        "impl (same gradients; the recompute freed nothing at the peak there)",
    ),
    "static.render_size": (128, "SPEC 4/12: 128² SDS renders"),
    "static.ref_size": (192, "SPEC 3.4/12: 192² reference"),
    "static.known_iters": (100, "SPEC 3.4/12: step < 100"),
    "static.ref_interval": (4, "SPEC 3.4/12: step % 4 == 0"),
    "static.sd_weight": (1.0, "SPEC 4/12: SD λ 1"),
    "static.sd_guidance_scale": (100.0, "SPEC 4/12: scale 100 (+1)"),
    "static.sd_t_range": ([0.2, 0.6], "SPEC 4/12: t ∈ [0.2, 0.6]"),
    "static.view_dependent_text": (True, "SPEC 3.7-7: the static stage always uses view-dependent text"),
    "static.zero123_weight": (40.0, "SPEC 4/12: 40·angle/180"),
    "static.zero123_guidance_scale": (5.0, "SPEC 4/12: scale 5"),
    "static.zero123_t_range": ([0.2, 0.6], "SPEC 4/12: t ∈ [0.2, 0.6]"),
    "static.zero123_c_concat": ("mode", "fix SPEC 11.14 (upstream: sample)"),
    "static.zero123_clip_preprocess": ("torch", "deviation (README): upstream: the PIL processor"),
    "static.cfg_mode": ("upstream", "SPEC 11.3/12: the +1 CFG kept"),
    "static.sds_grad_scale": ("upstream", "SPEC 11.1/12: legacy injection, SDS at λ/S (decision 2026-12-06)"),
    "static.normal_warmup_iters": (1000, "SPEC 4/12: normal shading for step < 1000"),
    "static.grid_mask_iters": (3000, "SPEC 3.1/4/12: top 8 levels off while step ≤ 3000"),
    "static.grid_mask_levels": (8, "SPEC 3.1/4/12: 8 levels"),
    "static.textureless_rate": (0.2, "SPEC 4/12: 20% textureless"),
    "static.lr": (1e-3, "SPEC 3.9/12: lr 1e-3"),
    "static.grad_clip": (0.0, "SPEC 3.9/12: none in the static stage"),
    # dynamic (SPEC 5)
    "dynamic.prompt": ("", "impl (given per run)"),
    "dynamic.prompt_suffix": (", high-resolution, 8k, good quality", "SPEC 0: dynamic script's suffix"),
    "dynamic.negative_prompt": ("", "SPEC 0: empty negative prompt"),
    "dynamic.iters": (10000, "SPEC 5/12: 10000 new steps"),
    "dynamic.frames": (16, "SPEC 5/12: 16 frames"),
    "dynamic.render_size": (128, "SPEC 5/12: 128² per frame"),
    "dynamic.ref_size": (192, "SPEC 5/12: 192² at t = 0"),
    "dynamic.ref_interval": (4, "SPEC 3.4/12: step % 4 == 0"),
    "dynamic.time_precision": (256, "SPEC 5.1/12: precision 256"),
    "dynamic.zero_rate": (0.2, "SPEC 5.1/12: zero rate 0.2"),
    "dynamic.dynamic_cam_rate": (0.9, "SPEC 3.3/12: dyn-cam rate 0.9"),
    "dynamic.video_weight": (1.0, "SPEC 5.2/12: λ 1"),
    "dynamic.video_guidance_scale": (100.0, "SPEC 5.2/12: scale 100 (+1)"),
    "dynamic.video_t_range": ([0.02, 0.98], "SPEC 5/12: t ∈ [0.02, 0.98]"),
    "dynamic.cfg_mode": ("upstream", "SPEC 11.3/12: the +1 CFG kept"),
    "dynamic.vae_grad_frames": (0, "SPEC 5.2: every frame VAE-encoded with gradient"),
    "dynamic.vae_keep_pixels": (
        0,
        "impl (same gradients; opt-in until measured on a GPU, BENCHMARKS §15.17)",
    ),
    "dynamic.zero123_weight": (40.0, "SPEC 5.2/12: λ 40·angle/180"),
    "dynamic.zero123_guidance_scale": (5.0, "SPEC 5.2: scale 5"),
    "dynamic.zero123_t_range": ([0.2, 0.6], "SPEC 5: --zero123_t_range 0.2 0.6"),
    "dynamic.zero123_c_concat": ("mode", "fix SPEC 11.14 (upstream: sample)"),
    "dynamic.zero123_clip_preprocess": ("torch", "deviation (README): upstream: the PIL processor"),
    "dynamic.upstream_view_text": (False, "fix SPEC 11.6"),
    "dynamic.textureless_rate": (0.2, "SPEC 5.2/12: 20% textureless"),
    "dynamic.lr": (1e-3, "SPEC 5.2/12: lr 1e-3"),
    "dynamic.grad_clip": (1.0, "SPEC 3.9/12: value 1.0"),
    # refine (SPEC 6)
    "refine.prompt": ("", "impl (given per run)"),
    "refine.prompt_suffix": (", high-resolution, 8k, good quality", "SPEC 0: CN script's suffix"),
    "refine.negative_prompt": ("", "SPEC 0: empty negative prompt"),
    "refine.iters": (5000, "SPEC 6/12: 5000 new steps"),
    "refine.image_size": (1024, "SPEC 6/12: --cn_size 1024"),
    "refine.frames": ("even:2", "SPEC 6/12: --cn_frames 2, frames {0, 8}"),
    "refine.guidance_scale": (7.5, "SPEC 6/12: scale 7.5 (+1)"),
    "refine.cfg_mode": ("upstream", "SPEC 11.3/12: the +1 CFG kept"),
    "refine.t_range": ([0.2, 0.8], "SPEC 6/12: cn_t_range [0.2, 0.8]"),
    "refine.target": ("x0", "SPEC 6/12: --grad_dyn x̂₀ target"),
    "refine.weight": (1.0, "SPEC 6: lambda_guidance CN 1.0 (ignored by the x0 target)"),
    "refine.controlnet_prompt": ("best quality, high resolution", "SPEC 6: cn_cn_text"),
    "refine.frozen_frames": ("read", "impl (the same condition images)"),
    "refine.textureless_rate": (0.0, "SPEC 6/12: --textureless_rate 0"),
    "refine.lr": (1e-3, "SPEC 6/12: as stage 3"),
    "refine.grad_clip": (1.0, "SPEC 6/12: value 1.0"),
    # render (SPEC 7)
    "render.size": (400, "SPEC 7: 400×400"),
    "render.views": (10, "SPEC 7: dataset_size_test 10"),
    "render.frames": (64, "SPEC 7: num_test_frames 64, t = k/64"),
    "render.orbit_frames": (120, "impl"),
    "render.orbit_loops": (1, "impl"),
    "render.fps": (25, "SPEC 7: 25 fps"),
    "render.polar": (90.0, "SPEC 7: polar 90"),
    "render.radius": (1.8, "SPEC 7: radius 1.8"),
    "render.fovy": (40.0, "SPEC 7: fovy 40"),
    "render.background": ("white", "SPEC 7: white background"),
    "render.depth_colormap": (
        "turbo",
        "deviation (README): fixed near/far colour map, not min-max stretched",
    ),
    "render.ray_chunk": (32768, "impl (same images)"),
    "render.sample_chunk": (131072, "impl (same images)"),
    "render.quality": (8, "SPEC 7: imageio quality 8"),
    # export, evaluate: this implementation's own commands (no SPEC values)
    "export.resolution": (256, "impl"),
    "export.threshold": (0.0, "impl"),
    "export.frames": (16, "impl"),
    "export.fps": (8, "impl"),
    "export.decimate": (1.0, "impl"),
    "export.format": ("ply", "impl"),
    "export.max_faces": (20000, "impl"),
    "export.animated": (True, "impl"),
    "export.texture": ("atlas", "impl"),
    "export.texture_size": (1024, "impl"),
    "export.reference_time": (0.0, "impl"),
    "export.fit_iters": (100, "impl"),
    "export.fit_tolerance": (0.05, "impl"),
    "export.quantize": (True, "impl"),
    "export.interpolation": ("linear", "impl"),
    "export.turntable": (192, "impl"),
    "export.silhouette_views": (8, "impl"),
    "export.silhouette_size": (64, "impl"),
    "evaluate.frames": (16, "impl"),
    "evaluate.views": (4, "impl"),
    "evaluate.size": (224, "impl"),
    "evaluate.ref_size": (256, "impl"),
}


def _flat(cfg: Config) -> dict[str, object]:
    d = to_dict(cfg)
    return {f"{sec}.{k}": v for sec, fields in d.items() for k, v in fields.items()}


def test_every_field_of_the_paper_preset_is_classified():
    cfg = Config()
    names = {
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(cfg)
        for f in dataclasses.fields(getattr(cfg, s.name))
    }
    assert names == set(PAPER), (
        f"unclassified: {sorted(names - set(PAPER))}; no longer fields: {sorted(set(PAPER) - names)}"
    )


def test_paper_preset_values():
    paper = _flat(resolve_config("paper"))
    wrong = {
        k: (paper[k], v) for k, (v, _) in PAPER.items() if paper[k] != v or type(paper[k]) is not type(v)
    }
    assert not wrong, f"paper value != SPEC (got, want): {wrong}"
    assert resolve_config("paper") == Config()  # the paper preset is the schema defaults
    spec = [k for k, (_, src) in PAPER.items() if not src.startswith("impl")]
    assert len(spec) >= 120  # the SPEC-given values are the bulk of the table
