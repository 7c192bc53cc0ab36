"""Merge the per-variant records of ``bench_guidance.py --calls-json`` (and ``bench_invert.py`` results) into issue
27's ``guidance_calls.json``.

    python benchmarks/guidance_calls.py OUT/calls_*.json --invert OUT/invert_*.json --out guidance_calls.json

Per prior (``sd``, ``zero123``, ``video``, ``controlnet``) the fastest variant that passes the gradient agreement
rule (``guidance/agreement.py``: cosine >= 0.999, norm error <= 1 %) gives ``ms``, ``tflop``, ``share_of_peak``
and ``grad_cosine``, with its ``variant`` named; fp8 variants are lower precision and go to ``fp8`` instead (held
to a cosine of 0.98). ``baseline`` is the ``graphs`` variant (the stages' defaults) where it was measured,
``variants`` every record. ``dense_tflops`` is the highest dense rate measured by the merged runs (each
measured its own, on the same card); ``card`` must be the same in all of them. ``invert_minutes`` is the fastest
``bench_invert.py`` result projected to 3,000 steps whose step passed the rule (``--agreement``; a run without
the check is the plain step), with its options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRIORS = ("sd", "zero123", "video", "controlnet")


def _passes(entry: dict[str, Any], fp8: bool) -> bool:
    from animate124.guidance.agreement import COSINE_MIN, FP8_COSINE_MIN, NORM_ERROR_MAX

    cos, err = entry.get("grad_cosine"), entry.get("grad_norm_error")
    if cos is None or err is None:
        return False
    return cos >= (FP8_COSINE_MIN if fp8 else COSINE_MIN) and (fp8 or err <= NORM_ERROR_MAX)


def merge(records: list[dict[str, Any]], inverts: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of issue 27 from per-variant records (``bench_guidance.calls_record``) and invert results."""
    cards = {r["card"] for r in records} | {i["device"] for i in inverts}
    if len(cards) > 1:
        raise SystemExit(f"records from different cards: {sorted(cards)}")
    dense = [r["dense_tflops"] for r in records if r.get("dense_tflops")]
    out: dict[str, Any] = {
        "card": cards.pop() if cards else None,
        "dense_tflops": max(dense) if dense else None,
    }
    variants: dict[str, dict[str, Any]] = {}
    for r in records:
        variants.setdefault(r["variant"], {}).update({p: r[p] for p in PRIORS if p in r})
    fp8: dict[str, Any] = {}
    for prior in PRIORS:
        for group, want_fp8 in ((out, False), (fp8, True)):
            ok = [
                (v, e[prior])
                for v, e in variants.items()
                if prior in e and v.startswith("fp8") == want_fp8 and _passes(e[prior], want_fp8)
            ]
            if ok:
                v, e = min(ok, key=lambda ve: ve[1]["ms"])
                group[prior] = {**e, "variant": v}
                if out["dense_tflops"] and e.get("achieved_tflop_s"):
                    group[prior]["share_of_peak"] = round(e["achieved_tflop_s"] / out["dense_tflops"], 4)
    if "graphs" in variants:
        out["baseline"] = variants["graphs"]
    out["fp8"] = fp8
    out["variants"] = variants
    same_maths = [i for i in inverts if "grad_cosine" not in i or _passes(i, fp8=False)]
    if same_maths:
        best = min(same_maths, key=lambda i: i["paper_3000_steps_min"])
        out["invert_minutes"] = round(best["paper_3000_steps_min"], 2)
        out["invert"] = {
            k: best.get(k)
            for k in ("s_per_step", "tflop_per_step", "achieved_tflop_s", "peak_gib", "options")
        }
    if inverts:
        out["invert_runs"] = [
            {
                "minutes": round(i["paper_3000_steps_min"], 2),
                "options": i.get("options"),
                "grad_cosine": i.get("grad_cosine"),
            }
            for i in inverts
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", nargs="*", type=Path, help="bench_guidance.py --calls-json files")
    p.add_argument("--invert", nargs="*", type=Path, default=[], help="bench_invert.py --out files")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    records = [json.loads(f.read_text()) for f in args.records if f.is_file()]
    inverts = [json.loads(f.read_text()) for f in args.invert if f.is_file()]
    rec = merge(records, inverts)
    args.out.write_text(json.dumps(rec, indent=1))
    for prior in PRIORS:
        e = rec.get(prior)
        line = "no variant passed the rule" if e is None else (
            f"{e['ms']:8.1f} ms  {e['tflop']:7.2f} TFLOP  {e.get('share_of_peak') or 0:6.1%} of peak  "
            f"cos {e['grad_cosine']:.6f}  ({e['variant']})"
        )  # fmt: skip
        print(f"{prior:<11} {line}")
    if "invert_minutes" in rec:
        print(f"invert      {rec['invert_minutes']:.2f} min for 3000 steps  ({rec['invert']['options']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
