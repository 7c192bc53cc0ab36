"""Issue 31's acceptance file: upstream Animate124 against the project, stage by stage, on one card.

Reads what ``run_side_by_side.sh`` leaves: upstream's per-step JSONL (``pyhooks/a124_steps.py``: one record per
optimizer step with its end time and the peak GPU memory so far), exit codes and logs (``run_upstream.sh``), and
the project's run (``manifest.json`` and ``logs/<stage>.jsonl`` written with ``run.log_every=1``). Writes
``benchmarks/results/upstream_side_by_side.json``::

    {"card", "warmup", "steps", "stages": {"invert"|"static"|"dynamic"|"refine": {
        "steps", "window", "upstream_s_per_step", "project_s_per_step", "ratio",
        "upstream_peak_gib", "project_peak_gib", "paper_steps", "upstream_projected_min",
        "project_projected_min", "upstream_failure", ...}}, "totals": {...}}

How a rate is measured, the same way on both sides: the seconds between consecutive step ends, for the steps
``first + 1 … first + steps`` of the stage's run, where ``first`` = ``warmup`` (+100 in the static stage, whose
first 100 steps are reference-view steps in both, SPEC 4). An interval that spans an upstream epoch end (where
upstream evaluates and saves) or a pause in the project's log is not a step and is left out; so is an interval
longer than 5 × the window's median (a one-off cost: a CUDA-graph capture, a guidance image written to disk),
counted in ``*_outliers``. ``*_s_per_step`` is the mean of the rest, ``*_median_s`` their median.
Peaks are the CUDA allocator's peak allocated GiB over the stage's training steps (model loading excluded on
both sides: upstream's hook resets the counter before its first step, the project's trainer at its start).
Projected minutes = the paper's steps of that stage × seconds per step / 60 (steps only: neither side's model
loading, evaluation, previews or checkpoints). A stage upstream could not run (out of memory, a crash, not
reached) has ``upstream_failure`` saying where.

Usage: ``python benchmarks/upstream/side_by_side.py --upstream OUT/upstream --project P --card CARD --out F``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ("invert", "static", "dynamic", "refine")
UPSTREAM_NAMES = {
    "invert": "textual inversion",
    "static": "static",
    "dynamic": "dynamic (coarse)",
    "refine": "refinement (ControlNet)",
}
# upstream's scripts: TI --max_train_steps 3000; --iters 5000 / 15000 / 20000 cumulative (SPEC 0)
UPSTREAM_PAPER_STEPS = {"invert": 3000, "static": 5000, "dynamic": 10000, "refine": 5000}
REFERENCE_ONLY = {"static": 100}  # leading reference-view steps (known_iters, SPEC 4), skipped by the window
OUTLIER_FACTOR = 5.0


def window(stage: str, warmup: int, steps: int) -> tuple[int, int]:
    """``(first, last)``: the measured steps are ``first + 1 … last`` of the stage's own count."""
    first = REFERENCE_ONLY.get(stage, 0) + int(warmup)
    return first, first + int(steps)


