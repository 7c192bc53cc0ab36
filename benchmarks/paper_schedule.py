"""Issue 12's acceptance file from a run through the CLI: ``benchmarks/results/paper_schedule.json``.

Reads a project that ``animate124 run-all`` trained (``manifest.json`` and ``logs/<stage>.jsonl``) and writes::

    {"card": ..., "stages": {"invert"|"static"|"dynamic"|"refine": {"steps_run", "paper_steps", "it_s",
     "peak_allocated_gib", "peak_reserved_gib", ...}}, "projected_total_min": ..., "low_vram_peak_gib": ...}

* ``it_s``: the steady rate, from the log's timestamps over the stage's last steps: the second half of its last
  uninterrupted stretch (a resumed stage logs on after a gap; the first steps of a stretch include compilation,
  CUDA-graph recording and cache warm-up), widened back across earlier stretches (pauses left out) to at least a
  quarter of the stage's logged steps, so a resume shortly before the end does not leave a rate of ten steps.
* ``rate_windows``: ``[first step, last step, it/s]`` over about 8 windows of the log, the rate's trend.
* ``it_s_whole_run``: steps per second over all the stage's logged stretches (its average; not used in the
  projection, which takes the rate at the end: a field that fills in makes later steps slower).
* ``overhead_s``: the stage's wall-clock in its last invocation minus its steps at the steady rate (model
  loading, the first steps' warm-up, previews, checkpoints); the projection adds it once per stage.
* ``projected_total_min``: Σ (paper steps / it_s + overhead_s) / 60.
* peaks: the manifest's ``peak_allocated_gib`` / ``peak_reserved_gib`` (of the stage's last invocation; a
  resumed stage says so in ``invocations``).
* with ``--set run.profile=true`` (``EXTRA_SETS`` of ``gpu_paper_schedule.sh``), each stage's ``ms_per_step`` by
  part (``nerf_side`` among them: issue 26), ``flops_by_part`` and ``memory_by_part`` from the manifest.
* ``low_vram_peak_gib``: the largest peak of a second project trained with ``--preset low-vram`` (``--low-vram``),
  with its stages in ``low_vram_stages``.

Usage: ``python benchmarks/paper_schedule.py --project runs/toy --card "NVIDIA H200" [--low-vram P] --out F``.
The paper step counts come from the ``paper`` preset. ``benchmarks/gpu_paper_schedule.sh`` runs the whole thing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("invert", "static", "dynamic", "refine")


def paper_steps() -> dict[str, int]:
    """Each stage's step count at paper settings (the ``paper`` preset)."""
    from animate124.config import resolve_config

    cfg = resolve_config("paper")
    return {
        "invert": cfg.invert.steps,
        "static": cfg.static.iters,
        "dynamic": cfg.dynamic.iters,
        "refine": cfg.refine.iters,
    }


def stretches(
    records: list[dict[str, Any]], gap_factor: float = 5.0, min_gap_s: float = 30.0
) -> list[list[dict]]:
    """The records split at every interruption: a step that does not increase, or a pause longer than
    ``max(min_gap_s, gap_factor × the median interval)`` between two records."""
    recs = [r for r in records if "step" in r and "time" in r]
    if len(recs) < 2:
        return [recs]
    gaps = [b["time"] - a["time"] for a, b in zip(recs, recs[1:], strict=False)]
    limit = max(min_gap_s, gap_factor * statistics.median(gaps))
    out, start = [], 0
    for i in range(1, len(recs)):
        if recs[i]["step"] <= recs[i - 1]["step"] or recs[i]["time"] - recs[i - 1]["time"] > limit:
            out.append(recs[start:i])
            start = i
    return [*out, recs[start:]]


def whole_run_rate(records: list[dict[str, Any]]) -> float | None:
    """Steps per second over every stretch of the log (pauses between stretches left out): the stage's
    average, where :func:`steady_rate` is its rate at the end."""
    steps = secs = 0.0
    for st in stretches(records):
        if len(st) >= 2:
            steps += st[-1]["step"] - st[0]["step"]
            secs += st[-1]["time"] - st[0]["time"]
    return steps / secs if secs > 0 else None


def steady_rate(records: list[dict[str, Any]], resumed: int = 0) -> tuple[float, int, int]:
    """(steps per second, first step, last step) over the stage's last ``max(half the last stretch, a quarter
    of every logged step)`` steps, summing the record-to-record intervals of each stretch (:func:`stretches`,
    also split at ``resumed``, the step a quick resume restarted from) so that no pause is counted."""
    parts: list[list[dict]] = []
    for st in stretches(records):
        before = [r for r in st if r["step"] <= resumed]
        parts += [p for p in (before, st[len(before) :]) if p]
    if not parts or len(parts[-1]) < 2:
        raise ValueError("fewer than two timed log records in the last stretch: run more steps")
    last, end = parts[-1], parts[-1][-1]["step"]
    width = max((end - last[0]["step"]) / 2, (end - parts[0][0]["step"]) / 4)
    steps = secs = 0.0
    first = end
    for st in parts:
        for a, b in zip(st, st[1:], strict=False):
            if a["step"] >= end - width:
                steps += b["step"] - a["step"]
                secs += b["time"] - a["time"]
                first = min(first, a["step"])
    if secs <= 0:
        raise ValueError("log timestamps do not increase")
    return steps / secs, int(first), int(end)


