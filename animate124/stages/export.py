"""The export stage: meshes of a trained stage into ``<project>/export/<stage>/``.

* a static field: ``mesh.glb`` and ``mesh.<ply|obj>``;
* a 4D field, ``export.animated`` (the default): ``mesh.glb``, **one** mesh whose vertices follow the
  motion (glTF morph targets, one per frame at ``t = k/frames``, played at ``export.fps``). Its topology
  and texture come from the frame nearest ``export.reference_time``; its vertices are fitted to every
  frame's surface (:mod:`animate124.render.tracking`), and the fit error of each frame goes to the
  manifest and the terminal, with a warning where it passes ``export.fit_tolerance`` (one topology
  cannot follow parts that split, merge or appear: the flipbook can);
* a 4D field, flipbook (``--flipbook``): ``frames/frame_NNN.<ply|obj>`` and ``flipbook.glb`` with one
  node per frame shown in turn.

Every glb is coloured by a baked albedo texture (``export.texture = atlas``) or vertex colours; every
export also draws the exported mesh (``turntable.png``, ``turntable.mp4``; :mod:`animate124.render.turntable`).

The density level is ``export.threshold`` or, when that is 0, the level whose silhouette matches the
rendered one (chosen once over a few views and times, the same for every frame; see
:mod:`animate124.render.mesh`). The files, the level and the fit errors go to the manifest under
``stages.export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from animate124.config.schema import Config, ExportConfig
from animate124.engine.runner import StageResult
from animate124.errors import ConfigError
from animate124.project import Project
from animate124.stages.outputs import OutputStage, relative, run_output_stage, source_stage

__all__ = ["EXPORT_STAGE", "run_export_stage"]

EXPORT_STAGE = OutputStage("export", ("export", "raymarch"))

#: Views in each row of ``turntable.png``.
TURNTABLE_VIEWS = 8

#: ``export.quantize``: the position grid of the glb is at most this fraction of a marching-cubes cell
#: (the resolution the surface is known to): its error, at most √3/2 of a step, is then under 1.4 % of a
#: cell, a tenth or less of the fit error (BENCHMARKS.md §11); coarser, up to it, where that lets every
#: frame's displacements fit a byte (:mod:`animate124.render.quantize`).
QUANT_STEP_CELLS = 1 / 64


def quantize_step(e: ExportConfig, bound: float) -> float | None:
    """The largest grid step of the glb's positions (world units), or None for float vertex data."""
    return QUANT_STEP_CELLS * 2.0 * float(bound) / e.resolution if e.quantize else None


def _density_level(field: Any, occ: Any, cfg: Config, dynamic: bool, device: Any) -> float:
    """``export.threshold``, or the level whose silhouette matches the renders' (module docstring)."""
    import torch

    from animate124.render.cameras import camera_from_spherical
    from animate124.render.mesh import silhouette_threshold

    e = cfg.export
    if e.threshold > 0:
        return float(e.threshold)
    n = e.silhouette_views
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    polar = torch.where(torch.arange(n) % 2 == 0, 90.0, 60.0)  # level and from above
    cams = camera_from_spherical(
        polar, az, cfg.render.radius, cfg.render.fovy, e.silhouette_size, e.silhouette_size, device
    )
    return silhouette_threshold(
        field,
        cams,
        times=[k / 4 for k in range(4)] if dynamic else None,
        occupancy=occ,
        max_steps=cfg.raymarch.max_steps,
        min_near=cfg.raymarch.min_near,
    )


def _turntable(
    out_dir: Path, e: ExportConfig, cfg: Config, positions: np.ndarray, faces: np.ndarray, surf: Any
) -> dict[str, Path]:
    """``turntable.png`` and ``turntable.mp4`` of the exported mesh
    (:func:`animate124.render.turntable.turntable_images`); nothing when ``export.turntable`` is 0."""
    import torch

    from animate124.render.turntable import face_albedo, turntable_images
    from animate124.render.video import save_image, save_video

    if e.turntable <= 0:
        return {}
    if surf.texture is not None:  # the atlas's faces are the mesh's faces, in the same order
        albedo = face_albedo(surf.faces, uv=surf.uv, texture=surf.texture)
    else:
        albedo = face_albedo(faces, colors=surf.colors)
    grid, frames = turntable_images(
        positions,
        faces,
        albedo,
        views=TURNTABLE_VIEWS,
        size=e.turntable,
        radius=cfg.render.radius,
        fovy=cfg.render.fovy,
    )
    n, m = len(positions), len(frames)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    return {
        "png": save_image(out_dir / "turntable.png", grid.astype(np.float32) / 255.0),
        # the motion plays at export.fps while the camera turns once
        "mp4": save_video(out_dir / "turntable.mp4", video, fps=e.fps * m / n if n > 1 else 12.0),
    }