def rate(durations: list[float]) -> dict[str, Any]:
    """Mean seconds per step without outliers (> OUTLIER_FACTOR × median), the median, and the counts."""
    if not durations:
        return {"s_per_step": None, "median_s": None, "intervals": 0, "outliers": 0}
    med = statistics.median(durations)
    kept = [d for d in durations if d <= OUTLIER_FACTOR * med]
    return {
        "s_per_step": round(sum(kept) / len(kept), 5),
        "median_s": round(med, 5),
        "intervals": len(kept),
        "outliers": len(durations) - len(kept),
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
    return out


def upstream_durations(records: list[dict[str, Any]], first: int, last: int) -> list[float]:
    """Step intervals ``n-1 -> n`` for ``first < n <= last`` from the hook's step records, except those that
    span an epoch end (upstream evaluates, saves and tests there)."""
    steps = {int(r["n"]): r for r in records if r.get("event") == "step"}
    out = []
    for n in range(first + 1, last + 1):
        a, b = steps.get(n - 1), steps.get(n)
        if a is None or b is None or a.get("epoch") != b.get("epoch"):
            continue
        out.append(float(b["t"]) - float(a["t"]))
    return out


def project_durations(records: list[dict[str, Any]], first: int, last: int) -> list[float]:
    """Step intervals ``n-1 -> n`` for ``first < n <= last`` from the project's per-step log, within one
    uninterrupted stretch (``paper_schedule.stretches``: a resume or a long pause starts a new one)."""
    from paper_schedule import stretches

    out = []
    for st in stretches(records):
        by_step = {int(r["step"]): float(r["time"]) for r in st}
        for n in range(first + 1, last + 1):
            if n - 1 in by_step and n in by_step:
                out.append(by_step[n] - by_step[n - 1])
    return out


def _error_line(log: Path) -> str | None:
    """The last line of ``log`` that names an error (the out-of-memory message first)."""
    if not log.exists():
        return None
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    for keys in (("OutOfMemoryError", "out of memory"), ("Error", "error:", "Killed", "Traceback")):
        hits = [x for x in lines if any(k in x for k in keys)]
        if hits:
            return hits[-1][:400]
    return lines[-1][:400] if lines else None


def upstream_stage(folder: Path, stage: str, first: int, last: int) -> dict[str, Any]:
    """Upstream's numbers for one stage (``upstream_*`` keys), with ``upstream_failure`` when it did not run
    its steps: ``{"kind": "out_of_memory" | "error" | "not_run", "steps_done", "exit_code", "message"}``."""
    rc_path = folder / f"{stage}.rc"
    records = _jsonl(folder / f"steps_{stage}.jsonl")
    steps = [r for r in records if r.get("event") == "step"]
    begin = next((r for r in records if r.get("event") == "begin"), {})
    r = rate(upstream_durations(records, first, last))
    out: dict[str, Any] = {
        "upstream_s_per_step": r["s_per_step"],
        "upstream_median_s": r["median_s"],
        "upstream_intervals": r["intervals"],
        "upstream_outliers": r["outliers"],
        "upstream_steps_done": len(steps),
        "upstream_peak_gib": max((s["peak_gib"] for s in steps if "peak_gib" in s), default=None),
        "upstream_peak_reserved_gib": max(
            (s["reserved_gib"] for s in steps if "reserved_gib" in s), default=None
        ),
        "upstream_load_peak_gib": begin.get("load_peak_gib"),
        "upstream_card": begin.get("card"),
        "upstream_failure": None,
    }
    notes = [r for r in records if r.get("event") == "note"]
    if notes:
        out["upstream_notes"] = notes
    if not rc_path.exists():  # an earlier stage failed, the call ran out of time, or the setup failed
        setup = folder / "setup_error.txt"
        message = setup.read_text().strip() if setup.exists() else None
        out["upstream_failure"] = {"kind": "not_run", "steps_done": 0, "exit_code": None, "message": message}
        return out
    code = int(rc_path.read_text().strip() or -1)
    if code != 0 or len(steps) < last:
        message = _error_line(folder / f"{stage}.log")
        oom = message is not None and ("OutOfMemoryError" in message or "out of memory" in message)
        out["upstream_failure"] = {
            "kind": "out_of_memory" if oom else "error",
            "steps_done": len(steps),
            "exit_code": code,
            "message": message if code != 0 else f"stopped after {len(steps)} of {last} steps",
        }
    return out


def project_stage(project: Path, stage: str, first: int, last: int) -> dict[str, Any]:
    """The project's numbers for one stage (``project_*`` keys)."""
    manifest_path = project / "manifest.json"
    manifest = json.loads(manifest_path.read_text())["stages"] if manifest_path.exists() else {}
    rec = manifest.get(stage, {})
    metrics = rec.get("metrics", {})
    r = rate(project_durations(_jsonl(project / "logs" / f"{stage}.jsonl"), first, last))
    out: dict[str, Any] = {
        "project_s_per_step": r["s_per_step"],
        "project_median_s": r["median_s"],
        "project_intervals": r["intervals"],
        "project_outliers": r["outliers"],
        "project_peak_gib": metrics.get("peak_allocated_gib"),
        "project_peak_reserved_gib": metrics.get("peak_reserved_gib"),
        "project_status": rec.get("status", "not run"),
    }
    if rec.get("status") != "done":
        out["project_failure"] = rec.get("error") or rec.get("status", "not run")
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def compare(
    upstream: Path, project: Path, card: str, warmup: int, steps: int, paper: dict[str, int] | None = None
) -> dict[str, Any]:
    """The whole record (see the module docstring); ``paper``: the project's paper step counts."""
    if paper is None:
        from paper_schedule import paper_steps

        paper = paper_steps()
    stages: dict[str, Any] = {}
    for stage in STAGES:
        first, last = window(stage, warmup, steps)
        entry: dict[str, Any] = {
            "upstream_stage": UPSTREAM_NAMES[stage],
            "steps": steps,
            "window": [first + 1, last],
        }
        entry.update(upstream_stage(Path(upstream), stage, first, last))
        entry.update(project_stage(Path(project), stage, first, last))
        up, pr = entry["upstream_s_per_step"], entry["project_s_per_step"]
        entry["ratio"] = _div(up, pr)
        entry["memory_ratio"] = _div(entry["upstream_peak_gib"], entry["project_peak_gib"])
        entry["paper_steps"] = {"upstream": UPSTREAM_PAPER_STEPS[stage], "project": int(paper[stage])}
        entry["upstream_projected_min"] = (
            None if up is None else round(UPSTREAM_PAPER_STEPS[stage] * up / 60, 1)
        )
        entry["project_projected_min"] = None if pr is None else round(int(paper[stage]) * pr / 60, 1)
        stages[stage] = entry
    cards = {e["upstream_card"] for e in stages.values() if e.get("upstream_card")}
    rec: dict[str, Any] = {"card": card, "warmup": warmup, "steps": steps, "stages": stages}
    if cards - {card}:
        rec["card_mismatch"] = sorted(cards)  # upstream ran on another card than the project: not comparable
    ups = [e["upstream_projected_min"] for e in stages.values()]
    prs = [e["project_projected_min"] for e in stages.values()]
    rec["totals"] = {
        "upstream_projected_min": None if None in ups else round(sum(ups), 1),
        "project_projected_min": None if None in prs else round(sum(prs), 1),
    }
    rec["totals"]["ratio"] = _div(
        rec["totals"]["upstream_projected_min"], rec["totals"]["project_projected_min"]
    )
    return rec


def _fmt(x: Any, spec: str = ".3f", unit: str = "") -> str:
    return "–" if x is None else format(x, spec) + unit


def table(rec: dict[str, Any]) -> str:
    """The BENCHMARKS.md table: per stage, seconds per step, peak GiB, their ratios and the projections."""
    head = (
        "| stage | steps timed | upstream s/step | project s/step | upstream ÷ project | upstream peak GiB | "
        "project peak GiB | paper steps | upstream projected min | project projected min |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for stage, e in rec["stages"].items():
        f = e.get("upstream_failure")
        up = _fmt(e["upstream_s_per_step"])
        if f is not None:
            kind = f["kind"].replace("_", " ")
            up = f"{up} ({kind} after {f['steps_done']} steps)" if e["upstream_s_per_step"] else f"{kind}"
        rows.append(
            f"| {stage} | {e['window'][0]}–{e['window'][1]} | {up} | {_fmt(e['project_s_per_step'])} | "
            f"{_fmt(e['ratio'], '.2f', '×')} | {_fmt(e['upstream_peak_gib'], '.2f')} | "
            f"{_fmt(e['project_peak_gib'], '.2f')} | {e['paper_steps']['upstream']} / "
            f"{e['paper_steps']['project']} | {_fmt(e['upstream_projected_min'], '.1f')} | "
            f"{_fmt(e['project_projected_min'], '.1f')} |"
        )
    t = rec["totals"]
    rows.append(
        f"| **all** | | | | {_fmt(t['ratio'], '.2f', '×')} | | | | {_fmt(t['upstream_projected_min'], '.1f')} | "
        f"{_fmt(t['project_projected_min'], '.1f')} |"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", type=Path, required=True, help="run_upstream.sh's output folder")
    p.add_argument("--project", type=Path, required=True, help="the project folder the CLI trained")
    p.add_argument("--card", required=True)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--command", default="", help="the command that made the run (recorded)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "upstream_side_by_side.json")
    p.add_argument("--md", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    rec = compare(args.upstream, args.project, args.card, args.warmup, args.steps)
    if args.command:
        rec["command"] = " ".join(args.command.split())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    md = table(rec)
    if args.md is not None:
        args.md.write_text(md)
    print(f"{rec['card']}: {args.steps} steps per stage after {args.warmup} warm-up steps")
    print(md)
    return rec


if __name__ == "__main__":
    main()
