"""The render stage: videos and frames of a trained stage into ``<project>/renders/<stage>/`` (SPEC 7, fixed).

``run_render_stage(project, cfg, orbit=..., views=..., ...)`` checks the whole request first (the
stage has finished, channels, time, background; sizes and counts are checked by the config schema),
then loads the field and renders through :mod:`animate124.render.outputs`. Every file written is
recorded in the manifest under ``stages.render.outputs`` (path relative to the project -> what it
is), merged with the files of earlier renders that still exist.

A render is skipped when the same request (shots, channels, options) has already been rendered from
the same trained result with the same ``render`` and ``raymarch`` settings and its files are all still
there with the size and sha256 recorded when they were written (``stages.render.requests`` in the
manifest: request hash -> files and hashes); ``force`` renders again.
A skipped render writes nothing. Files a new render overwrites are dropped from the other requests, so
that an older request whose video was replaced renders again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time as _time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from animate124.config.schema import Config
from animate124.engine.runner import StageResult
from animate124.errors import ConfigError
from animate124.project import Project
from animate124.render.outputs import CHANNELS, OutputFile, RenderSettings, parse_background
from animate124.stages.outputs import OutputStage, relative, run_output_stage, source_stage

__all__ = [
    "RENDER_STAGE",
    "latest_trained_stage",
    "render_request_key",
    "render_settings",
    "run_render_stage",
]

RENDER_STAGE = OutputStage("render", ("render", "raymarch"))

log = logging.getLogger(__name__)


def latest_trained_stage(project: Project) -> str:
    """refine > dynamic > static: the newest finished training stage (a ProjectError if none)."""
    return source_stage(project, None)


def render_settings(
    cfg: Config,
    *,
    channels: tuple[str, ...] = ("color",),
    stills: bool = False,
    rgba: bool = False,
    gif: bool = False,
) -> RenderSettings:
    """The ``render`` and ``raymarch`` sections -> the renderer's plain settings (validates them)."""
    r, m = cfg.render, cfg.raymarch
    bad = [c for c in channels if c not in CHANNELS]
    if bad:
        raise ConfigError(f"unknown channel {bad[0]!r}", hint=f"use {', '.join(CHANNELS)}")
    return RenderSettings(
        size=r.size,
        fovy=r.fovy,
        radius=r.radius,
        polar=r.polar,
        background=parse_background(r.background),
        channels=tuple(dict.fromkeys(("color", *channels))),
        colormap=r.depth_colormap,
        fps=r.fps,
        quality=r.quality,
        gif=gif,
        stills=stills,
        rgba=rgba,
        ray_chunk=r.ray_chunk,
        max_steps=m.max_steps,
        min_near=m.min_near,
        delta_mode="metric" if m.metric_step else "upstream",
        t_thresh=m.transmittance_thresh,
        normal_eps=m.normal_eps,
        sample_chunk=r.sample_chunk or None,
        fused_march=m.fused_march,
    )


def _describe(project: Project, f: OutputFile, stage: str) -> dict[str, Any]:
    d = asdict(f)
    d.pop("path")
    extra = d.pop("extra")
    d.update({k: v for k, v in extra.items() if v is not None})
    d["stage"] = stage
    return d


