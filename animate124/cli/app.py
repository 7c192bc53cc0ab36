"""The ``animate124`` command (Typer + rich).

The CLI parses a few options, builds the config, calls a stage and maps errors to messages and exit
codes (2 usage/config, 1 runtime, 130 interrupted). No training logic lives here. torch, diffusers
and transformers are imported lazily inside the commands so that ``animate124 --help`` is fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from animate124 import __version__
from animate124.errors import Animate124Error, ConfigError

app = typer.Typer(
    name="animate124",
    help=(
        "Animate one image into a 4D dynamic scene from a text motion prompt (Animate124).\n\n"
        "Stages share one project directory: preprocess -> invert -> static -> dynamic -> refine -> render. "
        "`run-all IMAGE PROMPT` runs them all (in ./runs/<image name> by default) and resumes after an "
        "interruption; `render` then finds that project from the working directory or the most recent run."
    ),
    epilog=(
        "[bold]Examples[/bold]\n\n"
        '  [cyan]animate124 run-all image.png "a panda is dancing"[/cyan]\n\n'
        "  [cyan]animate124 render --orbit[/cyan]\n\n"
        '  [cyan]animate124 run-all toy.png "a toy is spinning" --preset tiny --until invert[/cyan]   (CPU smoke run)\n\n'
        "  [cyan]animate124 models list[/cyan]\n\n"
        "  [cyan]animate124 doctor[/cyan]"
    ),
    rich_markup_mode="rich",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="List, download, locate and verify the pretrained models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
config_app = typer.Typer(
    help="Show configuration fields and presets.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")


def console():
    """A rich console on stdout (made per call so it sees the current terminal)."""
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# --- shared options ------------------------------------------------------------------------------
ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project directory. Default: the working directory if it is a project, else the most recent project.",
        show_default=False,
    ),
]
ImageProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project", "-p", help="Project directory (default: ./runs/<image name>).", show_default=False
    ),
]
PresetOpt = Annotated[str, typer.Option("--preset", help="Settings preset: paper, fast, low-vram or tiny.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of config overrides.", show_default=False)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one field, e.g. --set static.iters=2000 (repeatable).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: auto).", show_default=False),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Model cache directory (default: $ANIMATE124_CACHE or the user cache).",
        show_default=False,
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run the stage again even if it is up to date.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _examples(*lines: str) -> str:
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]{line}[/cyan]" for line in lines)


def _guard(debug: bool, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` mapping library errors to a red line + hint and an exit code."""
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
        err = _err_console()
        err.print(f"[bold red]error:[/bold red] {exc.message}", soft_wrap=True)
        if exc.hint:
            err.print(f"[yellow]hint:[/yellow] {exc.hint}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err_console().print(
            "[yellow]interrupted[/yellow]: progress is saved; run the same command again to resume."
        )
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI boundary
        if debug:
            raise
        name = type(exc).__name__
        err = _err_console()
        if "OutOfMemoryError" in name or "out of memory" in str(exc).lower():
            err.print("[bold red]error:[/bold red] the GPU ran out of memory.")
            err.print(
                "[yellow]hint:[/yellow] try --preset low-vram, or lower --set refine.image_size=512, "
                "--set dynamic.vae_grad_frames=4, --set renderer.max_steps=512, --set invert.batch_size=4."
            )
            raise typer.Exit(1) from None
        err.print(f"[bold red]internal error:[/bold red] {name}: {exc}", soft_wrap=True)
        err.print("[yellow]hint:[/yellow] rerun with --debug for the traceback and report it.")
        raise typer.Exit(1) from None


def _build_config(
    preset: str,
    config_file: Path | None,
    sets: list[str] | None,
    device: str | None = None,
    cache_dir: Path | None = None,
    options: dict[str, Any] | None = None,
):
    from animate124.config.loader import deep_merge, resolve_config

    opts: dict[str, Any] = dict(options or {})
    if device:
        opts = deep_merge(opts, {"run": {"device": device}})
    if cache_dir:
        opts = deep_merge(opts, {"models": {"cache_dir": str(cache_dir)}})
    return resolve_config(preset, config_file, opts, sets or [])


