"""The ``animate124`` command (Typer + rich): the app, its sub-commands and ``main``.

The CLI parses a few options, builds the config, calls a stage and maps errors to messages and exit
codes (see :mod:`animate124.cli.common`). No training logic lives here. torch, diffusers and
transformers are imported lazily inside the commands so that ``animate124 --help`` is fast.

Modules: ``common`` (common options, config builder, ``@guarded``), ``stages`` (the stage commands and
``run-all``), ``outputs`` (render, export, evaluate, report), ``models``, ``config_cmd``, ``doctor``.
"""

from __future__ import annotations

import os
from typing import Annotated

# CUDA memory in segments that grow and shrink instead of fixed blocks: the stages' render and VAE tensors
# change size every step, and fixed blocks left the caching allocator holding 3x the memory in use (H200,
# dynamic stage: 36.0 GiB reserved for 12.0 GiB allocated; 12.9 GiB with this, at the same speed;
# BENCHMARKS.md §8). Set before torch starts CUDA; a value the user set (either name) wins.
if "PYTORCH_ALLOC_CONF" not in os.environ and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"

import typer

from animate124 import __version__
from animate124.cli import batch, outputs, stages
from animate124.cli.common import EXIT_CODES_HELP, FlagHelpCommand, FlagHelpGroup, examples, flag
from animate124.cli.config_cmd import config_app
from animate124.cli.doctor import DOCTOR_EPILOG, doctor
from animate124.cli.models import models_app
from animate124.stages.spec import STAGE_NAMES


class _Commands(FlagHelpGroup):
    """Lists the commands in the order a user meets them: the stages and run-all, the output commands
    (render, export, evaluate, report), then the tools (models, config, doctor)."""

    TOOLS = ("models", "config", "doctor")

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in names if n not in self.TOOLS] + [n for n in self.TOOLS if n in names]


app = typer.Typer(
    name="animate124",
    cls=_Commands,
    help=(
        "Animate one image into a 4D dynamic scene from a text motion prompt (Animate124).\n\n"
        f"Stages share one project directory: {' -> '.join(STAGE_NAMES)}. "
        "`run-all IMAGE PROMPT` runs them all (in ./runs/<image name> by default) and resumes after an "
        "interruption, renders the orbit video and writes report.html; `render`, `export`, `evaluate` and "
        "`report` then find that project: -p, else the working directory if it is a project, else the only "
        "(or newest) project under ./runs, else the last project a run started on; each says which. "
        "Nothing asks questions: every command can run unattended in a shell loop."
    ),
    epilog=examples(
        'animate124 run-all image.png "a panda is dancing"',
        "animate124 render --orbit",
        'animate124 run-all toy.png "a toy is spinning" --preset tiny   (CPU smoke run, no downloads)',
        "animate124 render --views 4 --depth --normal",
        "animate124 export",
        "animate124 evaluate",
        'for f in photos/*.png; do animate124 run-all "$f" "a toy is spinning" --quiet --json >> results.jsonl; done',
        "animate124 models list",
        "animate124 doctor",
    )
    + "\n\n"
    + EXIT_CODES_HELP,
    rich_markup_mode="rich",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stages.register(app)
batch.register(app)
outputs.register(app)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.command("doctor", cls=FlagHelpCommand, epilog=DOCTOR_EPILOG)(doctor)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"animate124 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        flag("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Animate one image into a 4D dynamic scene from a text motion prompt."""


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