def rate_windows(records: list[dict[str, Any]], n: int = 8) -> list[list[float]]:
    """``[first step, last step, it/s]`` over about ``n`` consecutive windows of each stretch (pauses left
    out): how the rate changes over the stage (the 4D stages slow down as the field fills in)."""
    out: list[list[float]] = []
    total = sum(max(0, len(st) - 1) for st in stretches(records))
    per = max(1, total // n)
    for st in stretches(records):
        for i in range(0, len(st) - 1, per):
            a, b = st[i], st[min(i + per, len(st) - 1)]
            if b["time"] > a["time"]:
                out.append(
                    [
                        int(a["step"]),
                        int(b["step"]),
                        round((b["step"] - a["step"]) / (b["time"] - a["time"]), 3),
                    ]
                )
    return out


def samples_windows(records: list[dict[str, Any]], n: int = 8) -> list[list[float]]:
    """``[first step, last step, mean samples]`` of the guidance renders (the logged ``samples``) over ``n``
    windows: how full the scene is, which sets the render's time and memory; empty when not logged."""
    rows = [r for r in records if "samples" in r]
    per = max(1, -(-len(rows) // n))
    return [
        [int(w[0]["step"]), int(w[-1]["step"]), round(sum(r["samples"] for r in w) / len(w))]
        for w in (rows[i : i + per] for i in range(0, len(rows), per))
    ]


def _read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_entry(project: Path, stage: str, record: dict[str, Any], paper: int) -> dict[str, Any]:
    metrics = record.get("metrics", {})
    resumed = int(metrics.get("resumed_from_step", 0) or 0)
    # a resumed stage's last invocation logged the steps after its checkpoint; the gap rule of
    # stretches() also finds a resume, but not one quicker than its pause limit
    every = _read_log(project / "logs" / f"{stage}.jsonl")
    it_s, first, last = steady_rate(every, resumed)
    whole = whole_run_rate(every)
    steps = int(metrics.get("steps", last))
    seconds = float(record.get("seconds") or 0.0)
    overhead = max(0.0, seconds - (steps - resumed) / it_s)
    parts = {  # run.profile's per-part times (its syncs slow the step: a profiled run's rates are not the record's)
        k: metrics[k] for k in ("ms_per_step", "flops_by_part", "memory_by_part") if k in metrics
    }
    return {
        "steps_run": steps,
        "paper_steps": int(paper),
        "fraction_of_paper": round(steps / paper, 4),
        "it_s": round(it_s, 4),
        "rate_steps": [first, last],
        "it_s_whole_run": None if whole is None else round(whole, 4),
        "rate_windows": rate_windows(every),
        "peak_allocated_gib": metrics.get("peak_allocated_gib"),
        "peak_reserved_gib": metrics.get("peak_reserved_gib"),
        "memory_saving": metrics.get("memory_saving"),
        "samples_windows": samples_windows(every),
        "seconds_last_invocation": round(seconds, 2),
        "overhead_s": round(overhead, 2),
        "invocations": f"resumed from step {resumed}" if resumed else "one",
        "projected_min": round((paper / it_s + overhead) / 60.0, 2),
        **parts,
    }


def schedule(project: Path, card: str, low_vram: Path | None = None) -> dict[str, Any]:
    """The acceptance record of ``project`` (and the low-vram peaks of ``low_vram``)."""
    project = Path(project)
    manifest = json.loads((project / "manifest.json").read_text())["stages"]
    paper = paper_steps()
    missing = [s for s in STAGES if manifest.get(s, {}).get("status") != "done"]
    if missing:
        raise ValueError(f"stages not done in {project}: {', '.join(missing)}")
    stages = {s: stage_entry(project, s, manifest[s], paper[s]) for s in STAGES}
    out: dict[str, Any] = {
        "card": card,
        "stages": stages,
        "min_fraction_of_paper": min(v["fraction_of_paper"] for v in stages.values()),
        "projected_total_min": round(sum(v["projected_min"] for v in stages.values()), 1),
        "low_vram_peak_gib": None,
    }
    if low_vram is not None:
        lv = json.loads((Path(low_vram) / "manifest.json").read_text())["stages"]
        peaks = {s: lv.get(s, {}).get("metrics", {}).get("peak_allocated_gib") for s in STAGES}
        out["low_vram_stages"] = peaks
        known = [v for v in peaks.values() if v is not None]
        out["low_vram_peak_gib"] = max(known) if known else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--card", required=True)
    p.add_argument("--low-vram", type=Path, default=None, help="a project trained with --preset low-vram")
    p.add_argument("--command", default="", help="the command that made the run (recorded)")
    p.add_argument("--cap-gib", type=float, default=None, help="the allocator cap the run had (recorded)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_schedule.json")
    args = p.parse_args(argv)
    rec = schedule(args.project, args.card, args.low_vram)
    if args.command:
        rec["command"] = " ".join(args.command.split())
    if args.cap_gib:
        rec["allocator_cap_gib"] = args.cap_gib  # benchmarks/capped_cli.py: the card it emulates
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    for s, v in rec["stages"].items():
        print(
            f"{s:8s} {v['steps_run']:6d}/{v['paper_steps']} steps  {v['it_s']:8.3f} it/s  "
            f"peak {v['peak_allocated_gib']}/{v['peak_reserved_gib']} GiB  -> {v['projected_min']:.1f} min"
        )
    print(
        f"projected paper schedule: {rec['projected_total_min']:.1f} min; low-vram peak {rec['low_vram_peak_gib']} GiB"
    )
    return rec


if __name__ == "__main__":
    main()
