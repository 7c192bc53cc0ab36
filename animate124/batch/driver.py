"""The batch on Ray: the cluster (this machine or an existing one), one task per asset, the wait loop.

Ray schedules: each asset is one task asking for ``num_gpus`` (default 1 where the cluster has GPUs) and
``num_cpus``; Ray starts it when a node has them free, gives it its GPU (``CUDA_VISIBLE_DEVICES``) and its
CPU threads (``OMP_NUM_THREADS``), and runs it in a fresh worker process (``max_calls=1``: nothing of one
asset, GPU memory included, is left for the next). There is no pool or queue here.

Progress is read back from files, which works the same on one machine and on a cluster whose nodes share
the output folder: each task's record (``<out>/.batch/<asset>.json``: the stage it is in) and its project's
scalar log (``logs/<stage>.jsonl``: the step and the trainer's it/s).

Ctrl-C: the driver cancels every task (:func:`ray.cancel` raises the task's SIGINT, which the training
loops take as "checkpoint and stop"), waits for them to save, and re-raises KeyboardInterrupt; a second
Ctrl-C stops them at once (they resume from their last periodic checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from animate124.batch.plan import Asset
from animate124.batch.task import (
    FAILED,
    INTERRUPTED,
    NOT_STARTED,
    RUNNING,
    AssetJob,
    error_record,
    read_state,
    run_asset,
)
from animate124.errors import Animate124Error, ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTALL_HINT = 'install it with: pip install "animate124[batch]"  (or: pip install ray)'
#: Seconds the driver waits, after Ctrl-C, for the tasks to checkpoint (a second Ctrl-C stops waiting).
CANCEL_GRACE_S = 300.0


class BatchError(Animate124Error):
    """The batch itself cannot go on (Ray cannot start or be reached, a run cannot be placed)."""


def require_ray() -> Any:
    """The ``ray`` module; a usage error that says how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError("`animate124 batch` needs Ray, which is not installed", hint=INSTALL_HINT) from None
    return ray


