"""The output commands: ``render``, ``export``, ``evaluate`` and ``report``.

``register(app)`` adds them to a Typer app. Each finds the project like every other command (``-p``,
else the working directory if it is a project, else the most recent project), works on the newest
finished training stage unless ``--stage`` says otherwise, and starts from the config that stage was
trained with unless ``--preset`` is given (so a tiny project renders at tiny sizes). Library errors
become a red line, a hint and exit code 2 (usage) or 1 (runtime); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from animate124.errors import Animate124Error, ConfigError

__all__ = ["register"]

ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project directory. Default: the working directory if it is a project, else the most recent project.",
        show_default=False,
    ),
]
StageOpt = Annotated[
    str | None,
    typer.Option(
        "--stage", help="static, dynamic or refine (default: the newest finished one).", show_default=False
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Settings preset (paper, fast, low-vram, tiny). Default: the config the stage was trained with.",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of config overrides.", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one field, e.g. --set render.ray_chunk=8192 (repeatable).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: auto).", show_default=False),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]


def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]{line}[/cyan]" for line in lines)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _guard(debug: bool, fn: Callable[[], Any]) -> Any:
    """Library errors -> red line + hint + exit code; Ctrl-C -> 130; anything else -> 1 (``--debug``: raise)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return fn()
    except typer.Exit:
        raise
    except Animate124Error as exc:
        if debug:
            raise
        err = _console(stderr=True)
        err.print(f"[bold red]error:[/bold red] {exc.message}", soft_wrap=True)
        if exc.hint:
            err.print(f"[yellow]hint:[/yellow] {exc.hint}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        if debug:
            raise
        err = _console(stderr=True)
        if "OutOfMemoryError" in type(exc).__name__ or "out of memory" in str(exc).lower():
            err.print("[bold red]error:[/bold red] the GPU ran out of memory.")
            err.print(
                "[yellow]hint:[/yellow] lower --size, or --set render.ray_chunk=8192 / raymarch.chunk=262144."
            )
            raise typer.Exit(1) from None
        err.print(f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc}", soft_wrap=True)
        err.print("[yellow]hint:[/yellow] rerun with --debug for the traceback and report it.")
        raise typer.Exit(1) from None


def _setup(project: Path | None, stage: str | None, preset, config, sets, device, options: dict[str, Any]):
    """(Project, source stage, config) of an output command, all checked before any work."""
    from animate124.config.loader import deep_merge
    from animate124.project import find_project
    from animate124.stages.outputs import project_config, source_stage

    proj = find_project(project)
    proj.require()
    src = source_stage(proj, stage)
    if device:
        options = deep_merge(options, {"run": {"device": device}})
    cfg = project_config(proj, src, preset, config, options, sets or [])
    return proj, src, cfg


def _put(d: dict[str, Any], section: str, key: str, value: Any) -> None:
    if value is not None:
        d.setdefault(section, {})[key] = value


# ------------------------------------------------------------------------------------------ render
def render(
    project: ProjectOpt = None,
    stage: StageOpt = None,
    orbit: Annotated[
        bool, typer.Option("--orbit", help="The camera circles the object while the motion plays.")
    ] = False,
    views: Annotated[
        int | None,
        typer.Option(
            "--views",
            help="N fixed views over time: a grid video and one video per view.",
            show_default=False,
        ),
    ] = None,
    stills: Annotated[bool, typer.Option("--stills", help="Also write every frame as PNG.")] = False,
    time: Annotated[
        float | None,
        typer.Option(
            "--time",
            help="Freeze the motion at time T in [0, 1] (orbit: bullet time; views: PNGs).",
            show_default=False,
        ),
    ] = None,
    depth: Annotated[
        bool, typer.Option("--depth", help="Depth videos (colour-mapped, near/far fixed per video).")
    ] = False,
    normal: Annotated[bool, typer.Option("--normal", help="Normal-map videos.")] = False,
    opacity: Annotated[bool, typer.Option("--opacity", help="Opacity (alpha) videos.")] = False,
    rgba: Annotated[
        bool, typer.Option("--rgba", help="PNG frames with a transparent background (implies PNGs).")
    ] = False,
    gif: Annotated[bool, typer.Option("--gif", help="GIFs beside the MP4s.")] = False,
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
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Render videos and frames of a trained stage into <project>/renders/<stage>/.

    Without --orbit or --views it renders the orbit. Colours are the field's true colours (no contrast
    stretching). MP4s are H.264 and play in browsers; --gif adds GIFs.
    """

    def go():
        from animate124.project import remember_project
        from animate124.render.outputs import parse_background
        from animate124.stages.render import run_render_stage

        if frames is not None and frames < 1:
            raise ConfigError(
                f"--frames {frames}: a video needs at least 1 frame", hint="pass --frames 2 or more"
            )
        if views is not None and views < 1:
            raise ConfigError(f"--views {views}: need at least 1 view", hint="pass --views 4 for four views")
        if elevation is not None and not -89.0 <= elevation <= 89.0:
            raise ConfigError(f"--elevation {elevation} is outside [-89, 89] degrees")
        if time is not None and not 0.0 <= time <= 1.0:
            raise ConfigError(
                f"--time {time} is outside [0, 1]", hint="0 is the start of the motion, 1 its end"
            )
        if background is not None:
            parse_background(background)
        opts: dict[str, Any] = {}
        _put(opts, "render", "size", size)
        _put(opts, "render", "frames", frames)
        if frames is not None and frames >= 2:
            _put(opts, "render", "orbit_frames", frames)
        elif frames == 1 and (orbit or views is None) and time is None:
            raise ConfigError(
                "--frames 1: an orbit needs at least 2 frames", hint="use --time T for one still moment"
            )
        _put(opts, "render", "fps", fps)
        _put(opts, "render", "fovy", fov)
        _put(opts, "render", "radius", radius)
        _put(opts, "render", "background", background)
        if elevation is not None:
            _put(opts, "render", "polar", 90.0 - elevation)
        proj, src, cfg = _setup(project, stage, preset, config, set_, device, opts)
        channels = tuple(c for c, on in (("depth", depth), ("normal", normal), ("opacity", opacity)) if on)
        _console().print(f"project: {proj.root}  stage: [bold]{src}[/bold]")
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
            show_progress=not quiet,
        )
        remember_project(proj)
        files = result.metrics.get("files", [])
        c = _console()
        c.print(
            f"[green]✓[/green] render done in {result.seconds:.1f} s: {len(files)} outputs in {proj.render_dir / src}"
        )
        if not quiet:
            for f in files:
                c.print(f"    {f}")

    _guard(debug, go)


# ------------------------------------------------------------------------------------------ export
def export(
    project: ProjectOpt = None,
    stage: StageOpt = None,
    frames: Annotated[
        int | None, typer.Option("--frames", help="Meshes over the motion (4D stages).", show_default=False)
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
    format_: Annotated[
        str | None, typer.Option("--format", help="Per-frame mesh files: ply or obj.", show_default=False)
    ] = None,
    fps: Annotated[
        int | None, typer.Option("--fps", help="Playback rate of the animated .glb.", show_default=False)
    ] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export meshes (marching cubes, albedo vertex colours) into <project>/export/<stage>/.

    A 4D stage gives frames/frame_NNN.ply (or .obj) and one animated mesh.glb (one node per frame, for
    glTF viewers and Blender); the static stage gives mesh.ply and mesh.glb.
    """

    def go():
        from animate124.project import remember_project
        from animate124.stages.export import run_export_stage

        if threshold is not None and threshold < 0:
            raise ConfigError(
                f"--threshold {threshold} is negative", hint="a density level > 0, or 0 for auto"
            )
        opts: dict[str, Any] = {}
        _put(opts, "export", "frames", frames)
        _put(opts, "export", "threshold", threshold)
        _put(opts, "export", "resolution", resolution)
        _put(opts, "export", "decimate", decimate)
        _put(opts, "export", "format", format_)
        _put(opts, "export", "fps", fps)
        proj, src, cfg = _setup(project, stage, preset, config, set_, device, opts)
        _console().print(f"project: {proj.root}  stage: [bold]{src}[/bold]")
        result = run_export_stage(proj, cfg, stage=src, show_progress=not quiet)
        remember_project(proj)
        m = result.metrics
        how = "auto" if m.get("threshold_auto") else "given"
        _console().print(
            f"[green]✓[/green] export done in {result.seconds:.1f} s: {m['frames']} mesh(es), density level "
            f"{m['threshold']:.4g} ({how}), ~{m['faces_mean']} triangles, watertight: {m['watertight']}"
        )
        _console().print(f"    {proj.root / m['glb']}")

    _guard(debug, go)


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(
    project: ProjectOpt = None,
    stage: StageOpt = None,
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
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Metrics of a trained stage: CLIP-I, CLIP-T, temporal consistency, masked PSNR/SSIM of the reference view.

    Results go to <project>/metrics.json and the manifest.
    """

    def go():
        from rich.table import Table

        from animate124.project import remember_project
        from animate124.stages.evaluate import METRIC_NAMES, run_evaluate_stage

        opts: dict[str, Any] = {}
        _put(opts, "evaluate", "frames", frames)
        _put(opts, "evaluate", "views", views)
        _put(opts, "evaluate", "size", size)
        _put(opts, "models", "clip", clip_model)
        proj, src, cfg = _setup(project, stage, preset, config, set_, device, opts)
        result = run_evaluate_stage(proj, cfg, stage=src, prompt=prompt, show_progress=not quiet)
        remember_project(proj)
        m = result.metrics
        table = Table(title=f"{proj.root.name} · {src} · CLIP {m['clip_model']}")
        for col in ("metric", "value", "meaning"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for key, (label, desc) in METRIC_NAMES.items():
            table.add_row(label, f"{m[key]:.4f}", desc)
        c = _console()
        c.print(table)
        c.print(f"prompt: {m['prompt']}")
        c.print(f"[green]✓[/green] {proj.artifact('metrics')}")

    _guard(debug, go)


# ------------------------------------------------------------------------------------------ report
def report(project: ProjectOpt = None, debug: DebugOpt = False) -> None:
    """Write <project>/report.html: input, prompts, previews, videos, loss curves, timings, metrics, config.

    One self-contained file (no network, no scripts) that links the project's images and videos.
    """

    def go():
        from animate124.project import find_project, remember_project
        from animate124.stages.report import run_report_stage

        proj = find_project(project)
        path = run_report_stage(proj)
        remember_project(proj)
        _console().print(f"[green]✓[/green] report: {path}")

    _guard(debug, go)


def register(app: typer.Typer) -> None:
    """Add ``render``, ``export``, ``evaluate`` and ``report`` to ``app``."""
    app.command(
        "render",
        epilog=_examples(
            "animate124 render --orbit",
            "animate124 render --views 4 --depth --normal",
            "animate124 render --time 0.5 --views 8 --rgba",
            "animate124 render -p runs/panda --stage dynamic --size 512 --frames 96 --gif",
        ),
    )(render)
    app.command(
        "export",
        epilog=_examples(
            "animate124 export",
            "animate124 export --frames 32 --decimate 0.25",
            "animate124 export --stage static --format obj --threshold 15",
        ),
    )(export)
    app.command(
        "evaluate",
        epilog=_examples(
            "animate124 evaluate",
            "animate124 evaluate --stage dynamic --views 8",
            "animate124 evaluate --clip-model /models/clip-vit-large-patch14",
        ),
    )(evaluate)
    app.command("report", epilog=_examples("animate124 report", "animate124 report -p runs/panda"))(report)
