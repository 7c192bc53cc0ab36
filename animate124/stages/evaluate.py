"""The evaluate stage: CLIP and reference-view metrics of a trained stage -> ``<project>/metrics.json``.

Renders (white background, colour = albedo as in SPEC 7) of the trained field:

* the reference view (θ = 90°, φ = 0°, the training camera's radius and fov) at ``t = k/F``, k < F;
* ``V`` views at azimuths ``360·v/V`` (the reference view is v = 0) at the same times.

Metrics (formulas in :mod:`animate124.render.metrics`):

* ``clip_i``: CLIP image similarity of the reference view's frames to the input image (white-composited
  ``rgba.png``), averaged over time — the paper's CLIP-I;
* ``clip_t``: CLIP similarity of every view's frames to the motion prompt (the dynamic stage's prompt;
  the static prompt for a static-only project) — CLIP-T;
* ``temporal_consistency``: CLIP similarity of consecutive frames, averaged over views (1.0 for a static
  field, which does not move);
* ``psnr_masked`` / ``ssim_masked``: the reference view at t = 0 against the input inside its mask
  (alpha > 0.5); ``psnr`` / ``ssim`` over the whole image.

The CLIP model is the ``clip`` role (``models.clip`` / ``--clip-model`` overrides it); its name is in the
output. Results: ``metrics.json`` and the manifest (``stages.evaluate.metrics``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from animate124.config.schema import Config
from animate124.engine.runner import StageResult
from animate124.project import Project, atomic_write_json
from animate124.stages.outputs import OutputStage, run_output_stage, source_stage

__all__ = ["EVALUATE_STAGE", "METRIC_NAMES", "run_evaluate_stage", "clip_model_name", "evaluation_prompt"]

EVALUATE_STAGE = OutputStage("evaluate", ("evaluate", "raymarch", "camera", "models"))

#: metric key -> (label, what it means) for tables and the report.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "clip_i": ("CLIP-I", "reference view over time vs the input image (higher is better)"),
    "clip_t": ("CLIP-T", "all views over time vs the motion prompt (higher is better)"),
    "temporal_consistency": ("temporal", "CLIP similarity of consecutive frames (1 = static)"),
    "psnr_masked": ("PSNR (mask)", "reference view at t=0 vs the input, inside the mask, dB"),
    "ssim_masked": ("SSIM (mask)", "reference view at t=0 vs the input, inside the mask"),
    "psnr": ("PSNR", "reference view at t=0 vs the input, whole image, dB"),
    "ssim": ("SSIM", "reference view at t=0 vs the input, whole image"),
}


def clip_model_name(cfg: Config, store: Any) -> str:
    """The CLIP model's name for the output: its Hub id or local folder (``tiny`` marked)."""
    src = store.source("clip")
    name = str(src.local_dir) if src.local_dir and cfg.models.clip else src.spec.repo_id
    return f"{name} (tiny random weights)" if cfg.models.tiny else name


def evaluation_prompt(cfg: Config) -> str:
    """The motion prompt (dynamic stage), else the static prompt; an error if both are empty."""
    from animate124.errors import ConfigError

    prompt = cfg.dynamic.prompt.strip() or cfg.static.prompt.strip()
    if not prompt:
        raise ConfigError(
            "no prompt to compare the renders with (dynamic.prompt and static.prompt are empty)",
            hint='pass --prompt "a panda is dancing"',
        )
    return prompt


