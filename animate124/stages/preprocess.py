"""The preprocess stage (SPEC section 1): project creation, background removal, framing, depth."""

from __future__ import annotations

import shutil
from pathlib import Path

from animate124.config.schema import Config
from animate124.engine.runner import StageContext, StageResult, run_stage
from animate124.engine.runtime import model_store, resolve_device, resolve_dtype
from animate124.errors import InputError
from animate124.fileio import atomic_path, file_sha256
from animate124.project import Project
from animate124.stages.spec import get_stage


def source_image(project: Project) -> Path:
    """The copy of the input image kept in the project."""
    files = (
        sorted(p for p in project.input_dir.glob("source.*") if p.is_file())
        if project.input_dir.exists()
        else []
    )
    if not files:
        raise InputError(
            f"{project.root} has no input image",
            hint="run `animate124 preprocess IMAGE -p PROJECT` first",
        )
    return files[0]


def run_preprocess(project: Project, cfg: Config, image: Path, *, force: bool = False) -> StageResult:
    """Validate ``image``, create the project, and write rgba/depth/preview into ``<project>/preprocess``."""
    from animate124.preprocess.image_io import load_image

    image = Path(image)
    load_image(image, min_side=cfg.preprocess.min_side)  # validates before anything is created
    project.create(source_image=image.resolve())
    sha = file_sha256(image)

    def body(ctx: StageContext) -> dict:
        from animate124.preprocess.pipeline import preprocess_image

        for old in project.input_dir.glob("source.*") if project.input_dir.exists() else []:
            old.unlink()
        with atomic_path(project.input_dir / f"source{image.suffix.lower()}") as tmp:
            shutil.copyfile(image, tmp)
        device = resolve_device(cfg.run.device)
        res = preprocess_image(
            image,
            project.preprocess_dir,
            store=model_store(cfg),
            device=device,
            dtype=resolve_dtype(cfg.run.precision, device),
            framing=cfg.preprocess.framing,
            size=cfg.preprocess.size or None,
            border_ratio=cfg.preprocess.border_ratio,
            segment_query=cfg.preprocess.segment_query,
            min_foreground_fraction=cfg.preprocess.min_foreground_fraction,
            min_side=cfg.preprocess.min_side,
        )
        return {
            "artifacts": {
                "rgba": res.rgba_path,
                "depth": res.depth_path,
                "depth_npy": res.depth_npy_path,
                "preview": res.preview_path,
            },
            "metrics": {
                "input_size": list(res.input_size),
                "output_size": res.output_size,
                "framing": res.framing,
                "foreground_fraction": round(res.foreground_fraction, 5),
                "matting_ran": res.matting_ran,
                "timings": res.timings,
            },
        }

    return run_stage(project, get_stage("preprocess"), cfg, body, force=force, extra_hash=sha)
