"""``animate124 batch``: many assets, one ``run-all`` each, as Ray tasks (see :mod:`animate124.batch`).

This module parses the options, builds each row's config the way ``run-all`` builds its own, shows the
batch as a live table (asset, stage, step/total, it/s, elapsed, state), prints one JSON line per asset
under ``--json`` and maps the outcome to the exit code: 0 when every asset finished, 3 when some did not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from animate124.cli.common import (
    STAGE_OPTIONS,
    FlagHelpCommand,
    Session,
    StageName,
    build_config,
    examples,
    flag,
    guarded,
)
from animate124.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, Animate124Error

if TYPE_CHECKING:
    from animate124.batch.driver import RayStart

EXIT_HELP = (
    "[bold]Exit codes[/bold]: 0 every asset finished (done or up to date); 3 some asset failed, was "
    "invalid or was not started (the others finished; batch.json and the table say which and why); "
    "1 the batch itself failed (Ray, models, the output folder); 2 usage error (bad option, jobs file, "
    "or Ray not installed), nothing started; 130 interrupted by Ctrl-C, 143 by SIGTERM (the runs "
    "checkpointed: run the same command again to resume)."
)


class BatchSession(Session):
    """A Session whose ``--json`` summary is the batch's (``batch.json``), and which prints its own last line."""

    data: dict[str, Any] | None = None

    def summary(self, exit_code: int, error: BaseException | None = None) -> dict[str, Any]:
        err = super().summary(exit_code, error)["error"]
        base = self.data or {"command": "batch", "counts": {}, "assets": []}
        return {**base, "exit_code": exit_code, "error": err}

    def final_line(self) -> None:
        return None

    def emit(self, record: dict[str, Any]) -> None:
        """One asset's JSON line on stdout (only with --json)."""
        if self.opts.json_output and self.stdout is not None:
            self.stdout.write(json.dumps(record) + "\n")
            self.stdout.flush()


# --- the live table --------------------------------------------------------------------------------
def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


_STYLE = {
    "done": "green",
    "up-to-date": "green",
    "running": "cyan",
    "queued": "dim",
    "failed": "red",
    "invalid": "red",
    "interrupted": "yellow",
    "not-started": "yellow",
}


class BatchTable:
    """The batch's live table: running assets first, then queued, then finished (newest first); as many
    rows as the terminal has room for, and a caption with the counts."""

    def __init__(self, console: Any, names: Sequence[str], finished: dict[str, dict[str, Any]]) -> None:
        self.console = console
        self.names = list(names)
        self.finished = dict(finished)  # asset -> summary record
        self.order: list[str] = list(finished)
        self.progress: dict[str, Any] = {}

    def update(self, progress: Sequence[Any]) -> None:
        self.progress = {p.asset: p for p in progress}

    def result(self, name: str, record: dict[str, Any]) -> None:
        self.finished[name] = record
        self.order.append(name)
        self.progress.pop(name, None)

    def __rich__(self) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for col, justify in (("asset", "left"), ("stage", "left"), ("step", "right"), ("it/s", "right"),
                             ("elapsed", "right"), ("state", "left")):  # fmt: skip
            table.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis")
        running = [p for p in self.progress.values() if p.state == "running"]
        queued = [n for n in self.names if n not in self.finished and n not in {p.asset for p in running}]
        lines: list[tuple[str, ...]] = []
        for p in running:
            step = f"{p.step or 0}/{p.total}" if p.total else ""
            rate = f"{p.it_s:.2f}" if p.it_s else ""
            lines.append((p.asset, p.stage or "", step, rate, _clock(p.elapsed), "running"))
        lines += [(n, "", "", "", "", "queued") for n in queued]
        for n in reversed(self.order):
            r = self.finished[n]
            last = r.get("stage") or (r["stages"][-1]["stage"] if r.get("stages") else "")
            lines.append((n, last, "", "", _clock(r.get("seconds")) if r.get("ran") else "", r["status"]))
        room = max(5, (self.console.height or 24) - 6)
        for line in lines[:room]:
            state = line[-1]
            table.add_row(*(escape(x) for x in line[:-1]), f"[{_STYLE.get(state, '')}]{state}[/]")
        counts: dict[str, int] = {"running": len(running), "queued": len(queued)}
        for r in self.finished.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        more = f" ({len(lines) - room} more rows)" if len(lines) > room else ""
        table.caption = ", ".join(f"{v} {k}" for k, v in counts.items() if v) + more
        return table