def run_evaluate_stage(
    project: Project,
    cfg: Config,
    *,
    stage: str | None = None,
    prompt: str | None = None,
    show_progress: bool = True,
    **_: object,
) -> StageResult:
    """Compute the metrics of ``stage`` (default: the newest finished one); see the module docstring."""
    import torch

    from animate124.config.validation import check_text
    from animate124.engine.progress import rich_progress
    from animate124.engine.runtime import model_store, resolve_device
    from animate124.models.loaders import load_clip
    from animate124.preprocess.pipeline import load_reference
    from animate124.render import metrics as M
    from animate124.render.cameras import camera_from_spherical, reference_camera
    from animate124.render.outputs import RenderSettings, render_frame
    from animate124.stages.artifacts import load_field

    src = source_stage(project, stage)
    text = check_text("--prompt", prompt).strip() if prompt and prompt.strip() else evaluation_prompt(cfg)
    if not project.rgba.is_file():
        from animate124.errors import ProjectError

        raise ProjectError(f"{project.rgba} is missing", hint="run `animate124 preprocess` first")
    device = resolve_device(cfg.run.device)
    ev = cfg.evaluate
    store = model_store(cfg)
    clip_name = clip_model_name(cfg, store)

    def body(ctx: Any) -> dict[str, Any]:
        trained = load_field(cfg, project.artifact(f"{src}_model"), device)
        field, occ = trained.field.eval(), trained.occupancy
        dynamic = trained.kind == "dynamic"
        m = cfg.raymarch
        settings = RenderSettings(
            size=ev.size,
            max_steps=m.max_steps,
            min_near=m.min_near,
            delta_mode="metric" if m.metric_step else "upstream",
            t_thresh=m.transmittance_thresh,
            ray_chunk=cfg.render.ray_chunk,
            sample_chunk=cfg.render.sample_chunk or None,
            fused_march=m.fused_march,
        )
        white = torch.ones(3)[:, None, None]

        def shot(cam, t):
            f = render_frame(field, occ, cam, t, settings, normals=False)
            return (f.color + (1 - f.opacity[None]) * white).clamp(0, 1)

        times = [k / ev.frames for k in range(ev.frames)] if dynamic else [None]
        az = torch.arange(ev.views, dtype=torch.float32) * (360.0 / ev.views)
        cams = camera_from_spherical(90.0, az, cfg.camera.radius, cfg.camera.fovy, ev.size, ev.size, device)
        ref_cam = reference_camera(ev.ref_size, ev.ref_size, cfg.camera.radius, cfg.camera.fovy, device)
        total = ev.views * len(times) + 1
        frames = torch.zeros(ev.views, len(times), 3, ev.size, ev.size)
        with torch.no_grad(), rich_progress(f"evaluate {src}", enabled=show_progress) as prog:
            done = 0
            for v in range(ev.views):
                for k, t in enumerate(times):
                    frames[v, k] = shot(cams[v], t)
                    done += 1
                    prog(done, total, {})
            ref_render = shot(ref_cam, 0.0 if dynamic else None)
            prog(total, total, {})
        if not dynamic:  # a static field looks the same at every time
            frames = frames.expand(ev.views, ev.frames, 3, ev.size, ev.size)
        ref = load_reference(
            (project.rgba, project.depth if project.depth.is_file() else None), size=ev.ref_size
        )
        ref_rgb, ref_mask = ref["rgb"], ref["mask"]
        big_ref = load_reference((project.rgba, None), size=max(ev.size, 224))["rgb"]

        model, tokenizer = load_clip(store, device)
        v, t = frames.shape[:2]
        emb = M.clip_image_embeddings(model, frames.reshape(v * t, 3, ev.size, ev.size)).reshape(v, t, -1)
        ref_emb = M.clip_image_embeddings(model, big_ref[None])
        txt = M.clip_text_embeddings(model, tokenizer, [text])
        del model
        values = {
            "clip_i": M.clip_similarity(emb[0], ref_emb),
            "clip_t": M.clip_similarity(emb.reshape(v * t, -1), txt),
            "temporal_consistency": M.temporal_consistency(emb),
            "psnr_masked": M.psnr(ref_render, ref_rgb, ref_mask),
            "ssim_masked": M.ssim(ref_render, ref_rgb, ref_mask),
            "psnr": M.psnr(ref_render, ref_rgb),
            "ssim": M.ssim(ref_render, ref_rgb),
        }
        result = {
            "stage": src,
            "clip_model": clip_name,
            "prompt": text,
            "views": ev.views,
            "frames": ev.frames if dynamic else 1,
            "size": ev.size,
            "ref_size": ev.ref_size,
            **{k: round(float(x), 6) for k, x in values.items()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(project.artifact("metrics"), result)
        return {"artifacts": {"metrics": str(project.artifact("metrics"))}, "metrics": result}

    return run_output_stage(project, EVALUATE_STAGE, cfg, body)
