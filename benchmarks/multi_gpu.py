"""Issue 29's record: each training stage's per-step time on one GPU and on several (``--gpus N``).

Reads two projects that trained the same stages with the same settings, one on one GPU and one with
``--gpus N`` (``benchmarks/gpu_multi.sh`` makes them), and the ``nvidia-smi`` memory samples taken during
each run, and writes::

    {"card": ..., "gpus": N, "stages": {"static"|"dynamic"|"refine": {"one": {"it_s", "ms_per_step"},
     "several": {...}, "speedup"}}, "peak_used_gib_per_card": {"one": [...], "several": [...]}}

* ``it_s``: the steady rate of :func:`paper_schedule.steady_rate` (the stage's last steps, from the log's
  timestamps); ``ms_per_step`` = 1000 / it_s; ``speedup`` = several / one.
* ``peak_used_gib_per_card``: the largest ``memory.used`` nvidia-smi saw on each card over the run (CUDA
  context included; the trainer's own peak counts only the first card).

Usage: ``python benchmarks/multi_gpu.py --one P1 --several P2 --gpus 2 --card NAME [--smi-one F] [--smi-several
F] --out F``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_schedule import steady_rate  # noqa: E402

TRAINING = ("static", "dynamic", "refine")


def stage_rate(project: Path, stage: str) -> dict[str, float] | None:
    """The steady rate of ``stage`` in ``project`` (None when the stage has no log)."""
    log = Path(project) / "logs" / f"{stage}.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    it_s, first, last = steady_rate(records)
    return {"it_s": round(it_s, 4), "ms_per_step": round(1000.0 / it_s, 2), "rate_steps": [first, last]}


def smi_peaks(path: Path | None) -> list[float] | None:
    """Per card, the largest ``memory.used`` (GiB) of an ``nvidia-smi --query-gpu=index,memory.used
    --format=csv,noheader,nounits -lms N`` log (MiB values)."""
    if path is None or not Path(path).is_file():
        return None
    peaks: dict[int, float] = {}
    for row in csv.reader(Path(path).read_text().splitlines()):
        try:
            index, used = int(row[0]), float(row[1])
        except (IndexError, ValueError):
            continue
        peaks[index] = max(peaks.get(index, 0.0), used / 1024.0)
    return [round(peaks[i], 2) for i in sorted(peaks)]


def record(
    one: Path,
    several: Path,
    gpus: int,
    card: str,
    smi_one: Path | None = None,
    smi_several: Path | None = None,
) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for stage in TRAINING:
        a, b = stage_rate(one, stage), stage_rate(several, stage)
        if a is None or b is None:
            continue
        stages[stage] = {"one": a, "several": b, "speedup": round(b["it_s"] / a["it_s"], 3)}
    return {
        "card": card,
        "gpus": gpus,
        "stages": stages,
        "peak_used_gib_per_card": {"one": smi_peaks(smi_one), "several": smi_peaks(smi_several)},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--one", type=Path, required=True, help="the project trained on one GPU")
    p.add_argument("--several", type=Path, required=True, help="the project trained with --gpus N")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--card", required=True)
    p.add_argument("--smi-one", type=Path, default=None)
    p.add_argument("--smi-several", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    out = record(a.one, a.several, a.gpus, a.card, a.smi_one, a.smi_several)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    for stage, v in out["stages"].items():
        print(
            f"{stage}: {v['one']['ms_per_step']} -> {v['several']['ms_per_step']} ms/step ({v['speedup']}x)"
        )
    print("peak memory.used per card (GiB):", out["peak_used_gib_per_card"])
    return out


if __name__ == "__main__":
    main()
