"""How the commands' help reads: the exit-code epilog, examples, and booleans shown as flags (no torch here)."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

EXIT_CODES_HELP = (
    "[bold]Exit codes[/bold]: 0 success; 1 runtime error (a stage failed, a model is missing, out of "
    "memory); 2 usage or config error (bad option, image or prompt; nothing was changed); "
    "130 interrupted by Ctrl-C, 143 by SIGTERM (progress is saved: run the same command again, without "
    "--force, to resume)."
)


def flag(*decls: str, help: str, **kwargs: Any) -> Any:
    """A boolean option shown as a flag: ``--orbit``, not ``--orbit <bool>`` (Typer prints the type of every
    option unless its metavar is set, and a flag takes no value)."""
    return typer.Option(*decls, help=help, metavar="", **kwargs)


class FlagHelpCommand(TyperCommand):
    """A command whose own ``--help`` is shown as a flag too (Typer gives it a ``<bool>`` type column)."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt


class FlagHelpGroup(TyperGroup):
    """A command group whose ``--help`` is shown as a flag (see :class:`FlagHelpCommand`)."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt


def examples(*lines: str) -> str:
    """A command's epilog: its examples, one per line."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  [cyan]{line}[/cyan]" for line in lines)
