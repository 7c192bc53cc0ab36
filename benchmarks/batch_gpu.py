"""Issue 28's GPU measurement: Ray's overhead in ``animate124 batch`` against two plain ``run-all`` calls.

Two steps (standard library only, so that it runs on the GPU machine as it is):

``summarize DIR``, on the GPU machine (``benchmarks/gpu_batch.sh`` calls it): reads the timed parts in
``DIR/rec`` (each the wall time of one whole command), the batch's ``batch.json`` and task records, and the
projects' manifests, and writes the result JSON: wall times, the overhead, each stage's seconds on both sides
(so that the overhead splits into work inside the stages and time outside them: process start, imports,
checks, Ray), and where each task ran (its ``CUDA_VISIBLE_DEVICES``, CPU threads, process).

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


def summarize(d: Path, card: str, steps: str) -> dict[str, Any]:
    """The result of one measurement in ``d`` (see the module docstring)."""
    rec = {p.stem: _json(p) for p in sorted((d / "rec").glob("*.json"))}
    missing = [n for n in (*PLAIN, "batch") if n not in rec]
    if missing:
        raise SystemExit(f"not measured yet: {', '.join(missing)} (run the call 2 command again)")
    summary = _json(d / "batch" / "batch.json")
    tasks = []
    for name in ASSETS:
        state = _json(d / "batch" / ".batch" / f"{name}.json")
        keep = ("asset", "status", "seconds", "started", "finished", "host", "pid", "cuda_visible_devices",
                "threads")  # fmt: skip
        tasks.append({k: state.get(k) for k in keep})
    plain_wall = sum(float(rec[n]["seconds"]) for n in PLAIN)
    batch_wall = float(rec["batch"]["seconds"])
    plain_stages = {n: _stage_seconds(d / n) for n in PLAIN}
    batch_stages = {n: _stage_seconds(d / "batch" / n) for n in ASSETS}
    plain_in = sum(sum(s.values()) for s in plain_stages.values())
    batch_in = sum(sum(s.values()) for s in batch_stages.values())
    task_sum = sum(float(t["seconds"] or 0) for t in tasks)
    return {
        "what": "animate124 batch (Ray, one GPU per task) of 2 assets vs 2 plain run-all calls, --until refine",
        "card": card,
        "date": datetime.date.today().isoformat(),
        "steps": dict(zip(("invert", "static", "dynamic", "refine"), map(int, steps.split()), strict=True)),
        "exit_codes": {n: rec[n]["exit_code"] for n in (*PLAIN, "batch")},
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
    }


def markdown(r: dict[str, Any], raw: str) -> str:
    """BENCHMARKS.md's numbers for one result."""
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
    return "\n".join([
        f"**Card: {r['card']}** ({r['date']}). Steps: invert {s['invert']}, static {s['static']}, dynamic "
        f"{s['dynamic']}, refine {s['refine']} at `paper` settings with the full-size random-weight priors, "
        f"`--until refine`, {threads} CPU threads a run. Exit codes: " + ", ".join(f"{k} {v}" for k, v in r["exit_codes"].items())
        + f"; batch: {', '.join(f'{v} {k}' for k, v in r['batch_counts'].items())}.",
        "",
        "| | wall seconds | in the stages | outside them (start, imports, checks, Ray) |",
        "| --- | --- | --- | --- |",
        f"| two plain `run-all` | {r['plain_run_all_seconds']:.1f} | {r['in_stages_seconds']['plain']:.1f} | "
        f"{r['outside_stages_seconds']['plain']:.1f} |",
        f"| `batch` of the two (Ray) | {r['batch_seconds']:.1f} | {r['in_stages_seconds']['batch']:.1f} | "
        f"{r['outside_stages_seconds']['batch']:.1f} |",
        "",
        f"Ray's overhead: **{r['ray_overhead_pct']:+.1f} %** ({ok} the {r['target_pct']:.0f} % target). The tasks "
        f"ran {r['task_seconds_sum']:.1f} s together; the driver's time outside them (its start, the rows' checks, "
        f"Ray's start and stop) {r['driver_seconds_outside_tasks']:.1f} s; {order}. Where each task ran: {gpus}.",
        "",
        "Seconds per stage (the manifests' records):",
        "",
        "| run | " + " | ".join(STAGES) + " | sum |",
        "| --- |" + " --- |" * (len(STAGES) + 1),
        *rows,
        "",
        f"Record: `benchmarks/results/batch_gpu.json`; raw: `{raw}`.",
    ])  # fmt: skip


def report(tgz: Path, benchmarks: Path, results: Path) -> dict[str, Any]:
    """Unpack the device call's results, keep them in benchmarks/results, fill BENCHMARKS.md's section."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        r_dir = Path(tmp) / "r"
        result = _json(r_dir / "batch_gpu.json")
        card = re.sub(r"[^a-z0-9]+", "", result["card"].lower().replace("nvidia", ""))[:8] or "gpu"
        raw = results / f"{result['date']}-{card}-issue28"
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
    r = sub.add_parser("report", help="here: results.tgz -> benchmarks/results and BENCHMARKS.md")
    r.add_argument("tgz", type=Path)
    r.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    r.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.cmd == "summarize":
        result = summarize(args.dir, args.card, args.steps)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        keys = ("plain_run_all_seconds", "batch_seconds", "ray_overhead_pct", "within_target", "tasks")
        print(json.dumps({k: result[k] for k in keys}))
    else:
        report(args.tgz, args.benchmarks, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
