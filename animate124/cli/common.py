"""What every command shares: the common options (declared once), the config builder, output and the
``@guarded`` decorator that maps errors to messages and exit codes.

A command is written as ``@guarded("preset", "device", ...)`` over a function whose first parameter is
a :class:`Session`; the decorator adds the named common options (and ``--debug``) to the command's
signature, so Typer shows them, builds the Session from them, runs the body and turns whatever it
raises into one red line, a hint and an exit code (:data:`EXIT_CODES_HELP`)::

    @guarded("preset", "config_file", "sets", "device", "quiet", "json_output")
    def invert(s: Session, project: ProjectOpt = None) -> None:
        cfg = s.config({"invert": {...}})
        s.stage_done(run_invert(...))

Nothing here imports torch: ``animate124 --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

# help text and flag rendering live in cli/help.py (re-exported here for the commands)
from animate124.cli.help import EXIT_CODES_HELP as EXIT_CODES_HELP
from animate124.cli.help import FlagHelpCommand as FlagHelpCommand
from animate124.cli.help import FlagHelpGroup as FlagHelpGroup
from animate124.cli.help import examples as examples
from animate124.cli.help import flag as flag
from animate124.config.presets import PRESETS
from animate124.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    Animate124Error,
    ConfigError,
    oom_guard,
)
from animate124.stages.spec import STAGE_NAMES, TRAINING_STAGES


# --- option types ------------------------------------------------------------------------------
def parse_device(value: str) -> str:
    """auto, cpu, cuda or cuda:N (whether the device exists is checked when the command runs)."""
    from animate124.engine.runtime import check_device_name

    try:
        check_device_name(value)
    except ConfigError:
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    return value


def parse_project_dir(value: str) -> Path:
    """``-p DIR``: an empty value is refused (it would make the working directory a project)."""
    if not value.strip():
        raise typer.BadParameter("is empty; name a project directory, e.g. -p runs/panda")
    from animate124.config.validation import check_text

    try:
        check_text("-p", value)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message.removeprefix("-p: ")) from None
    return Path(value)


PresetName = Literal[tuple(PRESETS)]
StageName = Literal[STAGE_NAMES]
TrainedStageName = Literal[TRAINING_STAGES]


# --- the options, declared once ----------------------------------------------------------------
ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        parser=parse_project_dir,
        metavar="DIR",
        help="Project directory. Default: the working directory if it is a project, else the only "
        "project under ./runs (of several, the newest), else the last project a run started on; the "
        "command prints which one and why.",
        show_default=False,
    ),
]
SourceStageOpt = Annotated[
    TrainedStageName | None,
    typer.Option(
        "--stage",
        help="The trained stage to work on (default: the newest finished one: refine, else dynamic, "
        "else static).",
        show_default=False,
    ),
]
ImageProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        parser=parse_project_dir,
        metavar="DIR",
        help="Project directory, created if missing (default: ./runs/<image name>).",
        show_default=False,
    ),
]

#: name -> (annotation, default) of every common option; @guarded picks from these.
COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "preset": (
        Annotated[
            PresetName,
            typer.Option(
                "--preset",
                help="Settings preset: paper = the paper's settings; fast = about a third of the steps; "
                "low-vram = the memory knobs turned down; tiny = tiny random models, runs on a CPU in "
                "seconds (tests, smoke runs).",
            ),
        ],
        "paper",
    ),
    "output_preset": (
        Annotated[
            PresetName | None,
            typer.Option(
                "--preset",
                help="Settings preset (paper, fast, low-vram, tiny). Default: the config the stage was "
                "trained with (config/<stage>.yaml in the project), so a tiny project renders at tiny "
                "sizes.",
                show_default=False,
            ),
        ],
        None,
    ),
    "config_file": (
        Annotated[
            Path | None,
            typer.Option("--config", "-c", help="YAML file of config overrides.", show_default=False),
        ],
        None,
    ),
    "sets": (
        Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                "-s",
                help="Override one config field, e.g. --set static.iters=2000 (repeatable; "
                "`animate124 config fields` lists them).",
                show_default=False,
            ),
        ],
        None,
    ),
    "device": (
        Annotated[
            str | None,
            typer.Option(
                "--device",
                metavar="[auto|cpu|cuda|cuda:N]",
                parser=parse_device,
                help="Where to run: auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or "
                "cuda:N. Checked before anything is written.",
                show_default=False,
            ),
        ],
        None,
    ),
    "gpus": (
        Annotated[
            int | None,
            typer.Option(
                "--gpus",
                min=1,
                metavar="N",
                help="Train on the first N CUDA GPUs of this machine (run.devices=cuda:0,...): the field on "
                "the first, the priors spread over all; the same results. Checked before anything is written.",
                show_default=False,
            ),
        ],
        None,
    ),
    "cache_dir": (
        Annotated[
            Path | None,
            typer.Option(
                "--cache-dir",
                help="Model cache directory (default: $ANIMATE124_CACHE, else the user cache).",
                show_default=False,
            ),
        ],
        None,
    ),
    "force": (
        Annotated[bool, flag("--force", help="Run again even when up to date.")],
        False,
    ),
    "quiet": (
        Annotated[bool, flag("--quiet", "-q", help="No progress bars or details: only the final line.")],
        False,
    ),
    "json_output": (
        Annotated[
            bool,
            flag(
                "--json",
                help="Print one JSON summary object on stdout (project, stages with status, skipped, "
                "seconds and artifacts, exit_code) and nothing else; messages go to stderr.",
            ),
        ],
        False,
    ),
    "verbose": (
        Annotated[
            bool,
            flag(
                "--verbose",
                "-v",
                help="Also show the libraries' warnings (transformers, diffusers, torch) and more details.",
            ),
        ],
        False,
    ),
    "debug": (Annotated[bool, flag("--debug", help="Show full tracebacks.")], False),
}
#: The common options of a command that runs stages.
STAGE_OPTIONS = ("preset", "config_file", "sets", "device", "cache_dir", "force", "quiet", "json_output")
#: The common options of a training command (static, dynamic, refine) and run-all: also --gpus.
TRAINING_OPTIONS = (
    "preset",
    "config_file",
    "sets",
    "device",
    "gpus",
    "cache_dir",
    "force",
    "quiet",
    "json_output",
)
#: The common options of an output command (render, export, evaluate): the trained stage's config by default.
OUTPUT_OPTIONS = ("output_preset", "config_file", "sets", "device", "quiet", "json_output")


@dataclass(frozen=True)
class Common:
    """The values of the common options a command was given."""

    preset: str = "paper"
    output_preset: str | None = None
    config_file: Path | None = None
    sets: tuple[str, ...] = ()
    device: str | None = None
    gpus: int | None = None
    cache_dir: Path | None = None
    force: bool = False
    quiet: bool = False
    json_output: bool = False
    verbose: bool = False
    debug: bool = False


def build_config(
    common: Common, options: dict[str, Any] | None = None, *, check_device: bool = True
) -> Any:  # -> Config
    """Resolve the config (schema < preset < --config < the command's ``options`` < --set).

    ``check_device``: also check that the configured device exists on this machine (imports torch),
    so that a bad ``--device`` is refused before a project is created or changed.
    """
    from animate124.config.loader import resolve_config

    opts = _with_device_and_cache(common, options)
    cfg = resolve_config(common.preset, common.config_file, opts, list(common.sets))
    if check_device:
        from animate124.engine.runtime import resolve_devices

        resolve_devices(cfg)
    return cfg


def build_output_config(
    common: Common, project: Any, stage: str, options: dict[str, Any] | None = None
) -> Any:  # -> Config
    """The config of an output command on ``stage`` of ``project``: without ``--preset`` the config
    that stage was trained with, else the preset; then --config < the command's ``options`` < --set.
    The configured device is checked (a bad one is refused before any work)."""
    from animate124.engine.runtime import resolve_device
    from animate124.stages.outputs import project_config

    opts = _with_device_and_cache(common, options)
    cfg = project_config(project, stage, common.output_preset, common.config_file, opts, common.sets)
    resolve_device(cfg.run.device)
    return cfg


def _with_device_and_cache(common: Common, options: dict[str, Any] | None) -> dict[str, Any]:
    from animate124.config.loader import deep_merge

    opts: dict[str, Any] = dict(options or {})
    if common.device:
        opts = deep_merge(opts, {"run": {"device": common.device}})
    if common.gpus:
        devices = ",".join(f"cuda:{i}" for i in range(common.gpus))
        opts = deep_merge(opts, {"run": {"devices": devices}})
    if common.cache_dir:
        opts = deep_merge(opts, {"models": {"cache_dir": str(common.cache_dir)}})
    return opts


# --- the session: output and the run summary ---------------------------------------------------
@dataclass
class Session:
    """What a command body receives: the common options, output helpers and the run summary.

    Human output goes to stdout (stderr under ``--json``, whose stdout holds only the summary);
    ``--quiet`` keeps only the final line. Errors and warnings always go to stderr.
    """

    command: str
    opts: Common
    project: Path | None = None
    results: list[Any] = field(default_factory=list)
    running: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stdout: Any = None  # the real stdout (under --json the command's prints go to stderr): for JSON lines
    #: the project's manifest as it was when the command chose the project (None: no manifest yet); an
    #: error that would exit 2 ("nothing was changed") exits 1 when the manifest has changed since
    manifest_before: bytes | None = None

    # project --------------------------------------------------------------------------------------
    def use_project(self, project: Any, how: str | None = None) -> None:
        """Work on ``project`` (a :class:`~animate124.project.Project`) and say which one and why: one line,
        ``project: runs/toy (the only project under ./runs)`` (hidden by --quiet; the final line names it)."""
        from rich.markup import escape

        self.project = project.root
        self.manifest_before = _read_bytes(project.manifest_path)
        why = f" ({how})" if how and how != "-p" else ""
        self.say(f"project: {escape(display_path(project.root))}{escape(why)}")

    def project_changed(self) -> bool:
        """Whether the project's manifest differs from when the command chose the project."""
        if self.project is None:
            return False
        return _read_bytes(self.project / "manifest.json") != self.manifest_before

    # output ---------------------------------------------------------------------------------------
    def console(self, stderr: bool = False):
        from rich.console import Console

        return Console(stderr=stderr or self.opts.json_output, highlight=False, soft_wrap=True)

    def say(self, text: str) -> None:
        """A detail line (hidden by --quiet)."""
        if not self.opts.quiet:
            self.console().print(text)

    def show(self, text: str, **kwargs: Any) -> None:
        """The command's own output (tables, YAML, paths): printed even with --quiet."""
        self.console().print(text, **kwargs)

    def warn(self, text: str) -> None:
        from rich.markup import escape

        self.console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(text)}")

    @property
    def show_progress(self) -> bool:
        return not self.opts.quiet

    # config ---------------------------------------------------------------------------------------
    def config(self, options: dict[str, Any] | None = None, *, check_device: bool = True) -> Any:
        return build_config(self.opts, options, check_device=check_device)

    def output_config(self, project: Any, stage: str, options: dict[str, Any] | None = None) -> Any:
        """An output command's config (see :func:`build_output_config`)."""
        return build_output_config(self.opts, project, stage, options)

    # stages ---------------------------------------------------------------------------------------
    def stage_started(self, stage: Any) -> None:
        self.running = getattr(stage, "name", str(stage))

    def stage_done(self, result: Any) -> None:
        self.running = None
        self.results.append(result)
        if self.opts.quiet:
            return
        from rich.markup import escape

        c = self.console()
        if result.skipped:
            c.print(f"[green]✓[/green] {result.stage}: up to date, skipped (--force runs it again)")
            return
        extra = " (resumed)" if result.resumed else ""
        c.print(f"[green]✓[/green] {result.stage} done in {result.seconds:.1f} s{extra}")
        for k, v in result.artifacts.items():
            c.print(f"    {k}: {escape(display_path(Path(v)))}")

    def summary(self, exit_code: int, error: BaseException | None = None) -> dict[str, Any]:
        stages = [
            {
                "stage": r.stage,
                "status": "up-to-date" if r.skipped else "done",
                "skipped": bool(r.skipped),
                "resumed": bool(getattr(r, "resumed", False)),
                "seconds": float(r.seconds),
                "artifacts": {k: str(v) for k, v in r.artifacts.items()},
            }
            for r in self.results
        ]
        if self.running is not None:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            stages.append(
                {"stage": self.running, "status": status, "skipped": False, "resumed": False,
                 "seconds": None, "artifacts": {}}
            )  # fmt: skip
        err = None
        if error is not None:
            err = {
                "type": type(error).__name__,
                "message": getattr(error, "message", None) or str(error) or type(error).__name__,
                "hint": getattr(error, "hint", None),
            }
        return {
            "command": self.command,
            "project": str(self.project) if self.project else None,
            **self.extra,
            "stages": stages,
            "exit_code": exit_code,
            "error": err,
        }

    def final_line(self) -> None:
        """One line for the whole command (the only one with --quiet; after several stages otherwise)."""
        from rich.markup import escape

        if not self.results or (len(self.results) == 1 and not self.opts.quiet):
            return
        parts = [f"{r.stage} {'up to date' if r.skipped else f'{r.seconds:.1f} s'}" for r in self.results]
        where = f" {escape(display_path(self.project))}" if self.project else ""
        report = self.extra.get("report")
        report = f"; report: {escape(display_path(Path(report)))}" if report else ""
        if all(r.skipped for r in self.results):
            self.console().print(f"[green]✓[/green] up to date:{where} ({', '.join(parts)}){report}")
        else:
            self.console().print(f"[green]✓[/green] done:{where} ({', '.join(parts)}){report}")


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it (``runs/toy``), else absolute."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- @guarded ----------------------------------------------------------------------------------
def printable(text: str) -> str:
    """``text`` with anything a terminal cannot show (bytes that were not UTF-8) as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def interrupted_line(exc: BaseException, force: bool) -> str:
    """What to tell the user after Ctrl-C or SIGTERM: what stopped the run and the command that resumes."""
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    again = (
        "run the same command again without --force to resume (with --force it starts over)"
        if force
        else "run the same command again to resume"
    )
    return f"[yellow]{what}[/yellow]: progress is saved; {again}."


def _error_lines(exc: BaseException) -> tuple[str, str | None, int]:
    """(message, hint, exit code) for anything a command body raised."""
    if isinstance(exc, Animate124Error):
        return exc.message, exc.hint, exc.exit_code
    if isinstance(exc, OSError):  # the file system said no: say where and why, not a traceback
        what = exc.strerror or str(exc)
        where = f": {exc.filename}" if exc.filename else ""
        return f"{what}{where}", "check the path, its permissions and the free disk space", EXIT_RUNTIME
    return (
        f"internal error: {type(exc).__name__}: {exc}",
        "rerun with --debug for the traceback and report it",
        EXIT_RUNTIME,
    )


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[Any]:
    """Under --json, everything printed while the command runs goes to stderr; yields the real stdout."""
    real = sys.stdout
    if not enabled:
        yield real
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def _run(session: Session, body: Callable[[], Any]) -> Any:
    from rich.markup import escape

    from animate124.cli.logs import configure_logging
    from animate124.engine.interrupt import terminate_like_interrupt

    opts = session.opts
    configure_logging(verbose=opts.verbose, debug=opts.debug)
    code, error = 0, None
    with _stdout_to_stderr(opts.json_output) as stdout:
        session.stdout = stdout
        try:
            with terminate_like_interrupt(), oom_guard(f"`animate124 {session.command}`"):
                out = body()
        except typer.Exit as exc:
            code = exc.exit_code
            raise
        except (KeyboardInterrupt, Exception) as exc:
            error = exc
            err = session.console(stderr=True)
            if isinstance(exc, KeyboardInterrupt):  # Ctrl-C (130) or SIGTERM (143)
                code = 128 + getattr(exc, "signum", EXIT_INTERRUPTED - 128)
                err.print(interrupted_line(exc, opts.force))
            else:
                message, hint, code = _error_lines(exc)
                if code == EXIT_USAGE and session.project_changed():
                    code = EXIT_RUNTIME  # exit 2 promises that nothing was changed
                if opts.debug:
                    raise
                err.print(f"[bold red]error:[/bold red] {escape(printable(message))}")
                if hint:
                    err.print(f"[yellow]hint:[/yellow] {escape(printable(hint))}")
            raise typer.Exit(code) from None
        finally:
            if opts.json_output:
                stdout.write(json.dumps(session.summary(code, error)) + "\n")
                stdout.flush()
    if not opts.json_output:
        session.final_line()
    return out


def guarded(
    *names: str, session_type: type[Session] = Session
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a command from ``fn(session, ...)``: add the common options ``names`` (and ``--debug``)
    to its parameters, build the :class:`Session` (``session_type``: a subclass with its own summary),
    and map errors to messages and exit codes:
    :class:`~animate124.errors.Animate124Error` -> its ``exit_code`` (2 usage/config, 1 runtime),
    CUDA out of memory -> 1 with the memory settings, KeyboardInterrupt -> 130, anything else -> 1.
    """
    chosen = (*names, "verbose", "debug")
    unknown = [n for n in chosen if n not in COMMON_OPTIONS]
    if unknown:
        raise ValueError(f"unknown common options: {unknown}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = list(sig.parameters.values())[1:]  # the first parameter is the Session
        clash = [p.name for p in own if p.name in COMMON_OPTIONS]
        if clash:
            raise ValueError(f"{fn.__name__}: parameters {clash} shadow common options")
        common_params = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
            for n in chosen
            for ann, default in [COMMON_OPTIONS[n]]
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in chosen}
            values["sets"] = tuple(values.get("sets") or ())
            session = session_type(command=fn.__name__.replace("_", "-"), opts=Common(**values))
            return _run(session, lambda: fn(session, **kwargs))

        command.__signature__ = sig.replace(parameters=[*own, *common_params])
        command.__annotations__ = {p.name: p.annotation for p in (*own, *common_params)}
        return command

    return decorate
