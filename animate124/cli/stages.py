"""The stage commands (``preprocess`` ... ``refine``) and ``run-all``.

Their names, one-line help, order and the choices of ``--from``/``--until`` come from the stage
registry (:mod:`animate124.stages.spec`); this module adds only what a user types. The registry's last
stage, ``render``, is a command of :mod:`animate124.cli.outputs` (with export, evaluate and report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from animate124.cli.common import (
    STAGE_OPTIONS,
    TRAINING_OPTIONS,
    FlagHelpCommand,
    ImageProjectOpt,
    ProjectOpt,
    Session,
    StageName,
    display_path,
    examples,
    guarded,
)
from animate124.errors import ConfigError
from animate124.stages.spec import STAGE_NAMES, TRAINING_STAGES, get_stage, stage_range

_ORDER = " -> ".join(STAGE_NAMES)


def stage_help(name: str, details: str = "") -> str:
    """A stage command's help: the registry's summary, then ``details``."""
    summary = get_stage(name).summary
    text = summary[0].upper() + summary[1:] + "."
    return f"{text}\n\n{details}" if details else text


def _found_project(s: Session, explicit: Path | None):
    """The project of a stage command (:func:`~animate124.project.resolve_project`), said in one line."""
    from animate124.project import resolve_project

    found = resolve_project(explicit)
    s.use_project(found.project, found.how)
    return found.project


def _preflight(s: Session, proj: Any, cfg: Any, stages: tuple[str, ...], **kwargs: Any) -> Any:
    """Every check before the first stage runs (:func:`~animate124.stages.preflight.preflight`); prints
    its decisions (one line each) and remembers the project (a run starts now). Returns the config to
    run with (the initializer it decided is in it)."""
    from animate124.project import remember_project
    from animate124.stages.preflight import preflight

    checked = preflight(proj, cfg, stages, command=s.command, force=s.opts.force, **kwargs)
    for line in checked.decisions:
        s.say(line)
    remember_project(proj)
    return checked


# --- preprocess ------------------------------------------------------------------------------------
@guarded(*STAGE_OPTIONS)
def preprocess(
    s: Session,
    image: Annotated[Path, typer.Argument(help="Input image (PNG, JPEG, WebP; with or without alpha).")],
    project: ImageProjectOpt = None,
) -> None:
    from animate124.project import Project, default_project_for_image
    from animate124.stages.preprocess import run_preprocess

    cfg = s.config(check_device=False)  # the pre-flight checks the device
    proj = Project(project or default_project_for_image(image))
    proj.check_location()
    s.use_project(proj, "new" if not proj.exists() else None)
    _preflight(s, proj, cfg, ("preprocess",), image=image)
    s.stage_started(get_stage("preprocess"))
    s.stage_done(run_preprocess(proj, cfg, image, force=s.opts.force))


# --- invert ----------------------------------------------------------------------------------------
@guarded(*STAGE_OPTIONS)
def invert(
    s: Session,
    project: ProjectOpt = None,
    initializer: Annotated[
        str | None,
        typer.Option(
            help="A word that is one token and describes the object (e.g. panda). Default: the "
            "subject that run-all derived for this project, else the config's invert.initializer.",
            show_default=False,
        ),
    ] = None,
    placeholder: Annotated[str | None, typer.Option(help="The new token's text.", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.", show_default=False)] = None,
) -> None:
    from animate124.stages.invert import run_invert

    proj = _found_project(s, project)
    recorded = proj.recorded("prompts") or {}
    inv: dict[str, Any] = {}
    if initializer:
        inv["initializer"] = initializer
    elif recorded.get("initializer"):
        inv["initializer"] = recorded["initializer"]  # the word run-all uses: the stage stays up to date
    if placeholder:
        inv["placeholder"] = placeholder
    if steps is not None:
        inv["steps"] = steps
    cfg = s.config({"invert": inv} if inv else None, check_device=False)
    auto = not initializer and cfg.invert.initializer == recorded.get("initializer")
    cfg = _preflight(s, proj, cfg, ("invert",), initializer_auto=auto).cfg
    s.stage_started(get_stage("invert"))
    s.stage_done(run_invert(proj, cfg, force=s.opts.force, show_progress=s.show_progress))


# --- static, dynamic, refine -----------------------------------------------------------------------
_TRAINING = {
    "static": (
        "Trains at the reference view (192 px, the preprocessed image) and from random views; the "
        "prompt describes the object. Default prompt: the one run-all derived for this project.",
        ('animate124 static --prompt "a high-resolution DSLR image of a panda"', "animate124 static -p runs/panda --preset fast"),
    ),
    "dynamic": (
        "16-frame clips from moving and fixed cameras, guided by the text-to-video model; the prompt "
        "describes the motion. Default prompt: the one run-all derived for this project.",
        ('animate124 dynamic --prompt "a panda is dancing"', "animate124 dynamic -p runs/panda --preset low-vram"),
    ),
    "refine": (
        "'<token>' in the prompt stands for the token learned by `invert`, which must have run. "
        "Default prompt: the one run-all derived for this project.",
        ('animate124 refine --prompt "a <token> is dancing"', "animate124 refine -p runs/panda"),
    ),
}  # fmt: skip


def _training_command(stage: str):
    def command(
        s: Session,
        project: ProjectOpt = None,
        prompt: Annotated[
            str | None,
            typer.Option("--prompt", help="The stage's text prompt.", show_default=False),
        ] = None,
    ) -> None:
        proj = _found_project(s, project)
        if prompt is not None and not prompt.strip():
            raise ConfigError(f"the {stage} prompt is empty", hint="give a short description in quotes")
        # every stage prompt run-all recorded, not only this stage's: refine also runs the dynamic
        # stage's video prior with the dynamic prompt (--set and --prompt still win)
        recorded = proj.recorded("prompts") or {}
        options = {n: {"prompt": recorded[n]} for n in ("static", "dynamic", "refine") if recorded.get(n)}
        if prompt:
            options[stage] = {"prompt": prompt.strip()}
        cfg = s.config(options or None, check_device=False)
        cfg = _preflight(s, proj, cfg, (stage,)).cfg
        s.stage_started(get_stage(stage))
        result = get_stage(stage).run_function()(proj, cfg, force=s.opts.force, show_progress=s.show_progress)
        s.stage_done(result)

    command.__name__ = command.__qualname__ = stage
    return guarded(*TRAINING_OPTIONS)(command)


# --- run-all ---------------------------------------------------------------------------------------
@guarded(*TRAINING_OPTIONS)
def run_all(
    s: Session,
    image: Annotated[Path, typer.Argument(help="Input image (PNG, JPEG, WebP; with or without alpha).")],
    prompt: Annotated[str, typer.Argument(help='Motion prompt, e.g. "a panda is dancing".')],
    project: ImageProjectOpt = None,
    subject: Annotated[
        str | None,
        typer.Option(
            help="The object, when the prompt does not start with it (default: the words after the "
            "prompt's article, up to its verb: 'a panda is dancing' -> panda).",
            show_default=False,
        ),
    ] = None,
    static_prompt: Annotated[
        str | None,
        typer.Option(help='Default: "a high-resolution DSLR image of a <subject>".', show_default=False),
    ] = None,
    refine_prompt: Annotated[
        str | None,
        typer.Option(
            help="Default: the motion prompt with the subject replaced by <token>.", show_default=False
        ),
    ] = None,
    from_: Annotated[
        StageName | None,
        typer.Option(
            "--from",
            help=f"Start at this stage (the order is {_ORDER}); the earlier ones must have run.",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        StageName | None,
        typer.Option(
            help="Stop after this stage (default: render, the last; a run that renders ends by "
            "writing report.html).",
            show_default=False,
        ),
    ] = None,
) -> None:
    from animate124.project import Project, default_project_for_image
    from animate124.stages.pipeline import derive_prompts, run_pipeline
    from animate124.stages.preflight import with_initializer

    prompts = derive_prompts(
        prompt, subject=subject, static_prompt=static_prompt, refine_prompt=refine_prompt
    )
    options: dict[str, Any] = {
        "static": {"prompt": prompts.static},
        "dynamic": {"prompt": prompts.dynamic},
        "refine": {"prompt": prompts.refine},
        "invert": {"initializer": prompts.initializer},
    }
    cfg = s.config(options, check_device=False)  # the pre-flight checks the device
    stages = tuple(st.name for st in stage_range(from_, until))  # --from after --until: a usage error
    proj = Project(project or default_project_for_image(image))
    proj.check_location()
    s.extra = {"image": str(image), "prompts": prompts.as_dict()}
    s.use_project(proj, "new" if not proj.exists() else None)
    checked = _preflight(
        s,
        proj,
        cfg,
        stages,
        image=image,
        initializer_auto=cfg.invert.initializer == prompts.initializer,
    )
    cfg = checked.cfg
    prompts = with_initializer(prompts, checked)  # recorded: `invert` reuses it
    s.extra["prompts"] = prompts.as_dict()
    same = prompts.initializer == prompts.subject
    init = "" if same else f" · textual-inversion initializer: {prompts.initializer}"
    s.say(f"subject: {prompts.subject}{init}")
    for name in TRAINING_STAGES:
        s.say(f"{name} prompt: {getattr(prompts, name)}")
    s.say(_plan_line(stages, checked.will_run))
    results = run_pipeline(
        proj,
        cfg,
        start=from_,
        stop=until,
        options={"preprocess": {"image": image}},
        prompts=prompts,
        force=s.opts.force,
        show_progress=s.show_progress,
        on_start=s.stage_started,
        on_done=s.stage_done,
        report=True,
    )
    report = next((r for r in results if r.stage == "report"), None)
    if report is not None:
        s.extra["report"] = report.artifacts["report"]
        if report.skipped:
            s.say(f"report: {display_path(Path(report.artifacts['report']))}")


def _plan_line(stages: tuple[str, ...], will_run: tuple[str, ...]) -> str:
    """One line: which stages run and which are up to date."""
    done = [n for n in stages if n not in will_run]
    todo = ", ".join(will_run) or "nothing"
    return f"to run: {todo}" + (f" (up to date: {', '.join(done)})" if done else "")


# --- registration ----------------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    """Add the stage commands and run-all to ``app``, in the registry's order."""
    app.command(
        "preprocess",
        cls=FlagHelpCommand,
        help=stage_help(
            "preprocess",
            "Creates the project (default ./runs/<image name>) and writes the cut-out image (rgba.png), "
            "its depth (depth.png, depth.npy) and a preview.png into <project>/preprocess. Images "
            "with a transparent background are used as they are; others get their background removed.",
        ),
        epilog=examples(
            "animate124 preprocess image.png",
            "animate124 preprocess photo.jpg -p runs/panda --set preprocess.framing=recenter",
            "animate124 preprocess image.png --preset tiny",
        ),
    )(preprocess)
    app.command(
        "invert",
        cls=FlagHelpCommand,
        help=stage_help(
            "invert",
            "The token stands for the object as <token> in the refine prompt. Trains on the original "
            "photo (background included), checkpoints as it goes and resumes after an interruption. "
            "Writes <project>/invert/learned_embeds.safetensors.",
        ),
        epilog=examples(
            "animate124 invert",
            "animate124 invert -p runs/panda --initializer panda",
            "animate124 invert --preset tiny",
        ),
    )(invert)
    for stage in TRAINING_STAGES:
        details, lines = _TRAINING[stage]
        app.command(stage, cls=FlagHelpCommand, help=stage_help(stage, details), epilog=examples(*lines))(
            _training_command(stage)
        )
    app.command(
        "run-all",
        cls=FlagHelpCommand,
        help=(
            f"Run every stage ({_ORDER}) on IMAGE with the motion PROMPT.\n\n"
            "The project goes to ./runs/<image name> unless -p is given; from that directory the other "
            "commands find it without -p. Everything is checked before the first stage runs (image, "
            "prompts, device, models, disk, the stages --from needs), so a mistake fails in seconds with "
            "nothing written. The other stages' prompts are derived from PROMPT and printed first. A stage already done "
            "with the same config and inputs is skipped and says so; an interrupted stage resumes. "
            "The last stage renders the orbit video (renders/<stage>/orbit.mp4); then run-all writes "
            '<project>/report.html and prints its path (also in the --json summary as "report"). '
            "Run again when everything is up to date, it does no work and says so. "
            "A different image for an existing project is refused unless --force."
        ),
        epilog=examples(
            'animate124 run-all image.png "a panda is dancing"',
            'animate124 run-all fox.jpg "a fox maneuvering a game controller" -p runs/fox',
            'animate124 run-all toy.png "a toy is spinning" --preset tiny   (CPU smoke run, no downloads)',
            'animate124 run-all cat.png "a cat is dancing" --quiet --json >> results.jsonl',
        ),
    )(run_all)
