"""``animate124 config ...``: the resolved configuration, every field, the presets."""

from __future__ import annotations

import typer

from animate124.cli.common import FlagHelpCommand, FlagHelpGroup, Session, examples, guarded

config_app = typer.Typer(
    cls=FlagHelpGroup,
    help="Show configuration fields and presets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@config_app.command(
    "show",
    cls=FlagHelpCommand,
    epilog=examples("animate124 config show --preset fast", "animate124 config show -s static.iters=100"),
)
@guarded("preset", "config_file", "sets")
def config_show(s: Session) -> None:
    """Print the resolved configuration as YAML."""
    from animate124.config.loader import dump_yaml

    s.show(dump_yaml(s.config(check_device=False)), markup=False)


@config_app.command("fields", cls=FlagHelpCommand, epilog=examples("animate124 config fields"))
@guarded()
def config_fields(s: Session) -> None:
    """Every config field with its type, default (the paper's value) and help."""
    from rich.table import Table

    from animate124.config.loader import describe_fields

    t = Table()
    for col in ("field", "type", "default", "help"):
        t.add_column(col)
    for path, tp, default, help_ in describe_fields():
        t.add_row(path, tp, repr(default), help_)
    s.show(t)


@config_app.command("presets", cls=FlagHelpCommand, epilog=examples("animate124 config presets"))
@guarded()
def config_presets(s: Session) -> None:
    """The presets with their one-line descriptions."""
    from animate124.config.presets import preset_descriptions

    for name, desc in preset_descriptions().items():
        s.show(f"[bold]{name}[/bold]: {desc}")