def _check_prompt(prompt: str | None, what: str) -> str:
    if prompt is None or not prompt.strip():
        raise ConfigError(f"the {what} prompt is empty", hint="give a short description in quotes")
    return prompt.strip()


def _report(result, quiet: bool = False) -> None:
    c = console()
    if result.skipped:
        c.print(f"[green]✓[/green] {result.stage}: up to date (use --force to run it again)")
        return
    extra = " (resumed)" if result.resumed else ""
    c.print(f"[green]✓[/green] {result.stage} done in {result.seconds:.1f} s{extra}")
    if not quiet:
        for k, v in result.artifacts.items():
            c.print(f"    {k}: {v}")


# --- stages --------------------------------------------------------------------------------------
@app.command(
    epilog=_examples(
        "animate124 preprocess image.png",
        "animate124 preprocess photo.jpg -p runs/panda --set preprocess.framing=recenter",
        "animate124 preprocess image.png --preset tiny",
    )
)
def preprocess(
    image: Annotated[Path, typer.Argument(help="Input image (PNG, JPEG, WebP; with or without alpha).")],
    project: ImageProjectOpt = None,
    preset: PresetOpt = "paper",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    force: ForceOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove the background (if the image has no alpha), frame the object in a square and estimate depth.

    Writes rgba.png, depth.png, depth.npy and preview.png into <project>/preprocess and creates the project.
    """

    def go():
        from animate124.project import Project, default_project_for_image, remember_project
        from animate124.stages.preprocess import run_preprocess

        cfg = _build_config(preset, config, set_, device, cache_dir)
        proj = Project(project or default_project_for_image(image))
        result = run_preprocess(proj, cfg, image, force=force)
        remember_project(proj)
        console().print(f"project: {proj.root}")
        _report(result)

    _guard(debug, go)


@app.command(
    epilog=_examples(
        "animate124 invert",
        "animate124 invert -p runs/panda --initializer panda",
        "animate124 invert --preset tiny",
    )
)
def invert(
    project: ProjectOpt = None,
    initializer: Annotated[
        str | None,
        typer.Option(help="A one-token word describing the object (e.g. panda).", show_default=False),
    ] = None,
    placeholder: Annotated[str | None, typer.Option(help="The new token's text.", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.", show_default=False)] = None,
    preset: PresetOpt = "paper",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Learn a textual-inversion token for the object (SD 1.5, SPEC section 2), used by `refine` as <token>.

    Trains on the original photo (background included), checkpoints every few hundred steps and resumes
    after an interruption. Writes <project>/invert/learned_embeds.safetensors.
    """

    def go():
        from animate124.project import find_project, remember_project
        from animate124.stages.invert import run_invert

        inv: dict[str, Any] = {}
        if initializer:
            inv["initializer"] = initializer
        if placeholder:
            inv["placeholder"] = placeholder
        if steps is not None:
            inv["steps"] = steps
        cfg = _build_config(preset, config, set_, device, cache_dir, {"invert": inv} if inv else None)
        proj = find_project(project)
        result = run_invert(proj, cfg, force=force, show_progress=not quiet)
        remember_project(proj)
        _report(result)

    _guard(debug, go)


PromptOpt = Annotated[
    str | None, typer.Option("--prompt", help="The stage's text prompt.", show_default=False)
]


def _register_training_command(stage: str, doc: str, examples: tuple[str, ...]) -> None:
    """static, dynamic and refine share their options; one factory registers each."""

    def command(
        project: ProjectOpt = None,
        prompt: PromptOpt = None,
        preset: PresetOpt = "paper",
        config: ConfigOpt = None,
        set_: SetOpt = None,
        device: DeviceOpt = None,
        cache_dir: CacheOpt = None,
        force: ForceOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        def go():
            from animate124.project import find_project, remember_project
            from animate124.stages.spec import get_stage

            options = {stage: {"prompt": _check_prompt(prompt, stage)}} if prompt is not None else None
            cfg = _build_config(preset, config, set_, device, cache_dir, options)
            proj = find_project(project)
            result = get_stage(stage).run_function()(proj, cfg, force=force, show_progress=not quiet)
            remember_project(proj)
            _report(result)

        _guard(debug, go)

    command.__doc__ = doc
    command.__name__ = stage
    app.command(stage, epilog=_examples(*examples))(command)


_register_training_command(
    "static",
    "Optimise the static NeRF with SD 1.5 and Zero123-XL score distillation plus reference losses (SPEC 4).",
    (
        'animate124 static --prompt "a high-resolution DSLR image of a panda"',
        "animate124 static -p runs/panda --preset fast",
    ),
)
_register_training_command(
    "dynamic",
    "Optimise the 4D grid NeRF with text-to-video score distillation (ModelScope, SPEC 5).",
    (
        'animate124 dynamic --prompt "a panda is dancing"',
        "animate124 dynamic -p runs/panda --preset low-vram",
    ),
)
_register_training_command(
    "refine",
    "Semantic refinement with ControlNet-tile and the textual-inversion token (SPEC 6); '<token>' in the "
    "prompt stands for the learned token.",
    ('animate124 refine --prompt "a <token> is dancing"', "animate124 refine -p runs/panda"),
)


@app.command(
    epilog=_examples(
        "animate124 render --orbit",
        "animate124 render -p runs/panda --views 4",
    )
)
def render(
    project: ProjectOpt = None,
    orbit: Annotated[
        bool, typer.Option("--orbit", help="An orbit video: the camera circles while time runs.")
    ] = False,
    views: Annotated[
        int | None, typer.Option(help="Fixed views (each a video over time).", show_default=False)
    ] = None,
    preset: PresetOpt = "paper",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Render videos, frames and depth of the latest trained stage (refine > dynamic > static) into <project>/render.

    Without -p the project is the working directory if it is one, else the most recent project.
    """

    def go():
        from animate124.project import find_project
        from animate124.stages.render import run_render_stage

        options = {"render": {"views": views}} if views else None
        cfg = _build_config(preset, config, set_, device, None, options)
        proj = find_project(project)
        proj.require()
        run_render_stage(proj, cfg, orbit=orbit)

    _guard(debug, go)


_STAGE_ORDER = ("preprocess", "invert", "static", "dynamic", "refine", "render")


@app.command(
    "run-all",
    epilog=_examples(
        'animate124 run-all image.png "a panda is dancing"',
        'animate124 run-all fox.jpg "a fox maneuvering a game controller" --subject fox -p runs/fox',
        'animate124 run-all toy.png "a toy is spinning" --preset tiny --until invert',
    ),
)
def run_all(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    prompt: Annotated[str, typer.Argument(help='Motion prompt, e.g. "a panda is dancing".')],
    project: ImageProjectOpt = None,
    subject: Annotated[
        str | None,
        typer.Option(
            help="The object word (default: the word after the prompt's article).", show_default=False
        ),
    ] = None,
    static_prompt: Annotated[
        str | None,
        typer.Option(help='Default: "a high-resolution DSLR image of <prompt>".', show_default=False),
    ] = None,
    refine_prompt: Annotated[
        str | None,
        typer.Option(help="Default: the prompt with the subject replaced by <token>.", show_default=False),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Stop after this stage (preprocess, invert, static, dynamic, refine).", show_default=False
        ),
    ] = None,
    preset: PresetOpt = "paper",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    device: DeviceOpt = None,
    cache_dir: CacheOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run every stage on IMAGE with the motion PROMPT, resuming where an earlier run stopped.

    The project goes to ./runs/<image name> unless -p is given, and becomes the "most recent project" that
    `animate124 render` uses when run without -p. Prompts for the other stages are derived from PROMPT.
    """

    def go():
        from animate124.project import Project, default_project_for_image, remember_project
        from animate124.stages.pipeline import derive_prompts, run_pipeline

        if until is not None and until not in _STAGE_ORDER:
            raise ConfigError(
                f"--until {until!r} is not a stage", hint=f"choose one of: {', '.join(_STAGE_ORDER)}"
            )
        motion = _check_prompt(prompt, "motion")
        prompts = derive_prompts(
            motion, subject=subject, static_prompt=static_prompt, refine_prompt=refine_prompt
        )
        options: dict[str, Any] = {
            "static": {"prompt": prompts.static},
            "dynamic": {"prompt": prompts.dynamic},
            "refine": {"prompt": prompts.refine},
            "invert": {"initializer": prompts.subject},
        }
        cfg = _build_config(preset, config, set_, device, cache_dir, options)
        proj = Project(project or default_project_for_image(image))
        remember_project(proj) if proj.exists() else None
        console().print(f"project: {proj.root}")
        run_pipeline(
            proj,
            cfg,
            image,
            until=until,
            force=force,
            show_progress=not quiet,
            report=_report,
            auto_initializer=subject is None,
        )
        remember_project(proj)

    _guard(debug, go)


# --- models --------------------------------------------------------------------------------------
RoleArg = Annotated[
    str, typer.Argument(help="Role: sd, zero123, video, controlnet, depth, matting, segment, clip.")
]
AltOpt = Annotated[
    str | None,
    typer.Option(
        "--alternative",
        help="An alternative model of the role, e.g. zeroscope for video.",
        show_default=False,
    ),
]


def _store(cache_dir: Path | None, offline: bool = True, tiny: bool = False):
    from animate124.engine.runtime import model_store

    options: dict[str, Any] = {"models": {"offline": offline, "tiny": tiny}}
    if cache_dir:
        options["models"]["cache_dir"] = str(cache_dir)
    cfg = _build_config("paper", None, None, None, None, options)
    return model_store(cfg)


@models_app.command(
    "list", epilog=_examples("animate124 models list", "animate124 models list --cache-dir /data/models")
)
def models_list(
    cache_dir: CacheOpt = None,
    tiny: Annotated[bool, typer.Option(help="Show the tiny test cache.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Every model role with its repo id, licence, whether it is cached and its size."""

    def go():
        from rich.table import Table

        store = _store(cache_dir, tiny=tiny)
        table = Table(title=f"models (cache: {store.cache_dir})")
        for col in ("role", "repo", "revision", "licence", "cached", "size"):
            table.add_column(col)
        for row in store.describe():
            size = row.get("size")
            table.add_row(
                row["role"],
                str(row["repo"]),
                str(row.get("revision") or "")[:12],
                str(row.get("licence") or ""),
                "[green]yes[/green]" if row.get("cached") else "[red]no[/red]",
                f"{size / 1e9:.2f} GB" if size else "-",
            )
        console().print(table)
        console().print(
            "[yellow]ModelScope and Zeroscope weights are CC-BY-NC-4.0: non-commercial use only.[/yellow]"
        )

    _guard(debug, go)


@models_app.command(
    "download",
    epilog=_examples(
        "animate124 models download sd",
        "animate124 models download all",
        "animate124 models download video --alternative zeroscope",
    ),
)
def models_download(
    role: RoleArg,
    alternative: AltOpt = None,
    cache_dir: CacheOpt = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Fail at once instead of using the network.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Download a role's files (only the ones used) into the cache; resumable, verified afterwards. `all` for every role."""

    def go():
        from animate124.models.registry import ROLES

        store = _store(cache_dir, offline=offline)
        roles = list(ROLES) if role == "all" else [role]
        for r in roles:
            if r not in ROLES:
                raise ConfigError(f"unknown model role {r!r}", hint=f"choose one of: {', '.join(ROLES)}, all")
            path = store.download(r, progress=True, alternative=alternative)
            problems = store.verify(r, alternative=alternative)
            if problems:
                raise Animate124Error(f"{r}: downloaded files did not verify: {'; '.join(problems)}")
            console().print(f"[green]✓[/green] {r}: {path}")

    _guard(debug, go)


@models_app.command("path", epilog=_examples("animate124 models path sd"))
def models_path(
    role: RoleArg, alternative: AltOpt = None, cache_dir: CacheOpt = None, debug: DebugOpt = False
) -> None:
    """Print the local directory of a cached role (error if it is not cached)."""

    def go():
        console().print(str(_store(cache_dir).resolve(role, alternative=alternative)), soft_wrap=True)

    _guard(debug, go)


@models_app.command(
    "verify", epilog=_examples("animate124 models verify", "animate124 models verify zero123")
)
def models_verify(
    role: Annotated[str | None, typer.Argument(help="Role to check (default: every cached role).")] = None,
    alternative: AltOpt = None,
    cache_dir: CacheOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check the cached files of a role (or of every cached role): required files present, sizes and hashes."""

    def go():
        from animate124.models.registry import ROLES

        store = _store(cache_dir)
        roles = [role] if role else [r for r in ROLES if store.is_cached(r)]
        bad = 0
        for r in roles:
            problems = store.verify(r, alternative=alternative)
            if problems:
                bad += 1
                console().print(f"[red]✗[/red] {r}: " + "; ".join(problems))
            else:
                console().print(f"[green]✓[/green] {r}")
        if not roles:
            console().print("no cached models")
        if bad:
            raise typer.Exit(1)

    _guard(debug, go)


# --- config / doctor -----------------------------------------------------------------------------
@config_app.command(
    "show",
    epilog=_examples("animate124 config show --preset fast", "animate124 config show -s static.iters=100"),
)
def config_show(
    preset: PresetOpt = "paper", config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False
) -> None:
    """Print the resolved configuration as YAML."""

    def go():
        from animate124.config.loader import dump_yaml

        console().print(dump_yaml(_build_config(preset, config, set_)), markup=False)

    _guard(debug, go)


@config_app.command("fields", epilog=_examples("animate124 config fields"))
def config_fields(debug: DebugOpt = False) -> None:
    """Every config field with its type, default (paper) and help."""

    def go():
        from rich.table import Table

        from animate124.config.loader import describe_fields

        t = Table()
        for col in ("field", "type", "default", "help"):
            t.add_column(col)
        for path, tp, default, help_ in describe_fields():
            t.add_row(path, tp, repr(default), help_)
        console().print(t)

    _guard(debug, go)


@config_app.command("presets", epilog=_examples("animate124 config presets"))
def config_presets() -> None:
    """The presets with their one-line descriptions."""
    from animate124.config.presets import preset_descriptions

    for name, desc in preset_descriptions().items():
        console().print(f"[bold]{name}[/bold]: {desc}")


@app.command(epilog=_examples("animate124 doctor", "animate124 doctor --cache-dir /data/models"))
def doctor(cache_dir: CacheOpt = None, debug: DebugOpt = False) -> None:
    """Report Python, torch, CUDA, GPU memory, optional accelerators and which models are cached."""

    def go():
        from animate124.stages.doctor import doctor_report

        for key, value, ok in doctor_report(_store(cache_dir)):
            mark = (
                "[green]✓[/green]" if ok is True else ("[yellow]-[/yellow]" if ok is None else "[red]✗[/red]")
            )
            console().print(f"{mark} {key}: {value}")

    _guard(debug, go)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"animate124 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Animate one image into a 4D dynamic scene from a text motion prompt."""


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
