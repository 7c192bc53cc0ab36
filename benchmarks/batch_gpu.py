"""Issue 28's GPU measurement: Ray's overhead in ``animate124 batch`` against two plain ``run-all`` calls.

Two steps (standard library only, so that it runs on the GPU machine as it is):

``summarize DIR``, on the GPU machine (``benchmarks/gpu_batch.sh`` calls it): reads the timed parts in
``DIR/rec`` (each the wall time of one whole command), the batch's ``batch.json`` and task records, and the
projects' manifests, and writes the result JSON: wall times, the overhead, each stage's seconds on both sides
(so that the overhead splits into work inside the stages and time outside them: process start, imports,
checks, Ray), and where each task ran (its ``CUDA_VISIBLE_DEVICES``, CPU threads, process). With
``--rounds N`` (``ROUNDS`` of the script) it reads N rounds of the three parts: round 1 under today's names
(``plain_toy``, ``batch``, ``plain_toy2``), round r >= 2 under ``plain_toy.rR``, ``batch.rR``, ``plain_toy2.rR``.
Round 1's numbers stay at the top level of the JSON (the keys of a one-round result); ``rounds`` holds each
round's, and ``overhead_median_pct`` (with min and max) and ``fixed_cost_median_seconds`` (the batch's seconds
outside the stages minus the two run-alls', paired by round) are taken over the rounds.

``report RESULTS.tgz``, here: unpacks what the device call returned, copies the result JSON to
``benchmarks/results/batch_gpu.json`` and the raw files to ``benchmarks/results/<date>-<card>-issue28/``, and
writes the numbers into BENCHMARKS.md between the ``batch-gpu`` markers of §13 (and prints them).

    python benchmarks/batch_gpu.py summarize /tmp/a124/batchbench --card "NVIDIA H100" --steps "10 60 30 10" \\
        --out r/batch_gpu.json
    python benchmarks/batch_gpu.py report /work/.device/.../results.tgz
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "invert", "static", "dynamic", "refine")
PLAIN = ("plain_toy", "plain_toy2")  # run-all toy.png, run-all toy2.png (in this order around the batch)
ASSETS = ("toy", "toy2")  # the batch's rows, the same two images and prompts
TARGET_PCT = 5.0
BEGIN, END = "<!-- batch-gpu: begin -->", "<!-- batch-gpu: end -->"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _stage_seconds(project: Path) -> dict[str, float]:
    """Each stage's seconds as the project's manifest recorded them (the stage's own run, in its process)."""
    stages = _json(project / "manifest.json").get("stages", {})
    return {s: float(stages[s]["seconds"]) for s in STAGES if stages.get(s, {}).get("seconds") is not None}


def round_names(r: int) -> tuple[str, str, str]:
    """The parts of round ``r`` in the order they run: run-all toy, the batch, run-all toy2 (round 1: no suffix)."""
    suffix = "" if r == 1 else f".r{r}"
    return f"plain_toy{suffix}", f"batch{suffix}", f"plain_toy2{suffix}"


def _round(d: Path, rec: dict[str, Any], r: int) -> dict[str, Any]:
    """One round's numbers: its three timed parts, the batch's task records and the projects' manifests."""
    plain_a, batch, plain_b = round_names(r)
    plain = (plain_a, plain_b)
    summary = _json(d / batch / "batch.json")
    tasks = []
    for name in ASSETS:
        state = _json(d / batch / ".batch" / f"{name}.json")
        keep = ("asset", "status", "seconds", "started", "finished", "host", "pid", "cuda_visible_devices",
                "threads")  # fmt: skip
        tasks.append({k: state.get(k) for k in keep})
    plain_wall = sum(float(rec[n]["seconds"]) for n in plain)
    batch_wall = float(rec[batch]["seconds"])
    plain_stages = {n: _stage_seconds(d / n) for n in plain}
    batch_stages = {n: _stage_seconds(d / batch / n) for n in ASSETS}
    plain_in = sum(sum(s.values()) for s in plain_stages.values())
    batch_in = sum(sum(s.values()) for s in batch_stages.values())
    task_sum = sum(float(t["seconds"] or 0) for t in tasks)
    return {
        "exit_codes": {n: rec[n]["exit_code"] for n in (*plain, batch)},
        "batch_counts": {k: v for k, v in summary["counts"].items() if v},
        "plain_run_all_seconds": round(plain_wall, 2),
        "batch_seconds": round(batch_wall, 2),
        "ray_overhead_pct": round(100 * (batch_wall / plain_wall - 1), 2),
        "target_pct": TARGET_PCT,
        "within_target": batch_wall / plain_wall - 1 <= TARGET_PCT / 100,
        # where the difference is: in the stages (the same work in a Ray worker) or outside them
        "stage_seconds": {"plain": plain_stages, "batch": batch_stages},
        "in_stages_seconds": {"plain": round(plain_in, 2), "batch": round(batch_in, 2)},
        "outside_stages_seconds": {
            "plain": round(plain_wall - plain_in, 2),
            "batch": round(batch_wall - batch_in, 2),
        },
        "tasks": tasks,
        # one GPU and a GPU a task: the tasks run one after the other (they overlap on a CPU rehearsal)
        "tasks_overlapped": bool(
            tasks[1]["started"] < tasks[0]["finished"] and tasks[0]["started"] < tasks[1]["finished"]
        ),
        "task_seconds_sum": round(task_sum, 2),
        "driver_seconds_outside_tasks": round(batch_wall - task_sum, 2),
        **_driver_timeline(rec[batch], tasks),
    }


def _driver_timeline(part: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the driver's time outside the tasks goes, from the command's start and end (the part's record,
    where it has them) and the tasks' ``started``/``finished``: before the first task (the driver's start,
    the rows' checks beside Ray's start), between tasks (a fresh worker each), after the last (Ray's stop,
    batch.json, index.html)."""
    if "start" not in part or any(t.get("started") is None or t.get("finished") is None for t in tasks):
        return {}
    spans = sorted((float(t["started"]), float(t["finished"])) for t in tasks)
    gaps = [max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:], strict=False)]
    return {
        "driver_timeline_seconds": {
            "before_first_task": round(spans[0][0] - float(part["start"]), 2),
            "between_tasks": [round(g, 2) for g in gaps],
            "after_last_task": round(float(part["end"]) - max(f for _, f in spans), 2),
        }
    }


def summarize(d: Path, card: str, steps: str, rounds: int = 1) -> dict[str, Any]:
    """The result of one measurement of ``rounds`` rounds in ``d`` (see the module docstring)."""
    rec = {p.stem: _json(p) for p in sorted((d / "rec").glob("*.json"))}
    missing = [n for r in range(1, rounds + 1) for n in round_names(r) if n not in rec]
    if missing:
        raise SystemExit(f"not measured yet: {', '.join(missing)} (run the same call 2 command again)")
    per_round = [{"round": r, **_round(d, rec, r)} for r in range(1, rounds + 1)]
    for x in per_round:
        out, ins = x["outside_stages_seconds"], x["in_stages_seconds"]
        # the batch's extra time outside the stages (its fixed cost), and inside them (the same work: noise)
        x["fixed_cost_seconds"] = round(out["batch"] - out["plain"], 2)
        x["in_stages_difference_seconds"] = round(ins["batch"] - ins["plain"], 2)
    pct = [x["ray_overhead_pct"] for x in per_round]
    fixed = [x["fixed_cost_seconds"] for x in per_round]
    inside = [x["in_stages_difference_seconds"] for x in per_round]
    extra = ("round", "fixed_cost_seconds", "in_stages_difference_seconds")
    first = {k: v for k, v in per_round[0].items() if k not in extra}
    return {
        "what": "animate124 batch (Ray, one GPU per task) of 2 assets vs 2 plain run-all calls, --until refine",
        "card": card,
        "date": datetime.date.today().isoformat(),
        "steps": dict(zip(("invert", "static", "dynamic", "refine"), map(int, steps.split()), strict=True)),
        **first,  # round 1 at the top level, as a one-round result has it
        "rounds": per_round,
        "overhead_median_pct": round(statistics.median(pct), 2),
        "overhead_min_pct": min(pct),
        "overhead_max_pct": max(pct),
        "within_target_median": statistics.median(pct) <= TARGET_PCT,
        # batch minus plain outside the stages, round by round: Ray's fixed cost (driver, Ray, workers)
        "fixed_cost_median_seconds": round(statistics.median(fixed), 2),
        "fixed_cost_min_seconds": min(fixed),
        "fixed_cost_max_seconds": max(fixed),
        # batch minus plain inside the stages (the same work on both sides): the machine's noise
        "in_stages_difference_median_seconds": round(statistics.median(inside), 2),
    }


def markdown(r: dict[str, Any], raw: str) -> str:
    """BENCHMARKS.md's numbers for one result: one round as it always was; several, a table of the rounds and
    the verdict on their median first, then round 1 in detail."""
    rounds = r.get("rounds", [])
    if len(rounds) <= 1:
        return _markdown_round(r, raw)
    s = r["steps"]
    threads = "/".join(sorted({str(t["threads"]) for x in rounds for t in x["tasks"]}))
    codes = [(n, c) for x in rounds for n, c in x["exit_codes"].items()]
    bad = [f"{n} {c}" for n, c in codes if c != 0]
    counts = sorted({", ".join(f"{v} {k}" for k, v in x["batch_counts"].items()) for x in rounds})
    ok = "within" if r["within_target_median"] else "**over**"
    rows = []
    for x in rounds:
        a, b, c = round_names(x["round"])
        ins, out = x["in_stages_seconds"], x["outside_stages_seconds"]
        rows.append(f"| {x['round']} ({a}, {b}, {c}) | {x['plain_run_all_seconds']:.1f} | {x['batch_seconds']:.1f} | "
                    f"{x['ray_overhead_pct']:+.1f} % | {ins['plain']:.1f} / {ins['batch']:.1f} | "
                    f"{out['plain']:.1f} / {out['batch']:.1f} | {x['fixed_cost_seconds']:+.1f} |")  # fmt: skip
    return "\n".join([
        f"**Card: {r['card']}** ({r['date']}), **{len(rounds)} rounds**. Steps: invert {s['invert']}, static "
        f"{s['static']}, dynamic {s['dynamic']}, refine {s['refine']} at `paper` settings with the full-size "
        f"random-weight priors, `--until refine`, {threads} CPU threads a run. Each round runs `run-all` toy, the "
        f"batch, `run-all` toy2, each in a fresh folder. Exit codes: "
        + (f"all {len(codes)} parts 0" if not bad else ", ".join(bad)) + f"; batches: {'; '.join(counts)}.",
        "",
        "| round (parts) | two plain `run-all` (s) | `batch` (s) | overhead | in the stages, plain / batch (s) "
        "| outside them, plain / batch (s) | batch minus plain outside the stages (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Ray's overhead over the {len(rounds)} rounds: median **{r['overhead_median_pct']:+.1f} %** ({ok} the "
        f"{r['target_pct']:.0f} % target), from {r['overhead_min_pct']:+.1f} to {r['overhead_max_pct']:+.1f} %. "
        f"The batch's extra time outside the stages (its fixed cost: the driver's start and checks, Ray's start "
        f"and stop, a fresh worker per task), paired round by round: median {r['fixed_cost_median_seconds']:.1f} s, "
        f"from {r['fixed_cost_min_seconds']:.1f} to {r['fixed_cost_max_seconds']:.1f} s. Inside the stages, where "
        f"both sides do the same work, the batch took {r['in_stages_difference_median_seconds']:+.1f} s (median) "
        f"against the plain runs."
        + (" The batches' tasks overlapped (a CPU rehearsal, not a one-GPU measurement): their stages' seconds add "
           "up to more than the batch's wall time, so the seconds outside the stages mean little here."
           if any(x["tasks_overlapped"] for x in rounds) else ""),
        "",
        "Round 1 in detail:",
        "",
        _markdown_round(r, raw, alone=False),
    ])  # fmt: skip


def _markdown_round(r: dict[str, Any], raw: str, alone: bool = True) -> str:
    """BENCHMARKS.md's numbers for one round (round 1's keys at the top level of the result); ``alone``: the
    only round (with the card and steps line), else round 1's detail under the table of the rounds."""
    s = r["steps"]
    ok = "within" if r["within_target"] else "**over**"
    gpus = ", ".join(f"{t['asset']}: CUDA_VISIBLE_DEVICES={t['cuda_visible_devices']}, {t['threads']} threads, "
                     f"pid {t['pid']}" for t in r["tasks"])  # fmt: skip
    rows = []
    for side, names in (("plain", PLAIN), ("batch", ASSETS)):
        for n, asset in zip(names, ASSETS, strict=True):
            st = r["stage_seconds"][side][n]
            label = f"`run-all` {asset}" if side == "plain" else f"`batch` task {asset}"
            rows.append(f"| {label} | " + " | ".join(f"{st.get(x, 0):.1f}" for x in STAGES)
                        + f" | {sum(st.values()):.1f} |")  # fmt: skip
    threads = "/".join(sorted({str(t["threads"]) for t in r["tasks"]}))
    order = ("the tasks overlapped (a CPU rehearsal, not a one-GPU measurement)"
             if r["tasks_overlapped"] else "the tasks ran one after the other")  # fmt: skip
    head = [
        f"**Card: {r['card']}** ({r['date']}). Steps: invert {s['invert']}, static {s['static']}, dynamic "
        f"{s['dynamic']}, refine {s['refine']} at `paper` settings with the full-size random-weight priors, "
        f"`--until refine`, {threads} CPU threads a run. Exit codes: " + ", ".join(f"{k} {v}" for k, v in r["exit_codes"].items())
        + f"; batch: {', '.join(f'{v} {k}' for k, v in r['batch_counts'].items())}.",
        "",
    ] if alone else []  # fmt: skip
    return "\n".join([
        *head,
        "| | wall seconds | in the stages | outside them (start, imports, checks, Ray) |",
        "| --- | --- | --- | --- |",
        f"| two plain `run-all` | {r['plain_run_all_seconds']:.1f} | {r['in_stages_seconds']['plain']:.1f} | "
        f"{r['outside_stages_seconds']['plain']:.1f} |",
        f"| `batch` of the two (Ray) | {r['batch_seconds']:.1f} | {r['in_stages_seconds']['batch']:.1f} | "
        f"{r['outside_stages_seconds']['batch']:.1f} |",
        "",
        f"{'Ray' if alone else 'Round 1'}'s overhead: **{r['ray_overhead_pct']:+.1f} %** ({ok} the {r['target_pct']:.0f} % target). The tasks "
        f"ran {r['task_seconds_sum']:.1f} s together; the driver's time outside them (its start, the rows' checks, "
        f"Ray's start and stop) {r['driver_seconds_outside_tasks']:.1f} s{_timeline_text(r)}; {order}. "
        f"Where each task ran: {gpus}.",
        "",
        "Seconds per stage (the manifests' records):",
        "",
        "| run | " + " | ".join(STAGES) + " | sum |",
        "| --- |" + " --- |" * (len(STAGES) + 1),
        *rows,
        "",
        f"Record: `benchmarks/results/batch_gpu.json`; raw: `{raw}`.",
    ])  # fmt: skip


