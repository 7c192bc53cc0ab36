"""The output commands: ``render``, ``export``, ``evaluate`` and ``report``.

``register(app)`` adds them to the app (after the stage commands). They are written like every other
command (``@guarded`` over a function of a :class:`~animate124.cli.common.Session`): each finds the
project like the stage commands (``-p``, else the working directory if it is a project, else the most
recent project), works on the newest finished training stage unless ``--stage`` says otherwise, and
starts from the config that stage was trained with unless ``--preset`` is given (so a tiny project
renders at tiny sizes): :meth:`Session.output_config`. Requests that make no sense are usage errors
(exit 2) before any work; running out of GPU memory is an
:class:`~animate124.errors.OutOfMemoryError` whose hint names the command's own size options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from animate124.cli.common import (
    OUTPUT_OPTIONS,
    FlagHelpCommand,
    ProjectOpt,
    Session,
    SourceStageOpt,
    display_path,
    examples,
    flag,
    guarded,
)
from animate124.errors import ConfigError

__all__ = ["register"]


def _put(d: dict[str, Any], section: str, key: str, value: Any) -> None:
    if value is not None:
        d.setdefault(section, {})[key] = value


def _source(s: Session, project: Path | None, stage: str | None):
    """(project, trained stage) of an output command, checked before any work; says both in one line."""
    from animate124.project import remember_project, resolve_project
    from animate124.stages.outputs import source_stage

    found = resolve_project(project)
    proj = found.project
    s.use_project(proj, found.how)
    proj.require()
    src = source_stage(proj, stage)
    s.say(f"stage: [bold]{src}[/bold]" + ("" if stage else " (the newest finished)"))
    remember_project(proj)  # remembered when the work starts, like a run
    return proj, src


# ------------------------------------------------------------------------------------------ render
@guarded(*OUTPUT_OPTIONS, "force")
def render(
    s: Session,
    project: ProjectOpt = None,
    stage: SourceStageOpt = None,
    orbit: Annotated[
        bool, flag("--orbit", help="The camera circles the object while the motion plays.")
    ] = False,
    views: Annotated[
        int | None,
        typer.Option(
            "--views",
            help="N fixed views over time: a grid video and one video per view.",
            show_default=False,
        ),
    ] = None,
    stills: Annotated[bool, flag("--stills", help="Also write every frame as PNG.")] = False,
    time: Annotated[
        float | None,
        typer.Option(
            "--time",
            help="Freeze the motion at time T in [0, 1] (orbit: bullet time; views: PNGs).",
            show_default=False,
        ),
    ] = None,
    depth: Annotated[
        bool, flag("--depth", help="Depth videos (colour-mapped, near/far fixed per video).")
    ] = False,
    normal: Annotated[bool, flag("--normal", help="Normal-map videos.")] = False,
    opacity: Annotated[bool, flag("--opacity", help="Opacity (alpha) videos.")] = False,
    rgba: Annotated[
        bool, flag("--rgba", help="PNG frames with a transparent background (implies PNGs).")
    ] = False,
    gif: Annotated[bool, flag("--gif", help="GIFs beside the MP4s.")] = False,
    size: Annotated[
        int | None, typer.Option("--size", help="Frame size in pixels (square).", show_default=False)
    ] = None,
    frames: Annotated[
        int | None, typer.Option("--frames", help="Frames per video.", show_default=False)
    ] = None,
    fps: Annotated[int | None, typer.Option("--fps", help="Video frame rate.", show_default=False)] = None,
    fov: Annotated[
        float | None, typer.Option("--fov", help="Vertical field of view in degrees.", show_default=False)
    ] = None,
    elevation: Annotated[
        float | None,
        typer.Option(
            "--elevation",
            help="Camera elevation in degrees (0 = level, 90 = from above).",
            show_default=False,
        ),
    ] = None,
    radius: Annotated[
        float | None, typer.Option("--radius", help="Camera distance from the centre.", show_default=False)
    ] = None,
    background: Annotated[
        str | None,
        typer.Option(
            "--background", help="white, black, gray, #rrggbb or r,g,b in 0..1.", show_default=False
        ),
    ] = None,
) -> None:
    from animate124.errors import oom_guard
    from animate124.render.outputs import parse_background
    from animate124.stages.render import RENDER_STAGE, run_render_stage

    if frames is not None and frames < 1:
        raise ConfigError(
            f"--frames {frames}: a video needs at least 1 frame", hint="pass --frames 2 or more"
        )
    if views is not None and views < 1:
        raise ConfigError(f"--views {views}: need at least 1 view", hint="pass --views 4 for four views")
    if elevation is not None and not -89.0 <= elevation <= 89.0:
        raise ConfigError(f"--elevation {elevation} is outside [-89, 89] degrees")
    if time is not None and not 0.0 <= time <= 1.0:
        raise ConfigError(f"--time {time} is outside [0, 1]", hint="0 is the start of the motion, 1 its end")
    if frames == 1 and (orbit or views is None) and time is None:
        raise ConfigError(
            "--frames 1: an orbit needs at least 2 frames", hint="use --time T for one still moment"
        )
    if background is not None:
        parse_background(background)
    opts: dict[str, Any] = {}
    _put(opts, "render", "size", size)
    _put(opts, "render", "frames", frames)
    if frames is not None and frames >= 2:
        _put(opts, "render", "orbit_frames", frames)
    _put(opts, "render", "fps", fps)
    _put(opts, "render", "fovy", fov)
    _put(opts, "render", "radius", radius)
    _put(opts, "render", "background", background)
    if elevation is not None:
        _put(opts, "render", "polar", 90.0 - elevation)
    proj, src = _source(s, project, stage)
    cfg = s.output_config(proj, src, opts)
    channels = tuple(c for c, on in (("depth", depth), ("normal", normal), ("opacity", opacity)) if on)
    s.stage_started(RENDER_STAGE)
    with oom_guard(
        f"`animate124 render` of the {src} stage",
        hint="lower --size, or --set render.ray_chunk=8192 --set render.sample_chunk=32768",
    ):
        result = run_render_stage(
            proj,
            cfg,
            stage=src,
            orbit=orbit,
            views=views,
            time=time,
            channels=channels,
            stills=stills,
            rgba=rgba,
            gif=gif,
            force=s.opts.force,
            show_progress=s.show_progress,
        )
    s.stage_done(result)
    if result.skipped:  # say where the files are
        from rich.markup import escape

        for name, path in result.artifacts.items():
            s.say(f"    {escape(name)}: {escape(display_path(Path(path)))}")


# ------------------------------------------------------------------------------------------ export
@guarded(*OUTPUT_OPTIONS)
def export(
    s: Session,
    project: ProjectOpt = None,
    stage: SourceStageOpt = None,
    animated: Annotated[
        bool | None,
        flag(
            "--animated/--flipbook",
            help="4D stages: one mesh whose vertices follow the motion (default), or a separate mesh per frame.",
            show_default=False,
        ),
    ] = None,
    frames: Annotated[
        int | None, typer.Option("--frames", help="Frames over the motion (4D stages).", show_default=False)
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Density level of the surface (default: auto, matches the rendered silhouette).",
            show_default=False,
        ),
    ] = None,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Marching-cubes grid per axis.", show_default=False)
    ] = None,
    decimate: Annotated[
        float | None,
        typer.Option(
            "--decimate", help="Keep this fraction of the triangles, e.g. 0.25.", show_default=False
        ),
    ] = None,
    max_faces: Annotated[
        int | None,
        typer.Option(
            "--max-faces", help="At most this many triangles per mesh (0: no limit).", show_default=False
        ),
    ] = None,
    texture: Annotated[
        str | None,
        typer.Option(
            "--texture",
            help="Colour of the .glb: atlas (baked texture) or vertex (colours).",
            show_default=False,
        ),
    ] = None,
    quantize: Annotated[
        bool | None,
        flag(
            "--quantize/--no-quantize",
            help="The .glb mesh's vertex data as 16/8-bit integers (KHR_mesh_quantization, the default), "
            "or 32-bit floats for viewers without that extension.",
            show_default=False,
        ),
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option("--format", help="Mesh files beside the .glb: ply or obj.", show_default=False),
    ] = None,
    fps: Annotated[
        int | None, typer.Option("--fps", help="Playback rate of the animated .glb.", show_default=False)
    ] = None,
) -> None:
    """Export meshes (marching cubes on the density, the albedo as a texture) into <project>/export/<stage>/.

    A 4D stage gives mesh.glb: ONE mesh whose vertices are fitted to the surface of every frame, stored
    as glTF morph targets with an animation (Blender, game engines and web viewers play it), with the
    fit error of each frame; --flipbook instead writes frames/frame_NNN.ply (or .obj) and flipbook.glb,
    a separate mesh per frame. The static stage gives mesh.glb and mesh.ply. Each export also draws the
    exported mesh: turntable.png and turntable.mp4.
    """

    from animate124.errors import oom_guard
    from animate124.stages.export import EXPORT_STAGE, run_export_stage

    if threshold is not None and threshold < 0:
        raise ConfigError(f"--threshold {threshold} is negative", hint="a density level > 0, or 0 for auto")
    opts: dict[str, Any] = {}
    _put(opts, "export", "animated", animated)
    _put(opts, "export", "frames", frames)
    _put(opts, "export", "threshold", threshold)
    _put(opts, "export", "resolution", resolution)
    _put(opts, "export", "decimate", decimate)
    _put(opts, "export", "max_faces", max_faces)
    _put(opts, "export", "texture", texture)
    _put(opts, "export", "quantize", quantize)
    _put(opts, "export", "format", format_)
    _put(opts, "export", "fps", fps)
    proj, src = _source(s, project, stage)
    cfg = s.output_config(proj, src, opts)
    s.stage_started(EXPORT_STAGE)
    with oom_guard(
        f"`animate124 export` of the {src} stage",
        hint="lower --resolution, or --set export.silhouette_size=32",
    ):
        result = run_export_stage(proj, cfg, stage=src, show_progress=s.show_progress)
    s.stage_done(result)
    m = result.metrics
    _say_export(s, m)
    keys = ("mode", "frames", "threshold", "faces_mean", "watertight", "glb_bytes", "fit_error_max", "fit_ok")
    s.extra["export"] = {k: m[k] for k in keys if k in m}


def _say_export(s: Session, m: dict[str, Any]) -> None:
    """The export's summary lines (the .glb's path is the stage's artifact line): what was written, and for an
    animated mesh the fit error per frame."""
    how = "auto" if m.get("threshold_auto") else "given"
    level = f"density level {m['threshold']:.4g} ({how})"
    size = f"{m.get('glb_bytes', 0) / 1e6:.2f} MB"
    closed = "watertight" if m["watertight"] else "not watertight (open at the grid's edge or holes)"
    if m.get("mode") == "flipbook":
        s.say(
            f"    flipbook: {m['frames']} meshes, ~{m['faces_mean']} triangles each, {level}, {closed} ({size})"
        )
        return
    colour = f"{m['texture_size']}² texture" if m.get("texture") == "atlas" else "vertex colours"
    what = f"one mesh, {m['frames']} frames" if m.get("mode") == "animated" else "one mesh"
    data = "integer vertex data (KHR_mesh_quantization)" if m.get("quantized") else "float vertex data"
    s.say(
        f"    {what}, {m['vertices']} vertices / {m['faces']} triangles, {colour}, {data}, {level}, {closed} "
        f"({size})"
    )
    if m.get("mode") != "animated":
        return
    worst = m["fit_error_max"]
    if len(worst) <= 32:
        per = " ".join(f"{100 * w:.1f}" for w in worst)
        s.say(
            f"    fit error per frame (largest distance, % of the object's size of {m['object_size']:.3g} units): {per}"
        )
    else:
        k = max(range(len(worst)), key=worst.__getitem__)
        s.say(
            f"    fit error (largest distance, % of the object's size): worst {100 * worst[k]:.1f} at frame {k}, "
            f"mean over frames {100 * sum(m['fit_error_mean']) / len(worst):.2f}"
        )
    if not m["fit_ok"]:
        over = m["fit_frames_over"]
        shown = ", ".join(str(k) for k in over[:12]) + (" …" if len(over) > 12 else "")
        s.warn(
            f"one mesh does not follow the motion at frame(s) {shown}: their surface is more than "
            f"{100 * m['fit_tolerance']:.3g} % of the object's size away (parts that split, merge or appear). "
            "`animate124 export --flipbook` writes a separate mesh per frame."
        )


# ------------------------------------------------------------------------------------------ evaluate
@guarded(*OUTPUT_OPTIONS, "cache_dir")
def evaluate(
    s: Session,
    project: ProjectOpt = None,
    stage: SourceStageOpt = None,
    clip_model: Annotated[
        str | None,
        typer.Option(
            "--clip-model",
            help="CLIP model: a Hub id or a local folder (default: the clip role).",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", help="Text for CLIP-T (default: the motion prompt).", show_default=False),
    ] = None,
    frames: Annotated[
        int | None, typer.Option("--frames", help="Time steps rendered per view.", show_default=False)
    ] = None,
    views: Annotated[
        int | None, typer.Option("--views", help="Views around the object for CLIP-T.", show_default=False)
    ] = None,
    size: Annotated[
        int | None, typer.Option("--size", help="Render size of the CLIP renders.", show_default=False)
    ] = None,
) -> None:
    """Metrics of a trained stage: CLIP-I, CLIP-T, temporal consistency, masked PSNR/SSIM of the reference view.

    Results go to <project>/metrics.json and the manifest, and as a table on the terminal (with --json:
    under "metrics" in the summary).
    """
    from rich.markup import escape
    from rich.table import Table

    from animate124.errors import oom_guard
    from animate124.stages.evaluate import EVALUATE_STAGE, METRIC_NAMES, run_evaluate_stage

    opts: dict[str, Any] = {}
    _put(opts, "evaluate", "frames", frames)
    _put(opts, "evaluate", "views", views)
    _put(opts, "evaluate", "size", size)
    _put(opts, "models", "clip", clip_model)
    proj, src = _source(s, project, stage)
    cfg = s.output_config(proj, src, opts)
    s.stage_started(EVALUATE_STAGE)
    with oom_guard(
        f"`animate124 evaluate` of the {src} stage",
        hint="lower --size, or --set evaluate.ref_size=128",
    ):
        result = run_evaluate_stage(proj, cfg, stage=src, prompt=prompt, show_progress=s.show_progress)
    s.stage_done(result)
    m = result.metrics
    table = Table(title=f"{escape(proj.root.name)} · {src} · CLIP {escape(str(m['clip_model']))}")
    for col in ("metric", "value", "meaning"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for key, (label, desc) in METRIC_NAMES.items():
        if key in m:
            table.add_row(label, f"{m[key]:.4f}", desc)
    s.show(table)
    s.say(f"prompt: {escape(str(m['prompt']))}")
    s.extra["metrics"] = {k: m[k] for k in (*METRIC_NAMES, "clip_model", "prompt") if k in m}


# ------------------------------------------------------------------------------------------ report
@guarded("force", "quiet", "json_output")
def report(s: Session, project: ProjectOpt = None) -> None:
    """Write <project>/report.html: input, prompts, previews, videos, loss curves, timings, metrics, config.

    One self-contained file (no network, no scripts) that links the project's images and videos; open it
    in a browser. `run-all` writes it too, at the end. When nothing it shows has changed, the page is
    left as it is (--force writes it again).
    """
    from rich.markup import escape

    from animate124.project import remember_project, resolve_project
    from animate124.stages.report import REPORT_STAGE, run_report_stage

    found = resolve_project(project)
    proj = found.project
    s.use_project(proj, found.how)
    proj.require()
    remember_project(proj)
    s.stage_started(REPORT_STAGE)
    result = run_report_stage(proj, force=s.opts.force)
    s.stage_done(result)
    s.extra["report"] = result.artifacts["report"]
    if result.skipped:
        s.say(f"report: {escape(display_path(Path(result.artifacts['report'])))}")


_RENDER_HELP = (
    "Videos and frames of the newest trained stage (or --stage), into <project>/renders/<stage>/.\n\n"
    "Without -p the project is the working directory if it is one, else the only project under "
    "./runs (of several, the newest), else the last project a run started on; the first line says "
    "which and why, so `animate124 render --orbit` works as typed right after "
    "`animate124 run-all IMAGE PROMPT` in the same directory. Without --orbit or --views it renders "
    "the orbit. Sizes and counts default to the config the stage was trained with. Colours are the "
    "field's true colours (no contrast stretching); MP4s are H.264 and play in browsers; --gif adds "
    "GIFs. The same request on the same trained result is skipped (--force renders again)."
)


def register(app: typer.Typer) -> None:
    """Add ``render``, ``export``, ``evaluate`` and ``report`` to ``app``."""
    app.command(
        "render",
        cls=FlagHelpCommand,
        help=_RENDER_HELP,
        epilog=examples(
            "animate124 render --orbit",
            "animate124 render --views 4 --depth --normal",
            "animate124 render --time 0.5 --views 8 --rgba",
            "animate124 render -p runs/panda --stage dynamic --size 512 --frames 96 --gif",
        ),
    )(render)
    app.command(
        "export",
        cls=FlagHelpCommand,
        epilog=examples(
            "animate124 export",
            "animate124 export --frames 32 --max-faces 10000",
            "animate124 export --flipbook --decimate 0.25",
            "animate124 export --stage static --format obj --threshold 15 --texture vertex",
        ),
    )(export)
    app.command(
        "evaluate",
        cls=FlagHelpCommand,
        epilog=examples(
            "animate124 evaluate",
            "animate124 evaluate --stage dynamic --views 8",
            "animate124 evaluate --clip-model /models/clip-vit-large-patch14",
        ),
    )(evaluate)
    app.command(
        "report", cls=FlagHelpCommand, epilog=examples("animate124 report", "animate124 report -p runs/panda")
    )(report)
