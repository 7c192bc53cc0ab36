"""``animate124 models ...``: list, download, locate and verify the pretrained models."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from animate124.cli.common import (
    Common,
    FlagHelpCommand,
    FlagHelpGroup,
    Session,
    build_config,
    examples,
    flag,
    guarded,
)
from animate124.errors import ConfigError, DownloadError

models_app = typer.Typer(
    cls=FlagHelpGroup,
    help="List, download, locate and verify the pretrained models.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

RoleArg = Annotated[
    str,
    typer.Argument(
        help="Role: sd, zero123, video, controlnet, depth, matting, segment or clip "
        "(`animate124 models list` shows each one's model)."
    ),
]
AltOpt = Annotated[
    str | None,
    typer.Option(
        "--alternative",
        help="An alternative model of the role, e.g. zeroscope for video.",
        show_default=False,
    ),
]


def store_for(s: Session, offline: bool = True, tiny: bool = False):
    """The model store of the session's --cache-dir (config defaults otherwise)."""
    from animate124.engine.runtime import model_store

    options: dict[str, Any] = {"models": {"offline": offline, "tiny": tiny}}
    if s.opts.cache_dir:
        options["models"]["cache_dir"] = str(s.opts.cache_dir)
    return model_store(build_config(Common(), options, check_device=False))


@models_app.command(
    "list",
    cls=FlagHelpCommand,
    epilog=examples("animate124 models list", "animate124 models list --cache-dir /data/models"),
)
@guarded("cache_dir")
def models_list(s: Session, tiny: Annotated[bool, flag(help="Show the tiny test cache.")] = False) -> None:
    """Every model role with its repo id, licence, whether it is cached and its size."""
    from rich.table import Table

    store = store_for(s, tiny=tiny)
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
    s.show(table)
    s.show("[yellow]ModelScope and Zeroscope weights are CC-BY-NC-4.0: non-commercial use only.[/yellow]")


@models_app.command(
    "download",
    cls=FlagHelpCommand,
    epilog=examples(
        "animate124 models download sd",
        "animate124 models download all",
        "animate124 models download video --alternative zeroscope",
    ),
)
@guarded("cache_dir", "quiet")
def models_download(
    s: Session,
    role: RoleArg,
    alternative: AltOpt = None,
    offline: Annotated[bool, flag("--offline", help="Fail at once instead of using the network.")] = False,
) -> None:
    """Download a role's files (only the ones used) into the cache; resumable, verified afterwards.

    `all` downloads every role. Several processes may download into one cache at once: each role is
    fetched by one of them while the others wait.
    """
    from animate124.models.registry import ROLES

    store = store_for(s, offline=offline)
    roles = list(ROLES) if role == "all" else [role]
    for r in roles:
        if r not in ROLES:
            raise ConfigError(f"unknown model role {r!r}", hint=f"choose one of: {', '.join(ROLES)}, all")
        path = store.download(r, progress=s.show_progress, alternative=alternative)
        problems = store.verify(r, alternative=alternative)
        if problems:
            raise DownloadError(f"{r}: downloaded files did not verify: {'; '.join(problems)}")
        s.show(f"[green]✓[/green] {r}: {path}")


@models_app.command("path", cls=FlagHelpCommand, epilog=examples("animate124 models path sd"))
@guarded("cache_dir")
def models_path(s: Session, role: RoleArg, alternative: AltOpt = None) -> None:
    """Print the local directory of a cached role (an error if it is not cached)."""
    s.show(str(store_for(s).resolve(role, alternative=alternative)), markup=False)


@models_app.command(
    "verify",
    cls=FlagHelpCommand,
    epilog=examples(
        "animate124 models verify", "animate124 models verify zero123", "animate124 models verify --tiny"
    ),
)
@guarded("cache_dir")
def models_verify(
    s: Session,
    role: Annotated[str | None, typer.Argument(help="Role to check (default: every cached role).")] = None,
    alternative: AltOpt = None,
    tiny: Annotated[bool, flag(help="Check the tiny test cache (the tiny preset's models).")] = False,
) -> None:
    """Check the cached files of a role (or of every cached role): required files present and readable,
    sizes against their headers, and sha256 (of every LFS blob, and the registry's expected hashes of the
    pinned files).

    Exits with 1 when a role has a problem.
    """
    from animate124.models.registry import ROLES

    if role is not None and role not in ROLES:
        raise ConfigError(f"unknown model role {role!r}", hint=f"choose one of: {', '.join(ROLES)}")
    store = store_for(s, tiny=tiny)
    roles = [role] if role else [r for r in ROLES if store.is_cached(r)]
    bad = 0
    for r in roles:
        problems = store.verify(r, alternative=alternative)
        if problems:
            bad += 1
            s.show(f"[red]✗[/red] {r}: " + "; ".join(problems))
        else:
            s.show(f"[green]✓[/green] {r}")
    if not roles:
        s.show("no cached models")
    if bad:
        raise typer.Exit(1)
