"""The preprocess stage (SPEC section 1): project creation, background removal, framing, depth."""

from __future__ import annotations

import shutil
from pathlib import Path

from animate124.config.schema import Config
from animate124.engine.runner import StageContext, StageResult, run_stage
from animate124.engine.runtime import model_store, resolve_device
from animate124.errors import InputError
from animate124.fileio import atomic_path, file_sha256
from animate124.project import Project
from animate124.stages.build import preprocess_options, prior_dtype
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


def _recorded_sha(project: Project) -> str | None:
    """The content hash of the image the project was made from (older manifests: of its input copy)."""
    _, sha = project.source()
    if sha:
        return sha
    try:
        return file_sha256(source_image(project))
    except InputError:
        return None


def check_same_image(project: Project, image: Path, sha: str, *, force: bool = False) -> None:
    """Refuse to run a different image into a project made from another one (unless ``force``).

    Without this, the new image's outputs would silently replace the old ones while the manifest
    still named the old image.
    """
    if force or not project.exists():
        return
    recorded = _recorded_sha(project)
    if recorded is None or recorded == sha:
        return
    old, _ = project.source()
    raise InputError(
        f"{project.root} was made from another image ({old or 'unknown'}), not {image}",
        hint="use another project (-p DIR, or rename the image: run-all names the project after it), "
        "or pass --force to replace the project's image and redo every stage",
    )


def run_preprocess(
    project: Project,
    cfg: Config,
    image: Path,
    *,
    force: bool = False,
    show_progress: bool = True,  # noqa: ARG001 - the stages share one calling convention
) -> StageResult:
    """Validate ``image`` and the device, create the project, write rgba/depth/preview into it.

    Everything is validated before the project directory is created or changed: the image, the
    device, the project path, and that an existing project was made from the same image.
    """
    from animate124.preprocess.image_io import load_image

    image = Path(image)
    load_image(image, min_side=cfg.preprocess.min_side, max_side=None)  # validates; warns nothing
    resolve_device(cfg.run.device)
    project.check_location()
    sha = file_sha256(image)
    check_same_image(project, image, sha, force=force)
    project.create(source_image=image.resolve(), source_sha256=sha)

    def body(ctx: StageContext) -> dict:
        from animate124.preprocess.pipeline import OutputPaths, preprocess_image

        for old in project.input_dir.glob("source.*") if project.input_dir.exists() else []:
            old.unlink()
        source = project.input_dir / f"source{image.suffix.lower()}"
        with atomic_path(source) as tmp:
            shutil.copyfile(image, tmp)
        project.set_source(image.resolve(), sha)
        device = resolve_device(cfg.run.device)
        outputs = OutputPaths(
            rgba=project.artifact("rgba"),
            depth=project.artifact("depth"),
            depth_npy=project.artifact("depth_npy"),
            preview=project.artifact("preview"),
        )
        res = preprocess_image(
            image,
            outputs,
            store=model_store(cfg),
            device=device,
            dtype=prior_dtype(cfg, device),
            **preprocess_options(cfg),
        )
        return {
            "artifacts": {
                "source": source,  # invert trains on it: recorded (and checked) like the stage's outputs
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