def start_ray(address: str | None) -> tuple[Any, bool]:
    """Connect to Ray: the one already initialised in this process, else an existing cluster at
    ``address`` (``auto``: the one this machine belongs to, or ``ray://host:10001``), else a new local one
    on this machine with all its CPUs and GPUs (``address="local"``: never a cluster that ``ray start``
    left running here, which ``--address auto`` joins). Returns ``(ray, started)``; the caller shuts down
    what it started. Task output stays on the workers (``log_to_driver=False``): the driver's terminal
    shows the batch's table."""
    ray = require_ray()
    if ray.is_initialized():
        return ray, False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # the records that travel back are small: a small object store will do
            ray.init(address="local", include_dashboard=False, object_store_memory=200 * 2**20, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BatchError(
            f"cannot start or reach {where}: {' '.join(str(exc).split())[:300]}",
            hint="start a cluster with `ray start --head` (then --address auto), or leave out --address "
            "to run on this machine",
        ) from exc
    return ray, True


@dataclass
class RayStart:
    """Ray as :func:`start_ray_beside` left it: what :func:`start_ray` returned, or the error it raised
    (raised again by :meth:`take`, where the batch would have started Ray), and how long the start took."""

    ray: Any = None
    started: bool = False
    error: BaseException | None = None
    seconds: float = 0.0

    def take(self) -> tuple[Any, bool]:
        """``(ray, started)``; from here the caller shuts down what was started (:meth:`close` no longer does)."""
        if self.error is not None:
            raise self.error
        started, self.started = self.started, False
        return self.ray, started

    def close(self) -> None:
        """Shut down the Ray this started (the batch ran no task in it)."""
        if self.started:
            self.started = False
            self.ray.shutdown()


def start_ray_beside(work: Callable[[], T], address: str | None) -> tuple[T, RayStart]:
    """``work()`` (the rows' checks) on a helper thread while Ray starts on this one, so that a batch
    waits for the longer of the two instead of their sum (issue 28: on an H100 the driver's own start,
    checks and Ray's start were most of Ray's overhead; starting Ray is mostly waiting for its processes).

    Ray starts on the calling (main) thread, as it does without this: its signal handlers are the same.
    An error of Ray's start is kept in the :class:`RayStart` for the caller to raise where it would have
    started Ray (after the rows' report, with the batch's summary written); an error of ``work`` shuts the
    Ray started here down again and is raised."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="animate124-batch-checks")
    future = pool.submit(work)
    pool.shutdown(wait=False)
    ray_start = RayStart()
    t0 = time.time()
    try:
        ray_start.ray, ray_start.started = start_ray(address)
    except Animate124Error as exc:
        ray_start.error = exc
    ray_start.seconds = time.time() - t0
    try:
        return future.result(), ray_start
    except BaseException:
        ray_start.close()
        raise


@dataclass(frozen=True)
class Placement:
    """What each run asks Ray for, and the device its config names."""

    num_gpus: float
    num_cpus: float
    device: str


def placement(
    device: str,
    gpus_per_run: float | None,
    cpus_per_run: float | None,
    cluster: dict[str, float],
    local: bool,
) -> Placement:
    """Each run's GPUs and CPUs (see ``animate124 batch --help``) and its device; ConfigError for a
    combination that cannot work (a CUDA device without GPUs, more GPUs per run than there are)."""
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device}: Ray gives each run its GPU",
            hint="use --device cuda (or auto) with --gpus-per-run",
        )
    total_gpus, total_cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    gpus = gpus_per_run if gpus_per_run is not None else (1.0 if device != "cpu" and total_gpus >= 1 else 0.0)
    if gpus < 0 or (cpus_per_run is not None and cpus_per_run <= 0):
        raise ConfigError("--gpus-per-run must be >= 0 and --cpus-per-run > 0")
    if gpus > 0 and device == "cpu":
        raise ConfigError("--device cpu with --gpus-per-run > 0", hint="leave out one of them")
    if gpus == 0 and device == "cuda":
        raise ConfigError("--device cuda needs a GPU per run", hint="pass --gpus-per-run 1 (or leave it out)")
    if gpus > total_gpus and local:
        raise ConfigError(
            f"each run asks for {gpus:g} GPU(s); this machine has {total_gpus:g}",
            hint="pass --gpus-per-run 0 --device cpu (slow, except with --preset tiny)",
        )
    if gpus > 0:
        share = total_cpus * gpus / total_gpus if total_gpus else 1.0  # this run's share of the CPUs
        cpus = cpus_per_run if cpus_per_run is not None else max(1.0, float(int(share)))
    else:
        cpus = cpus_per_run if cpus_per_run is not None else 1.0
    if cpus > total_cpus and local:
        raise ConfigError(f"--cpus-per-run {cpus:g}: this machine has {total_cpus:g} CPUs")
    return Placement(gpus, cpus, device if gpus > 0 else "cpu")


# --- progress, read from files -----------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """One line of the batch's table."""

    asset: str
    state: str
    stage: str | None = None
    step: int | None = None
    total: int | None = None
    it_s: float | None = None
    elapsed: float | None = None


def stage_steps(cfg: Any, stage: str | None) -> int | None:
    """The number of steps of a training stage (None for the others)."""
    if stage == "invert":
        return int(cfg.invert.steps)
    if stage in ("static", "dynamic", "refine"):
        return int(getattr(cfg, stage).iters)
    return None


def last_log_line(path: Path, since: float | None = None) -> dict[str, Any] | None:
    """The last record of a JSONL scalar log (written at or after ``since``), reading only its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (since is None or float(rec.get("time", 0)) >= since - 1):
            return rec
        return None
    return None


def asset_progress(asset: Asset, now: float, batch_id: str = "") -> Progress:
    """Where a running asset is, from its task record (one of batch ``batch_id``: another batch's is a
    killed one's) and its stage's scalar log."""
    rec = read_state(asset.state_file)
    if not rec or rec.get("batch_id", "") != batch_id or rec.get("status") != RUNNING:
        return Progress(asset.name, "queued")
    stage = rec.get("stage")
    elapsed = now - float(rec["started"]) if rec.get("started") else None
    step = it_s = None
    if stage in ("invert", "static", "dynamic", "refine"):
        line = last_log_line(Path(asset.project) / "logs" / f"{stage}.jsonl", rec.get("stage_started"))
        if line:
            step, it_s = int(line.get("step", 0)), line.get("it_s")
    return Progress(
        asset.name, RUNNING, stage, step, stage_steps(asset.cfg, stage), it_s and float(it_s), elapsed
    )


# --- the tasks -------------------------------------------------------------------------------------
def _lost(asset: Asset, status: str, batch_id: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a task that returned none: its last state when it got as far as writing one."""
    rec = read_state(asset.state_file)
    if not rec or rec.get("batch_id") != batch_id:
        rec = {"asset": asset.name, "row": asset.row.number, "project": str(asset.project), "stages": []}
        status = NOT_STARTED if status == INTERRUPTED else status
    rec.update(status=status, error=error, finished=time.time())
    return rec


def _collect(ray: Any, ref: Any, asset: Asset, batch_id: str) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return _lost(asset, INTERRUPTED, batch_id)
    except ray.exceptions.RayError as exc:  # the worker died (host out of memory, a crash), or Ray did
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        error = error_record(BatchError(f"the run's Ray task failed: {type(exc).__name__}: {first[:300]}"))
        return _lost(asset, FAILED, batch_id, error)


def run_tasks(
    ray: Any,
    jobs: Sequence[tuple[Asset, AssetJob]],
    where: Placement,
    *,
    on_update: Callable[[list[Progress]], None] | None = None,
    on_result: Callable[[Asset, dict[str, Any]], None] | None = None,
    poll_s: float = 0.5,
    grace_s: float = CANCEL_GRACE_S,
) -> dict[str, dict[str, Any]]:
    """Run one Ray task per job and return ``{asset name: final record}``.

    ``on_update`` gets the running and queued assets' progress every ``poll_s`` seconds; ``on_result``
    each asset's record when its task ends. On KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI raises it)
    the tasks are cancelled and given ``grace_s`` seconds to checkpoint (see the module docstring), then
    the same exception is raised again.
    """
    remote = ray.remote(max_calls=1)(run_asset)
    refs: dict[Any, Asset] = {}
    for asset, job in jobs:
        opts = {"num_gpus": where.num_gpus, "num_cpus": where.num_cpus, "max_retries": 0}
        refs[remote.options(name=f"animate124:{asset.name}", **opts).remote(job)] = asset
    results: dict[str, dict[str, Any]] = {}
    batch_id = jobs[0][1].batch_id if jobs else ""

    def wait(deadline: float | None = None) -> None:
        while len(results) < len(refs):
            pending = [r for r, a in refs.items() if a.name not in results]
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
            for ref in ready:
                asset = refs[ref]
                results[asset.name] = rec = _collect(ray, ref, asset, batch_id)
                if on_result:
                    on_result(asset, rec)
            if on_update:
                now = time.time()
                on_update([asset_progress(a, now, batch_id) for a in refs.values() if a.name not in results])
            if deadline is not None and time.time() > deadline:
                return

    try:
        wait()
    except KeyboardInterrupt:
        pending = [r for r, a in refs.items() if a.name not in results]
        for ref in pending:
            ray.cancel(ref)  # SIGINT in the task: its training loop checkpoints and stops
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
            wait(time.time() + grace_s)
        for ref, asset in refs.items():
            if asset.name not in results:
                ray.cancel(ref, force=True)
                results[asset.name] = rec = _lost(asset, INTERRUPTED, batch_id)
                if on_result:
                    on_result(asset, rec)
        raise
    return results
