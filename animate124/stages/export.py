"""The export stage: meshes of a trained stage into ``<project>/export/<stage>/``.

* a static field: ``mesh.glb`` and ``mesh.<ply|obj>``;
* a 4D field: ``frames/frame_NNN.<ply|obj>`` at ``t = k/frames`` and ``mesh.glb`` with one node per frame
  played in turn at ``export.fps``.

The density level is ``export.threshold`` or, when that is 0, the level whose silhouette matches the
rendered one (chosen once over a few views and times, the same for every frame; see
:mod:`animate124.render.mesh`). The files and the level go to the manifest under ``stages.export``.
"""

from __future__ import annotations

from typing import Any

from animate124.config.schema import Config
from animate124.engine.runner import StageResult
from animate124.errors import ConfigError
from animate124.project import Project
from animate124.stages.outputs import OutputStage, relative, run_output_stage, source_stage

__all__ = ["EXPORT_STAGE", "run_export_stage"]

EXPORT_STAGE = OutputStage("export", ("export", "raymarch"))


def run_export_stage(
    project: Project, cfg: Config, *, stage: str | None = None, show_progress: bool = True, **_: object
) -> StageResult:
    """Meshes of ``stage`` (default: the newest finished training stage); settings in ``cfg.export``."""
    import torch

    from animate124.engine.progress import rich_progress
    from animate124.engine.runtime import resolve_device
    from animate124.render.cameras import camera_from_spherical
    from animate124.render.mesh import extract_mesh, mesh_stats, save_glb, save_mesh, silhouette_threshold
    from animate124.stages.artifacts import load_trained

    src = source_stage(project, stage)
    e = cfg.export
    if e.format not in ("ply", "obj"):  # pragma: no cover - the schema's Literal already checks it
        raise ConfigError(f"export.format {e.format!r} is not ply or obj")
    device = resolve_device(cfg.run.device)

    def body(ctx: Any) -> dict[str, Any]:
        trained = load_trained(project.artifact(f"{src}_model"), device)
        field, occ = trained.field.eval(), trained.occupancy
        dynamic = trained.kind == "dynamic"
        times: list[float | None] = [k / e.frames for k in range(e.frames)] if dynamic else [None]
        out_dir = project.export_dir / src
        with torch.no_grad():
            threshold = e.threshold
            if threshold <= 0:
                n = e.silhouette_views
                az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
                polar = torch.where(torch.arange(n) % 2 == 0, 90.0, 60.0)  # level and from above
                cams = camera_from_spherical(
                    polar,
                    az,
                    cfg.render.radius,
                    cfg.render.fovy,
                    e.silhouette_size,
                    e.silhouette_size,
                    device,
                )
                sil_times = None
                if dynamic:
                    sil_times = [k / 4 for k in range(4)]
                threshold = silhouette_threshold(
                    field,
                    cams,
                    times=sil_times,
                    occupancy=occ,
                    max_steps=cfg.raymarch.max_steps,
                    min_near=cfg.raymarch.min_near,
                )
            meshes = []
            with rich_progress(f"export {src}", enabled=show_progress) as prog:
                for i, t in enumerate(times):
                    meshes.append(
                        extract_mesh(
                            field, threshold, resolution=e.resolution, t=t, occupancy=occ, keep=e.decimate
                        )
                    )
                    prog(i + 1, len(times), {})
        files: dict[str, str] = {}
        if dynamic:
            for i, m in enumerate(meshes):
                p = save_mesh(out_dir / "frames" / f"frame_{i:03d}.{e.format}", m)
                files[f"frame_{i:03d}"] = str(p)
        else:
            files["mesh"] = str(save_mesh(out_dir / f"mesh.{e.format}", meshes[0]))
        files["glb"] = str(save_glb(out_dir / "mesh.glb", meshes, fps=e.fps, name=f"animate124-{src}"))
        stats = [mesh_stats(m) for m in meshes]
        metrics = {
            "stage": src,
            "threshold": round(float(threshold), 6),
            "threshold_auto": e.threshold <= 0,
            "frames": len(meshes),
            "resolution": e.resolution,
            "faces_mean": int(sum(s["faces"] for s in stats) / len(stats)),
            "watertight": all(s["watertight"] for s in stats),
            "glb": relative(project, out_dir / "mesh.glb"),
        }
        outputs = {
            relative(project, out_dir / "mesh.glb"): {"kind": "glb", "frames": len(meshes), "stage": src}
        }
        if dynamic:
            outputs[relative(project, out_dir / "frames")] = {
                "kind": "mesh_sequence",
                "format": e.format,
                "frames": len(meshes),
                "stage": src,
            }
        else:
            outputs[relative(project, out_dir / f"mesh.{e.format}")] = {"kind": "mesh", "stage": src}
        old = project.stage_record("export").get("outputs", {})
        merged = {k: v for k, v in old.items() if (project.root / k).exists() and v.get("stage") != src}
        merged.update(outputs)
        project.update_stage("export", outputs=merged)
        return {"artifacts": {"glb": files["glb"]}, "metrics": metrics}

    return run_output_stage(project, EXPORT_STAGE, cfg, body)