def check_export_packages(e: ExportConfig, src: str) -> None:
    """Every package this export will use, found before any work (a missing one is a ConfigError naming all
    of them; they are dependencies of the package, so only a partial install lacks them)."""
    import importlib.util

    flipbook = src != "static" and not e.animated
    needed = {"mcubes": "PyMCubes", "trimesh": "trimesh", "pygltflib": "pygltflib", "scipy": "scipy"}
    if e.max_faces > 0 or e.decimate < 1.0:
        needed["fast_simplification"] = "fast-simplification"
    if e.texture == "atlas" and not flipbook:
        needed["xatlas"] = "xatlas"
    missing = [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        extra = " (or --set export.texture=vertex)" if missing == ["xatlas"] else ""
        raise ConfigError(
            f"export needs {', '.join(missing)}, not installed",
            hint=f"pip install {' '.join(missing)}{extra}",
        )


def run_export_stage(
    project: Project, cfg: Config, *, stage: str | None = None, show_progress: bool = True, **_: object
) -> StageResult:
    """Meshes of ``stage`` (default: the newest finished training stage); settings in ``cfg.export``."""
    import torch

    from animate124.engine.runtime import resolve_device
    from animate124.stages.artifacts import load_field

    src = source_stage(project, stage)
    e = cfg.export
    if e.format not in ("ply", "obj"):  # pragma: no cover - the schema's Literal already checks it
        raise ConfigError(f"export.format {e.format!r} is not ply or obj")
    check_export_packages(e, src)
    device = resolve_device(cfg.run.device)

    def body(ctx: Any) -> dict[str, Any]:
        trained = load_field(cfg, project.artifact(f"{src}_model"), device)
        field, occ = trained.field.eval(), trained.occupancy
        dynamic = trained.kind == "dynamic"
        out_dir = project.export_dir / src
        with torch.no_grad():
            level = _density_level(field, occ, cfg, dynamic, device)
        if dynamic and not e.animated:
            metrics, outputs = _flipbook(project, field, occ, level, e, src, out_dir, show_progress)
        else:
            metrics, outputs = _one_mesh(
                project, cfg, field, occ, level, dynamic, device, src, out_dir, show_progress
            )
        metrics = {
            "stage": src,
            "threshold": round(float(level), 6),
            "threshold_auto": e.threshold <= 0,
            "resolution": e.resolution,
            **metrics,
        }
        old = project.stage_record("export").get("outputs", {})
        kept = {k: v for k, v in old.items() if (project.root / k).exists() and k not in outputs}
        project.update_stage("export", outputs={**kept, **outputs})
        return {"artifacts": {"glb": str(project.root / metrics["glb"])}, "metrics": metrics}

    return run_output_stage(project, EXPORT_STAGE, cfg, body)


def _flipbook(
    project: Project,
    field: Any,
    occ: Any,
    level: float,
    e: ExportConfig,
    src: str,
    out_dir: Path,
    show_progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A mesh per frame: ``frames/frame_NNN.<fmt>`` and ``flipbook.glb``."""
    import torch

    from animate124.engine.progress import rich_progress
    from animate124.render.gltf import save_flipbook_glb
    from animate124.render.mesh import extract_mesh, mesh_stats, save_mesh

    times = [k / e.frames for k in range(e.frames)]
    meshes = []
    with torch.no_grad(), rich_progress(f"export {src}", enabled=show_progress) as prog:
        for i, t in enumerate(times):
            meshes.append(
                extract_mesh(
                    field,
                    level,
                    resolution=e.resolution,
                    t=t,
                    occupancy=occ,
                    keep=e.decimate,
                    max_faces=e.max_faces,
                )
            )
            prog(i + 1, len(times), {})
    frames_dir = out_dir / "frames"
    if frames_dir.is_dir():  # a shorter sequence must not leave the old sequence's tail behind
        for old in frames_dir.glob("frame_*.*"):
            if old.suffix in (".ply", ".obj"):
                old.unlink()
    for i, m in enumerate(meshes):
        save_mesh(frames_dir / f"frame_{i:03d}.{e.format}", m)
    glb = save_flipbook_glb(out_dir / "flipbook.glb", meshes, fps=e.fps, name=f"animate124-{src}")
    stats = [mesh_stats(m) for m in meshes]
    metrics = {
        "mode": "flipbook",
        "frames": len(meshes),
        "faces_mean": int(sum(s["faces"] for s in stats) / len(stats)),
        "watertight": all(s["watertight"] for s in stats),
        "glb": relative(project, glb),
        "glb_bytes": glb.stat().st_size,
    }
    outputs = {
        relative(project, glb): {"kind": "flipbook_glb", "frames": len(meshes), "stage": src},
        relative(project, frames_dir): {
            "kind": "mesh_sequence",
            "format": e.format,
            "frames": len(meshes),
            "stage": src,
        },
    }
    return metrics, outputs


def _one_mesh(
    project: Project,
    cfg: Config,
    field: Any,
    occ: Any,
    level: float,
    dynamic: bool,
    device: Any,
    src: str,
    out_dir: Path,
    show_progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``mesh.glb``: the static mesh (+ ``mesh.<fmt>``), or the animated one of a 4D field."""
    from animate124.engine.progress import rich_progress
    from animate124.render.animated import fit_animated_mesh, save_mesh_glb, surface_colour
    from animate124.render.mesh import Mesh, extract_mesh, mesh_stats, save_mesh
    from animate124.render.quantize import position_grid
    from animate124.render.tracking import FitSettings

    e = cfg.export
    metrics: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    fit = None
    if dynamic:
        with rich_progress(f"export {src}", enabled=show_progress) as prog:
            fit = fit_animated_mesh(
                field,
                level,
                [k / e.frames for k in range(e.frames)],
                resolution=e.resolution,
                occupancy=occ,
                reference_time=e.reference_time,
                keep=e.decimate,
                max_faces=e.max_faces,
                settings=FitSettings(iters=e.fit_iters),
                quantize_step=quantize_step(e, field.bound),
                device=device,
                progress=lambda phase, d, n: prog(d + (n if phase == "fit" else 0), 2 * n, {}),
            )
        positions, faces, ref, times, grid = fit.positions, fit.faces, fit.ref, fit.times, fit.grid
        t_ref: float | None = times[ref]
    else:
        m = extract_mesh(
            field, level, resolution=e.resolution, occupancy=occ, keep=e.decimate, max_faces=e.max_faces
        )
        positions, faces, ref, times, t_ref = m.vertices[None], m.faces, 0, None, None
        step = quantize_step(e, field.bound)
        grid = None if step is None else position_grid(positions, 0, step)
        if grid is not None:
            positions = grid.snap(positions)
        mesh_file = save_mesh(out_dir / f"mesh.{e.format}", m)
        outputs[relative(project, mesh_file)] = {"kind": "mesh", "stage": src}
    surf = surface_colour(field, positions[ref], faces, t=t_ref, mode=e.texture, texture_size=e.texture_size)
    glb = save_mesh_glb(
        out_dir / "mesh.glb",
        positions,
        faces,
        surf,
        base=ref,
        times=times,
        fps=e.fps,
        interpolation=e.interpolation.upper(),
        name=f"animate124-{src}",
        grid=grid,
    )
    n = len(positions)
    metrics.update(
        {
            "mode": "animated" if dynamic else "single",
            "frames": n,
            "vertices": int(positions.shape[1]),
            "faces": int(len(faces)),
            "faces_mean": int(len(faces)),
            "watertight": mesh_stats(Mesh(positions[ref], faces))["watertight"],
            "texture": e.texture,
            "quantized": grid is not None,
            "glb": relative(project, glb),
            "glb_bytes": glb.stat().st_size,
        }
    )
    if e.texture == "atlas":
        metrics["texture_size"] = e.texture_size
    if grid is not None:
        metrics["position_step"] = grid.step
    outputs[relative(project, glb)] = {
        "kind": "animated_glb" if dynamic else "glb",
        "frames": n,
        "texture": e.texture,
        "stage": src,
    }
    if fit is not None:
        over = fit.frames_over(e.fit_tolerance)
        metrics.update(
            {
                "reference_time": t_ref,
                "object_size": round(fit.size, 6),
                "fit_error_mean": [round(er["mean"], 6) for er in fit.errors],
                "fit_error_p95": [round(er["p95"], 6) for er in fit.errors],
                "fit_error_max": [round(er["max"], 6) for er in fit.errors],
                "fit_tolerance": e.fit_tolerance,
                "fit_ok": not over,
                "fit_frames_over": over,
            }
        )
    pics = _turntable(out_dir, e, cfg, positions, faces, surf)
    for key, kind in (("png", "turntable"), ("mp4", "turntable_video")):
        if key in pics:
            outputs[relative(project, pics[key])] = {"kind": kind, "frames": n, "stage": src}
            metrics[f"turntable_{key}"] = relative(project, pics[key])
    return metrics, outputs