def render_request_key(project: Project, cfg: Config, src: str, request: dict[str, Any]) -> str:
    """Hash of one render request: the trained result of ``src`` (the sha256 of its model file; for a record
    from before the hashes, its config hash and when it finished), the ``render`` and ``raymarch`` settings
    and the request's own options. A stage redone to the same bytes keeps its renders up to date."""
    from animate124.config.loader import config_hash

    rec = project.stage_record(src)
    model = (rec.get("files") or {}).get(f"{src}/model.safetensors", {}).get("sha256")
    blob = json.dumps(
        {
            "stage": src,
            "trained": model or [rec.get("config_hash"), rec.get("finished")],
            "settings": config_hash(cfg, RENDER_STAGE.sections),
            "request": request,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _up_to_date(project: Project, key: str) -> StageResult | None:
    """The skipped result of a request already rendered whose files all exist (read without the lock)."""
    rec = project.stage_record("render")
    done = (rec.get("requests") or {}).get(key)
    if rec.get("status") != "done" or not done or not done.get("files"):
        return None
    hashes = done.get("hashes") or {}
    for f in done["files"]:  # requests recorded before the hashes: the files' structure
        problem = project.file_problem(f, hashes.get(f))
        if problem:
            log.warning("%s %s: the render will be made again", f, problem)
            return None
    metrics = {**done.get("metrics", {}), "files": list(done["files"])}
    return StageResult("render", skipped=True, artifacts=_artifacts(project, done["files"]), metrics=metrics)


def _artifacts(project: Project, files: list[str]) -> dict[str, str]:
    """file name -> absolute path of one request's files (all in one ``renders/<stage>/`` folder)."""
    return {Path(f).name: str(project.root / f) for f in files}


def run_render_stage(
    project: Project,
    cfg: Config,
    *,
    stage: str | None = None,
    orbit: bool = False,
    views: int | None = None,
    time: float | None = None,
    channels: tuple[str, ...] = ("color",),
    stills: bool = False,
    rgba: bool = False,
    gif: bool = False,
    show_progress: bool = True,
    force: bool = False,
    **_: object,
) -> StageResult:
    """Render the trained field of ``stage`` (default: the newest finished one).

    ``orbit``: the orbit video (the default when neither ``orbit`` nor ``views`` is asked for);
    ``views``: that many fixed views over time (``cfg.render.views`` when 0); ``time``: a frozen moment
    in [0, 1]; ``channels``: any of color, depth, normal, opacity (color is always written);
    ``stills``: PNG frames as well; ``rgba``: PNGs with a transparent background; ``gif``: GIFs beside
    the MP4s. Files go to ``<project>/renders/<stage>/``. The same request again, with the same
    settings on the same trained result, is skipped (``force``: render anyway).
    """
    import torch

    from animate124.engine.progress import rich_progress
    from animate124.engine.runtime import resolve_device
    from animate124.render.outputs import orbit_shot, render_shot, views_shot
    from animate124.stages.artifacts import load_field

    # --- check the whole request before any work -------------------------------------------------
    src = source_stage(project, stage)
    if time is not None and not (0.0 <= time <= 1.0):
        raise ConfigError(
            f"--time {time} is outside [0, 1]", hint="0 is the first frame of the motion, 1 the last"
        )
    if views is not None and views < 0:
        raise ConfigError(
            f"--views {views} is negative", hint="pass the number of fixed views, e.g. --views 4"
        )
    settings = render_settings(cfg, channels=channels, stills=stills, rgba=rgba, gif=gif)
    device = resolve_device(cfg.run.device)
    want_orbit = orbit or views is None
    n_views = (views or cfg.render.views) if views is not None else 0
    request = {
        "orbit": want_orbit,
        "views": n_views,
        "time": time,
        "channels": list(settings.channels),
        "stills": stills,
        "rgba": rgba,
        "gif": gif,
    }
    key = render_request_key(project, cfg, src, request)
    if not force:
        done = _up_to_date(project, key)
        if done is not None:
            return done

    def body(ctx: Any) -> dict[str, Any]:
        trained = load_field(cfg, project.artifact(f"{src}_model"), device)
        field, occ = trained.field.eval(), trained.occupancy
        dynamic = trained.kind == "dynamic"
        out_dir = project.render_dir / src
        shots = []
        if want_orbit:
            shots.append(
                orbit_shot(
                    cfg.render.orbit_frames,
                    settings,
                    dynamic=dynamic,
                    time=time,
                    loops=cfg.render.orbit_loops,
                    device=device,
                )
            )
        if n_views:
            shots.append(
                views_shot(n_views, cfg.render.frames, settings, dynamic=dynamic, time=time, device=device)
            )
        total = sum(s.steps * s.views for s in shots)
        files: list[OutputFile] = []
        t0 = _time.perf_counter()
        done = 0
        with rich_progress(f"render {src}", enabled=show_progress) as prog, torch.no_grad():
            for shot in shots:
                base = done

                def step(k: int, _n: int, m: dict, base: int = base) -> None:
                    prog(base + k, total, m)

                video_frames = cfg.render.frames if (shot.kind == "views" and not dynamic) else None
                files += render_shot(
                    field, occ, shot, out_dir, settings, progress=step, video_frames=video_frames
                )
                done += shot.steps * shot.views
        seconds = _time.perf_counter() - t0
        rec = project.stage_record("render")
        outputs = {k: v for k, v in rec.get("outputs", {}).items() if (project.root / k).exists()}
        written = [relative(project, f.path) for f in files]
        for f, rel in zip(files, written, strict=True):
            outputs[rel] = _describe(project, f, src)
        # requests whose files this render replaced are no longer up to date
        requests = {
            k: v
            for k, v in (rec.get("requests") or {}).items()
            if k != key and not set(v.get("files", ())) & set(written)
        }
        artifacts = _artifacts(project, written)
        metrics: dict[str, Any] = {
            "stage": src,
            "frames_rendered": total,
            "seconds_per_frame": round(seconds / max(total, 1), 4),
            "size": settings.size,
            "files": written,
        }
        near_far = next((f.extra for f in files if "near" in f.extra), None)
        if near_far:
            metrics["depth_near"], metrics["depth_far"] = near_far["near"], near_far["far"]
        kept = {k: v for k, v in metrics.items() if k != "files"}
        requests[key] = {"files": written, "hashes": project.file_records(written), "metrics": kept}
        project.update_stage("render", outputs=outputs, requests=requests)
        return {"artifacts": artifacts, "metrics": metrics}

    return run_output_stage(project, RENDER_STAGE, cfg, body)