# --- the command ---------------------------------------------------------------------------------------
@guarded(*[o for o in STAGE_OPTIONS if o != "force"], session_type=BatchSession)
def batch(
    s: BatchSession,
    jobs: Annotated[
        Path,
        typer.Argument(
            help="A CSV or JSONL jobs file, one row per asset (columns: image, prompt; optional subject, "
            "static_prompt, refine_prompt, name, set), or a folder of images (with --prompt or --prompts).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The batch's folder: one project per row (<out>/<name>), batch.json and index.html. "
            "On a Ray cluster it must be a path every node sees (a shared file system), as must the images.",
        ),
    ] = Path("runs"),
    prompt: Annotated[
        str | None,
        typer.Option(
            help="The motion prompt of every image of a folder (and of rows without one).", show_default=False
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(help="For a folder of images: a file of '<image>: <prompt>' lines.", show_default=False),
    ] = None,
    until: Annotated[
        StageName | None,
        typer.Option(
            help="Stop each run after this stage (default: render, then report.html).", show_default=False
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Run on an existing Ray cluster: auto (the cluster this machine belongs to) or "
            "ray://HOST:10001 (Ray Client; pip install 'ray\\[client]'). Default: $RAY_ADDRESS, else a new Ray "
            "instance on this machine with all its CPUs and GPUs (auto joins one started with `ray start "
            "--head`, e.g. for several batches at once). Every node needs animate124 installed and the models "
            "(a --cache-dir every node sees, or `animate124 models download` on each).",
            show_default=False,
        ),
    ] = None,
    gpus_per_run: Annotated[
        float | None,
        typer.Option(
            help="GPUs each run asks Ray for (default: 1 where the cluster has GPUs, else 0: the runs use "
            "the CPU). 0.5 puts two runs on one GPU (mind its memory).",
            show_default=False,
        ),
    ] = None,
    cpus_per_run: Annotated[
        float | None,
        typer.Option(
            help="CPUs (threads) each run asks Ray for (default: a GPU run's share of the CPUs; 1 for a "
            "CPU run).",
            show_default=False,
        ),
    ] = None,
    retry_failed: Annotated[
        bool, flag("--retry-failed", help="Run again the assets that failed in an earlier batch.")
    ] = False,
) -> None:
    from animate124.batch.driver import require_ray, start_ray_beside

    require_ray()  # before anything: a clear usage error that says how to install it
    from animate124.batch.jobs import read_rows
    from animate124.batch.plan import RUN, fetch_models, plan_assets
    from animate124.batch.summary import batch_lock, likely_to_run
    from animate124.project import fs_error
    from animate124.stages.spec import stage_range

    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, as `ray` reads it
    rows = read_rows(jobs, prompt=prompt, prompts_file=prompts)
    stage_range(None, until)
    common = s.opts
    if common.cache_dir:  # the runs may start in another working directory (or on another node)
        common = dataclasses.replace(common, cache_dir=common.cache_dir.expanduser().resolve())

    def make_config(options: dict[str, Any], row_sets: Sequence[str]) -> Any:
        opts = dataclasses.replace(common, sets=(*common.sets, *row_sets))
        return build_config(opts, options, check_device=False)

    # bad options: exit 2, nothing started. The device check (it imports torch, seconds on a GPU host) runs
    # with the rows' checks below, beside Ray's start: a bad --device still exits 2 before any run starts.
    base = build_config(common, None, check_device=False)
    out = out.expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, out, "create the batch folder") from exc
    with batch_lock(out), contextlib.ExitStack() as stack:

        def plan() -> list[Any]:
            if address is None:  # on a cluster the device is each node's, checked by its task's pre-flight
                from animate124.engine.runtime import resolve_devices

                resolve_devices(base)
            return plan_assets(rows, out, make_config, until=until, retry_failed=retry_failed)

        early = None  # Ray, started while the rows are checked when some row will likely run
        if likely_to_run(rows, out, retry_failed=retry_failed):
            assets, early = start_ray_beside(plan, address)
            stack.callback(early.close)  # unless _run takes it over: no task, no Ray left running
        else:
            assets = plan()
        summary_of: dict[str, dict[str, Any]] = {}
        try:
            fetched = fetch_models(assets, until, progress=s.show_progress)
        except BaseException as exc:  # offline, say: no run starts, and batch.json says why
            s.data = _finish(s, jobs, out, assets, summary_of, _code_of(exc))
            raise
        if fetched:  # checked again: the prompts are now counted with the fetched models' tokenizers
            s.say(f"models fetched: {', '.join(fetched)}")
            assets = plan_assets(rows, out, make_config, until=until, retry_failed=retry_failed)
        _report_plan(s, assets)
        from animate124.batch.summary import asset_record

        for a in assets:
            if a.action != RUN:
                summary_of[a.name] = asset_record(a, None)
                s.emit(summary_of[a.name])
        to_run = [a for a in assets if a.action == RUN]
        try:
            stopped = (
                _run(s, to_run, summary_of, base, until, address, gpus_per_run, cpus_per_run, early)
                if to_run
                else None
            )
        except BaseException as exc:  # the summary still says what happened, with the command's code
            s.data = _finish(s, jobs, out, assets, summary_of, _code_of(exc))
            raise
        s.data = _finish(s, jobs, out, assets, summary_of, _code_of(stopped) if stopped else None)
    if stopped:  # the runs have checkpointed: the CLI says so and exits 130 (Ctrl-C) or 143 (SIGTERM)
        raise stopped
    if s.data["exit_code"]:
        raise typer.Exit(s.data["exit_code"])