def _timeline_text(r: dict[str, Any]) -> str:
    t = r.get("driver_timeline_seconds")
    if not t:
        return ""
    gaps = " and ".join(f"{g:.1f}" for g in t["between_tasks"]) or "none"
    return (f" ({t['before_first_task']:.1f} s before the first task, {gaps} s between tasks, "
            f"{t['after_last_task']:.1f} s after the last)")  # fmt: skip


def report(tgz: Path, benchmarks: Path, results: Path) -> dict[str, Any]:
    """Unpack the device call's results, keep them in benchmarks/results, fill BENCHMARKS.md's section."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        r_dir = Path(tmp) / "r"
        result = _json(r_dir / "batch_gpu.json")
        card = re.sub(r"[^a-z0-9]+", "", result["card"].lower().replace("nvidia", ""))[:8] or "gpu"
        n = len(result.get("rounds", []))
        steps = "-".join(str(v) for v in result["steps"].values())  # measurements of a day differ by steps
        raw = results / f"{result['date']}-{card}-issue28-steps{steps}{f'-rounds{n}' if n > 1 else ''}"
        shutil.rmtree(raw, ignore_errors=True)
        shutil.copytree(r_dir, raw)
    (results / "batch_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, str(raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw))
    doc = benchmarks.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{benchmarks} has no {BEGIN} ... {END} section")
    head, rest = doc.split(BEGIN, 1)
    benchmarks.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    print(text)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summarize", help="on the GPU machine: the records of DIR -> the result JSON")
    s.add_argument("dir", type=Path)
    s.add_argument("--card", required=True)
    s.add_argument("--steps", required=True, help="'invert static dynamic refine' steps")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--rounds", type=int, default=1, help="rounds of the three parts (ROUNDS of gpu_batch.sh)")
    r = sub.add_parser("report", help="here: results.tgz -> benchmarks/results and BENCHMARKS.md")
    r.add_argument("tgz", type=Path)
    r.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    r.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.cmd == "summarize":
        result = summarize(args.dir, args.card, args.steps, args.rounds)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        keys = ("plain_run_all_seconds", "batch_seconds", "ray_overhead_pct", "within_target", "tasks")
        print(json.dumps({k: result[k] for k in keys}))
        for x in result["rounds"]:
            print(f"round {x['round']}: plain {x['plain_run_all_seconds']:.1f} s, batch {x['batch_seconds']:.1f} s, "
                  f"overhead {x['ray_overhead_pct']:+.2f} %, outside the stages batch minus plain "
                  f"{x['fixed_cost_seconds']:+.1f} s")  # fmt: skip
        print(f"median overhead {result['overhead_median_pct']:+.2f} % (min {result['overhead_min_pct']:+.2f}, max "
              f"{result['overhead_max_pct']:+.2f}; target {TARGET_PCT:.0f} %: "
              f"{'within' if result['within_target_median'] else 'over'}), fixed cost median "
              f"{result['fixed_cost_median_seconds']:.1f} s")  # fmt: skip
    else:
        report(args.tgz, args.benchmarks, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
