"""Gradient balance of the static stage at ``static.sds_grad_scale=upstream`` and ``=nominal`` (issue 25).

Runs the static stage through the CLI twice, once per setting, for ``--steps`` steps with the gradient-balance
record on (``run.grad_stats_every``), then reads each run's ``logs/static.jsonl`` and prints, per setting and
loss group, the median norm of the gradient that group alone puts on the field (``grad/<group>``), on the
reference steps and on the guidance steps separately (a step is one or the other, SPEC 3.4), and the median
ratio SD / regularisers and Zero123 / regularisers on the guidance steps (the regularisers act on every step,
so they are the common yardstick). Writes the table as JSON.

    python benchmarks/grad_balance.py --preset tiny --steps 8 --every 1 --out /tmp/gb.json     # CPU smoke
    bash benchmarks/gpu_grad_balance.sh OUTDIR          # GPU: full-size random-weight priors, paper settings

``--steps`` sets ``static.iters``: the step-keyed schedules keep their paper values (reference steps 1-99,
normal-map shading before step 1000, the grid mask through step 3001), so a short run measures the start of
the paper's static stage, where the loss scale S is 2^16. ``--set`` passes config overrides to both runs (the
GPU script points the model roles at the random-weight priors with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("upstream", "nominal")


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Median ``grad/<group>`` norms over the recorded steps, by step kind, and the guidance-step ratios."""
    out: dict[str, Any] = {}
    for kind, is_ref in (("reference_steps", 1.0), ("guidance_steps", 0.0)):
        recs = [r for r in records if "grad/total" in r and r.get("reference") == is_ref]
        groups = sorted({k for r in recs for k in r if k.startswith("grad/")})
        out[kind] = {
            g: {
                "n": len(vals),
                "median": statistics.median(vals) if vals else None,
                "mean": statistics.fmean(vals) if vals else None,
            }
            for g in groups
            for vals in [[r[g] for r in recs if r.get(g) is not None]]
        }
        out[kind]["steps"] = len(recs)
    guided = [r for r in records if "grad/total" in r and r.get("reference") == 0.0]
    for prior in ("sd", "zero123"):
        ratios = [
            r[f"grad/{prior}"] / r["grad/regularizers"]
            for r in guided
            if r.get(f"grad/{prior}") is not None and r.get("grad/regularizers")
        ]
        out[f"{prior}_over_regularizers"] = statistics.median(ratios) if ratios else None
    scales = [r["sds_loss_scale"] for r in guided if "sds_loss_scale" in r]
    out["sds_loss_scale"] = sorted(set(scales))
    return out


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Preprocess + static at one setting in ``<work>/<mode>``; the summary of its log."""
    project = args.work / mode
    cli = [sys.executable, "-m", "animate124.cli.app"]
    common = ["--preset", args.preset, "-q", *[x for s in args.set for x in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if not (project / "preprocess" / "rgba.png").is_file():
        subprocess.run(
            [*cli, "preprocess", str(args.image), "-p", str(project), *common], check=True, env=env
        )
    sets = [
        f"static.iters={args.steps}",
        f"static.sds_grad_scale={mode}",
        f"run.grad_stats_every={args.every}",
        "run.preview_every=0",
    ]
    t0 = time.perf_counter()
    subprocess.run(
        [*cli, "static", "-p", str(project), "--prompt", args.prompt, "--force", *common,
         *[x for s in sets for x in ("--set", s)]],
        check=True, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    records = [json.loads(x) for x in (project / "logs" / "static.jsonl").read_text().splitlines()]
    records = [r for r in records if r["step"] <= args.steps][-args.steps :]  # this run's steps
    return {"seconds": round(seconds, 1), **summarize(records)}


def table(result: dict[str, Any]) -> str:
    lines = ["setting   steps      group          n   median norm"]
    for mode in MODES:
        r = result[mode]
        for kind in ("reference_steps", "guidance_steps"):
            for g, v in r[kind].items():
                if g == "steps":
                    continue
                med = "-" if v["median"] is None else f"{v['median']:.3e}"
                lines.append(f"{mode:9s} {kind.split('_')[0]:10s} {g[5:]:14s} {v['n']:3d}   {med}")
        for prior in ("sd", "zero123"):
            ratio = r[f"{prior}_over_regularizers"]
            lines.append(
                f"{mode:9s} guidance   {prior}/regularizers median ratio: {ratio if ratio is None else f'{ratio:.3g}'}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/a124-grad-balance"), help="projects go here")
    ap.add_argument("--image", type=Path, default=REPO / "examples" / "toy.png")
    ap.add_argument("--prompt", default="a toy")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--every", type=int, default=10, help="run.grad_stats_every")
    ap.add_argument("--set", action="append", default=[], help="config override for both runs (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    result: dict[str, Any] = {
        "steps": args.steps,
        "every": args.every,
        "preset": args.preset,
        "sets": args.set,
        **{m: run_mode(args, m) for m in MODES},
    }
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