def _code_of(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (engine.interrupt.Interrupted): 128 + signal
        return 128 + getattr(exc, "signum", EXIT_INTERRUPTED - 128)
    if isinstance(exc, typer.Exit):
        return exc.exit_code
    return exc.exit_code if isinstance(exc, Animate124Error) else EXIT_RUNTIME


def _report_plan(s: BatchSession, assets: Sequence[Any]) -> None:
    """What the batch will do, before it starts: counts, and one line per row that will not run."""
    from rich.markup import escape

    from animate124.batch.plan import RUN

    n = {k: sum(a.action == k for a in assets) for k in (RUN, "up-to-date", "failed", "invalid")}
    s.say(
        f"{len(assets)} assets: {n[RUN]} to run, {n['up-to-date']} up to date, "
        f"{n['failed']} failed earlier, {n['invalid']} invalid"
    )
    for a in assets:
        if a.action in ("failed", "invalid") and a.error:
            how = "failed earlier (--retry-failed runs it again)" if a.action == "failed" else "invalid"
            s.warn(f"{a.name} (row {a.row.number}) {how}: {a.error['message']}")
        for line in a.decisions:
            s.say(escape(f"{a.name}: {line}"))
    if not n[RUN]:
        s.say(escape("nothing to run: every asset is up to date or cannot run; no work was done"))


def _run(
    s: BatchSession,
    to_run: Sequence[Any],
    summary_of: dict[str, dict[str, Any]],
    base: Any,
    until: str | None,
    address: str | None,
    gpus_per_run: float | None,
    cpus_per_run: float | None,
    early: RayStart | None = None,
) -> KeyboardInterrupt | None:
    """Start Ray (or take the one ``early`` started while the rows were checked), run the tasks with the
    live table; returns the Ctrl-C (or SIGTERM) that stopped it, after the runs checkpointed (see
    :func:`animate124.batch.driver.run_tasks`), or None."""
    from animate124.batch.driver import placement, run_tasks, start_ray
    from animate124.batch.summary import asset_record

    t0 = time.time()
    if early is not None:
        (ray, started), t0 = early.take(), t0 - early.seconds
    else:
        ray, started = start_ray(address)
    try:
        resources = ray.cluster_resources()
        where = placement(base.run.device, gpus_per_run, cpus_per_run, resources, local=address is None)
        s.say(
            f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs (started in "
            f"{time.time() - t0:.1f} s{', while the rows were checked' if early else ''}); each run: "
            f"{where.num_gpus:g} GPU, {where.num_cpus:g} CPU, device {where.device}"
        )
        batch_id = uuid.uuid4().hex
        jobs = [(a, a.job(until, where.device, max(1, int(where.num_cpus)), batch_id)) for a in to_run]
        table = BatchTable(s.console(), [a.name for a in to_run], {})

        def on_result(asset: Any, rec: dict[str, Any]) -> None:
            summary_of[asset.name] = asset_record(asset, rec)
            table.result(asset.name, summary_of[asset.name])
            s.emit(summary_of[asset.name])

        if s.show_progress:
            from rich.live import Live

            console = s.console()
            try:
                with Live(table, console=console, refresh_per_second=2, transient=False):
                    run_tasks(ray, jobs, where, on_update=table.update, on_result=on_result)
            except KeyboardInterrupt as exc:
                return exc
            finally:
                if not console.is_terminal:  # rich leaves the last line of the table open there
                    console.line()
        else:
            try:
                run_tasks(ray, jobs, where, on_result=on_result)
            except KeyboardInterrupt as exc:
                return exc
    finally:
        if started:
            ray.shutdown()
    return None


def _finish(
    s: BatchSession,
    jobs: Path,
    out: Path,
    assets: Sequence[Any],
    summary_of: dict[str, dict[str, Any]],
    code: int | None,
) -> dict[str, Any]:
    """Write batch.json and index.html, print the failures and the last line; returns the summary."""
    from rich.markup import escape

    from animate124.batch.summary import asset_record, exit_code, summary, write_index, write_summary

    records = [summary_of.get(a.name) or asset_record(a, None) for a in assets]
    for r in records:
        if r["status"] == "running":  # a task that never reported back (cannot happen once Ray returned)
            r["status"] = "interrupted"
    code = exit_code(records) if code is None else code
    data = summary(records, jobs=jobs, out=out, exit_code=code)
    write_summary(out, data)
    write_index(out, data)
    for r in records:
        if r["ran"] and r["status"] == "failed":
            where = f" in {r['stage']}" if r.get("stage") else ""
            s.warn(f"{r['asset']} (row {r['row']}) failed{where}: {(r.get('error') or {}).get('message')}")
    counts = ", ".join(f"{v} {k}" for k, v in data["counts"].items() if v)
    mark = "[green]✓[/green]" if code == 0 else "[red]✗[/red]"
    ran = sum(r["ran"] for r in records)
    work = f"{ran} run{'s' if ran != 1 else ''}" if ran else "no work done"
    s.show(
        f"{mark} batch {escape(str(out))}: {counts} ({work}); summary: {escape(str(out / 'batch.json'))}, "
        f"index: {escape(str(out / 'index.html'))}"
    )
    return data


def register(app: typer.Typer) -> None:
    """Add ``batch`` to ``app``."""
    app.command(
        "batch",
        cls=FlagHelpCommand,
        help=(
            "Run run-all on many assets, one project each, as Ray tasks (pip install 'animate124\\[batch]').\n\n"
            "JOBS is a CSV/JSONL file (one row per asset) or a folder of images. Each row becomes "
            "<out>/<name> (the name column, else the image's name; unique and the same on every rerun). "
            "--preset, --config, --set, --device and --until apply to every row, a row's set column after "
            "them. Rows are checked before any run starts (image, prompts, config); a bad row fails alone. "
            "Each run is one Ray task with its own GPU (--gpus-per-run), on this machine or on an existing "
            "cluster (--address). Run the same command again: finished assets are skipped, interrupted ones "
            "resume from their checkpoints, failed ones rerun only with --retry-failed. Writes "
            "<out>/batch.json (the summary, also the last line of --json) and <out>/index.html (one card per "
            "asset with its orbit video, linking its report)."
        ),
        epilog=examples(
            "animate124 batch jobs.csv --out runs/",
            'animate124 batch photos/ --prompt "a toy is spinning" --preset fast',
            "animate124 batch jobs.jsonl --out /shared/runs --address auto   (an existing Ray cluster)",
            "animate124 batch jobs.csv --retry-failed --json > results.jsonl",
        )
        + "\n\n"
        + EXIT_HELP,
    )(batch)
