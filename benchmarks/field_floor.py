"""The floor of the NeRF side of a dynamic step, counted from the paper config (issue 26; CPU, no GPU).

Counts, per live sample and per level of the paper grid, what the field work must move: the cells, table
rows and 32-byte L2 sectors that the sample's six finite-difference neighbours (``x ± ε e_d``, clamped to the
box, as ``RadianceField.normals``) touch, evaluated separately (today: six field evaluations, each its own
gather) or together (one stencil kernel whose lanes of a sample sit in one warp, so a sector they share is
fetched once), and the backward's reductions (today one per pair per neighbour; together, the neighbours
sharing the sample's cell add their corner gradients first). The positions are random points of the box
(Monte Carlo, seeded), the cells, rows and wrap-around come from the real layout (``grid_layout``).

Then the whole dynamic step (samples, their normals, the points-form time TV, the table-sized traffic per
encoder call) is converted into time at stated rates: the card's HBM and L2 bandwidths, FP32 and FP16 matrix
rates, and the gather and reduction rates our own kernels reached on an H100 (BENCHMARKS.md §2). The floor
is the largest of the per-resource times (perfect overlap); their sum is printed too.

    python benchmarks/field_floor.py --out benchmarks/results/field_floor.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTOR = 32  # bytes of an L2 sector
#: measured §8.9 (H200, fresh paper field, 16 × 128² clip): samples, live share, render + backward total
STEP_SAMPLES = 8.16e6
LIVE_SHARE = 0.42
TODAY_MS_H200 = 249.1
#: rates (TB/s, TFLOP/s, G reductions/s), with where each comes from; the JSON keeps them
RATES = {
    "hbm_tbs": (3.35, "H100 SXM HBM3 peak (NVIDIA datasheet); H200: 4.8"),
    "l2_tbs": (
        7.0,
        "H100 L2 to SMs: ~5.5 TB/s measured on the 114-SM PCIe card (Chips and Cheese, 2023), "
        "scaled to 132 SMs at SXM clocks; the brief's '~10 TB/s order' is shown as well",
    ),
    "l2_tbs_optimistic": (10.0, "the brief's order of magnitude"),
    "gather_tbs_measured": (
        None,
        "our quad-table forward: 2^20 points x 16 levels x 2 sectors in 0.62 ms (§2)",
    ),
    "reductions_gps_measured": (None, "our pair backward: 2^20 x 16 x 4 red.v4 in 0.92 ms (§2)"),
    "fp32_tflops": (67.0, "H100 SXM FP32 FMA peak (datasheet)"),
    "fp16_tc_tflops": (989.0, "H100 SXM dense FP16 tensor-core peak (datasheet)"),
}
L2_BYTES = 50 * 2**20  # H100 and H200: 50 MB


def measured_rates() -> dict[str, float]:
    """Rates our own kernels reached on an H100 (BENCHMARKS.md §2), as plain numbers."""
    pts = 2**20
    return {
        "gather_tbs_measured": pts * 16 * 2 * SECTOR / 0.62e-3 / 1e12,
        "reductions_gps_measured": pts * 16 * 4 / 0.92e-3 / 1e9,
    }


def _distinct(a: np.ndarray) -> np.ndarray:
    """Distinct values along the last axis, per row: ``[..., k] -> [...]``."""
    s = np.sort(a, axis=-1)
    return 1 + (np.diff(s, axis=-1) != 0).sum(-1)


def level_rows(lv, cells: np.ndarray) -> np.ndarray:
    """Rows within the level of the 8 corners of ``cells [..., 3]`` (int64), ``[..., 8]``; corner ``k`` is
    ``x + bit0, y + bit1, z + bit2`` (the kernels' order), index as ``layout.level_index``."""
    out = []
    for k in range(8):
        c = cells + np.array([k & 1, (k >> 1) & 1, (k >> 2) & 1])
        if lv.hashed:
            idx = (
                (c[..., 0] * 1)
                ^ ((c[..., 1] * 2654435761) & 0xFFFFFFFF)
                ^ ((c[..., 2] * 805459861) & 0xFFFFFFFF)
            )
        else:
            idx = c[..., 0] * lv.strides[0] + c[..., 1] * lv.strides[1] + c[..., 2] * lv.strides[2]
        out.append((idx & 0xFFFFFFFF) % lv.table_size)
    return np.stack(out, -1)


def stencil_counts(layout, eps: float, bound: float, n: int, seed: int) -> list[dict]:
    """Per level, means over ``n`` random points of the box (module docstring)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 3), dtype=np.float64) * 2 - 1).astype(np.float32) * np.float32(bound)
    offs = np.concatenate([np.eye(3), -np.eye(3)]).astype(np.float32) * np.float32(eps)  # +x,+y,+z,-x,-y,-z
    pts = np.clip(x[:, None, :] + offs[None], -bound, bound)  # [n, 6, 3]
    allp = np.concatenate([pts, x[:, None, :]], 1)  # [n, 7, 3]: the six, then the sample
    u = (allp + np.float32(bound)) / np.float32(2 * bound)
    res = []
    for lv in layout.levels:
        pos = u * np.float32(lv.scale) + np.float32(0.5)
        cells = np.floor(pos).astype(np.int64)  # [n, 7, 3]
        rows = level_rows(lv, cells)  # [n, 7, 8]
        six = rows[:, :6]
        same = (cells[:, :6] == cells[:, 6:7]).all(-1)  # [n, 6] neighbour in the sample's cell
        cell_key = (cells[..., 0] * 8191 + cells[..., 1]) * 8191 + cells[..., 2]
        # slot pair table (today's clip path): 16-byte rows; loads at the corners 0, 2, 4, 6; sector = row // 2
        pair_sec = six[..., ::2] // 2
        # plain table [rows, 2] fp32: 8-byte rows, sector = row // 4
        raw_sec = six // 4
        shared = same.sum(1)
        groups = (shared > 0).astype(np.float64) + (6 - shared)  # reduction groups after pre-reduction
        sample_pair = _distinct(rows[:, 6, ::2] // 2)
        zdrop = lv.strides[2] == 0 and not lv.hashed
        res.append(
            {
                "level": lv.level,
                "scale": lv.scale,
                "eps_cells": eps / (2 * bound) * lv.scale,
                "rows": lv.table_size,
                "z_dropped": zdrop,
                "wraps": lv.wraps,
                "p_neighbour_in_sample_cell": float(same.mean()),
                "cells_6": float(_distinct(cell_key[:, :6]).mean()),
                "cells_7": float(_distinct(cell_key).mean()),
                "rows_separate": float(sum(_distinct(six[:, i]).mean() for i in range(6))),
                "rows_union": float(_distinct(six.reshape(n, -1)).mean()),
                "sectors_pair_separate": float(sum(_distinct(pair_sec[:, i]).mean() for i in range(6))),
                "sectors_pair_union": float(_distinct(pair_sec.reshape(n, -1)).mean()),
                "sectors_raw_separate": float(sum(_distinct(raw_sec[:, i]).mean() for i in range(6))),
                "sectors_raw_union": float(_distinct(raw_sec.reshape(n, -1)).mean()),
                "sectors_pair_sample": float(sample_pair.mean()),
                "sectors_raw_sample": float(_distinct(rows[:, 6] // 4).mean()),
                "reductions_separate_pairv4": 24.0,  # today: 4 red.v4 per neighbour (pair backward)
                # fused: one 16-byte pair reduction per x-pair and group, 2 pairs where z is ignored
                "reductions_fused_pairv4": float((2 if zdrop else 4) * groups.mean()),
                "reductions_sample_zmerged": 2.0 if zdrop else 4.0,
            }
        )
    return res


def step_model(levels: list[dict], cfg_field, args, rates: dict[str, float]) -> dict:
    """Bytes, reductions and FLOPs of one dynamic step, today's design and the fused stencil's."""

    def tot(key: str) -> float:
        return sum(lv[key] for lv in levels)

    m = args.samples
    live = m * args.live_share
    hid, feat = cfg_field.hidden_dim, cfg_field.num_levels * cfg_field.level_dim
    t_grids = cfg_field.time_grid_size
    grid_bytes = levels[-1]["_offset_end"] * cfg_field.level_dim * 4
    table_bytes = t_grids * grid_bytes
    frames = args.frames
    mlp_density = 2 * (feat * hid + hid)  # FLOP of a density-only evaluation (32->64->1)
    mlp_full = 2 * (feat * hid + hid * 4)
    # the sample pass: forward (slot pairs) + backward (pair reductions), MLP 32->64->4 fwd + 2x bwd
    sample = {
        "sectors": m * tot("sectors_pair_sample"),
        "reductions": m * 4 * len(levels),
        "flop": m * 3 * mlp_full,
    }
    tv_pts = args.tv_points * t_grids
    tv = {  # points-form time TV: every grid at the points, forward, recompute, backward (plain kernels)
        "sectors": tv_pts * 2 * tot("sectors_raw_sample"),
        "reductions": tv_pts * 8 * len(levels),
        "flop": 0.0,
    }
    segs = math.ceil(live / 2**18)  # normals' checkpoint segments (renderer default)
    today_normals = {
        "sectors": live * 2 * tot("sectors_pair_separate"),  # forward + recompute
        "reductions": live * tot("reductions_separate_pairv4"),
        "flop": live * 6 * 4 * mlp_full,  # 2 forwards + backward (2x), all four outputs
    }
    fused_built = {  # the first fused kernel (§15.2): forward; backward gathers twice (recompute, features for dW1)
        "sectors": live * 3 * tot("sectors_pair_union"),
        "reductions": live * tot("reductions_fused_pairv4"),
        "flop": live * 6 * 4 * mlp_density,
    }
    fused_split = {  # the backward in three kernels (stencil.py): one gather in backward, features kept in HBM
        "sectors": live * 2 * tot("sectors_pair_union"),
        "reductions": live * tot("reductions_fused_pairv4"),
        "flop": live * 6 * 4 * mlp_density,  # forward, recompute, dfeat = dhid·W1, dW1 = dhidᵀ·feat
    }
    fused_floor = {  # one gather forward, one in backward (features kept), pre-reduced pair adds
        "sectors": live * 2 * tot("sectors_pair_union"),
        "reductions": live * tot("reductions_fused_pairv4"),
        "flop": live * 6 * 3 * mlp_density,
    }
    sample_floor = {  # z-merged reductions, and none for the samples behind early termination (zero grad)
        "sectors": sample["sectors"],
        "reductions": live * tot("reductions_sample_zmerged"),
        "flop": sample["flop"],
    }
    slot_raw = frames * grid_bytes  # a clip's blended tables as [rows, 2] fp32
    slot_pair = 2 * slot_raw  # ... as pair tables [rows, 4]
    # table-sized HBM traffic per encoder call: forward, the blend (read 2 grids per slot, write the pair
    # tables); backward, zero and read the slot gradient, write the table gradient, autograd's accumulation
    # (read 2, write 1)
    per_call_fwd = 2 * slot_raw + slot_pair
    per_call_bwd = 2 * slot_pair + table_bytes + 3 * table_bytes
    hbm_today = (1 + 2 * segs) * per_call_fwd + (1 + segs) * per_call_bwd
    # fused: the samples' call as today; the normals one forward, one backward that rebuilds the pair tables
    hbm_fused = 3 * per_call_fwd + 2 * per_call_bwd
    # the split backward's per-lane buffers of a chunk (written, then read): features, their gradients, dh,
    # the ReLU bits; and its per-program partial sums (kernel 1: H + 1 per block; kernel 2: H·F + H per program)
    from animate124.scene.grid import stencil as S

    lane_bytes = 2 * (feat * 4 + feat * 4 + 4 + 4 * -(-hid // 16))
    part_bytes = 2 * 4 * ((hid + 1) / S.MLP_BLOCK + (hid * feat + hid) * 6 / (S.TILE * S.TILES_PER_PROGRAM))
    stream_split = live * (6 * lane_bytes + part_bytes)
    # floor: every call's slot gradient into one buffer, one table gradient per step
    hbm_floor = 2 * per_call_fwd + 2 * 2 * slot_pair + table_bytes
    # time TV's table gradient (one node, written and added) and Adam (p, g, m, v read; p, m, v written)
    hbm_common = 4 * table_bytes + 7 * table_bytes
    # today's per-sample streams of the six evaluations (features fp32 + fp16 copy, hidden fp16 (ReLU in
    # place, read by the next layer and backward), outputs, positions), in forward, recompute and backward
    stream_today = live * 6 * 3 * (feat * 4 + feat * 2 * 2 + hid * 2 * 3 + 4 * 2 * 2 + 12 + 4)
    designs = {
        "today": ([sample, today_normals, tv], hbm_today + stream_today),
        "fused_built": ([sample, fused_built, tv], hbm_fused),
        "fused_split": ([sample, fused_split, tv], hbm_fused + stream_split),
        "floor": ([sample_floor, fused_floor, tv], hbm_floor),
    }
    part_names = ("samples", "normals", "time_tv")
    out = {"hbm_table_bytes": table_bytes, "grid_bytes": grid_bytes, "normal_segments": segs, "designs": {}}
    for name, (parts, hbm_calls) in designs.items():
        sectors = sum(p["sectors"] for p in parts)
        red = sum(p["reductions"] for p in parts)
        flop = sum(p["flop"] for p in parts)
        hbm = hbm_calls + hbm_common
        t = {
            "l2_ms": sectors * SECTOR / (rates["l2_tbs"] * 1e12) * 1e3,
            "l2_optimistic_ms": sectors * SECTOR / (rates["l2_tbs_optimistic"] * 1e12) * 1e3,
            "gather_measured_ms": sectors * SECTOR / (rates["gather_tbs_measured"] * 1e12) * 1e3,
            "reductions_measured_ms": red / (rates["reductions_gps_measured"] * 1e9) * 1e3,
            "hbm_ms": hbm / (rates["hbm_tbs"] * 1e12) * 1e3,
            "mlp_fp32_ms": flop / (rates["fp32_tflops"] * 1e12) * 1e3,
            "mlp_fp16_tc_ms": flop / (rates["fp16_tc_tflops"] * 1e12) * 1e3,
        }
        hw = {k: t[k] for k in ("l2_ms", "reductions_measured_ms", "hbm_ms", "mlp_fp16_tc_ms")}
        ours = {k: t[k] for k in ("gather_measured_ms", "reductions_measured_ms", "hbm_ms", "mlp_fp32_ms")}
        out["designs"][name] = {
            "parts": dict(zip(part_names, parts, strict=True)),
            "l2_sectors": sectors,
            "l2_bytes": sectors * SECTOR,
            "reductions": red,
            "mlp_flop": flop,
            "hbm_bytes": hbm,
            "times_ms": t,
            "floor_ms": max(hw.values()),
            "floor_serial_ms": sum(hw.values()),
            "at_our_kernel_rates_ms": max(ours.values()),
            "at_our_kernel_rates_serial_ms": sum(ours.values()),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--points", type=int, default=200_000, help="Monte Carlo points")
    p.add_argument("--samples", type=float, default=STEP_SAMPLES)
    p.add_argument("--live-share", type=float, default=LIVE_SHARE)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--tv-points", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from animate124.config import resolve_config
    from animate124.scene.grid import grid_layout
    from animate124.stages.build import grid_config

    cfg = resolve_config("paper", None, {}, [])
    f = cfg.field
    layout = grid_layout(grid_config(f), 1.0)
    eps = cfg.raymarch.normal_eps
    levels = stencil_counts(layout, eps, 1.0, args.points, args.seed)
    levels[-1]["_offset_end"] = layout.total_entries
    rates = {k: v for k, (v, _) in RATES.items() if v is not None}
    rates.update(measured_rates())
    model = step_model(levels, f, args, rates)
    levels[-1].pop("_offset_end")

    cols = [
        ("l", "level", "{:d}"), ("s_l", "scale", "{:.0f}"), ("ε/cell", "eps_cells", "{:.3f}"),
        ("rows", "rows", "{:d}"), ("z?", "z_dropped", "{}"), ("P(same)", "p_neighbour_in_sample_cell", "{:.2f}"),
        ("cells6", "cells_6", "{:.2f}"), ("rows 6×/∪", None, None), ("sect pair 6×/∪", None, None),
        ("sect raw ∪", "sectors_raw_union", "{:.1f}"), ("red 24→", "reductions_fused_pairv4", "{:.1f}"),
    ]  # fmt: skip
    print(" | ".join(c[0] for c in cols))
    for lv in levels:
        cells = []
        for head, key, fmt in cols:
            if head.startswith("rows 6"):
                cells.append(f"{lv['rows_separate']:.1f}/{lv['rows_union']:.1f}")
            elif head.startswith("sect pair"):
                cells.append(f"{lv['sectors_pair_separate']:.1f}/{lv['sectors_pair_union']:.1f}")
            else:
                cells.append(fmt.format(lv[key]))
        print(" | ".join(cells))
    keys = ("rows_separate", "rows_union", "sectors_pair_separate", "sectors_pair_union", "sectors_raw_union",
            "reductions_separate_pairv4", "reductions_fused_pairv4", "sectors_pair_sample")  # fmt: skip
    per_sample = {k: sum(lv[k] for lv in levels) for k in keys}
    print("per live sample, all levels:", json.dumps({k: round(v, 1) for k, v in per_sample.items()}))
    for name, d in model["designs"].items():
        t = {k: round(v, 2) for k, v in d["times_ms"].items()}
        print(
            f"{name}: L2 {d['l2_bytes'] / 1e9:.1f} GB, {d['reductions'] / 1e9:.2f} G reductions, "
            f"HBM {d['hbm_bytes'] / 1e9:.1f} GB, MLP {d['mlp_flop'] / 1e9:.0f} GFLOP -> {t}; "
            f"floor {d['floor_ms']:.1f} ms (serial {d['floor_serial_ms']:.1f}); at our kernels' rates "
            f"{d['at_our_kernel_rates_ms']:.1f} ms (serial {d['at_our_kernel_rates_serial_ms']:.1f})"
        )
        for part, v in d["parts"].items():
            print(
                f"    {part}: L2 {v['sectors'] * SECTOR / 1e9:.1f} GB, {v['reductions'] / 1e9:.2f} G reductions"
            )
    result = {
        "config": {
            "grid_type": f.grid_type,
            "num_levels": f.num_levels,
            "level_dim": f.level_dim,
            "base_resolution": f.base_resolution,
            "desired_resolution": f.desired_resolution,
            "log2_table_size": f.log2_table_size,
            "time_grid_size": f.time_grid_size,
            "hidden_dim": f.hidden_dim,
            "num_layers": f.num_layers,
            "normal_eps": eps,
            "table_dtype": "float32",
            "total_rows_per_grid": layout.total_entries,
        },
        "step": {
            "samples": args.samples,
            "live_share": args.live_share,
            "frames": args.frames,
            "tv_points": args.tv_points,
            "today_ms_h200": TODAY_MS_H200,
        },
        "rates": {k: {"value": rates[k], "source": RATES[k][1]} for k in RATES},
        "l2_bytes": L2_BYTES,
        "levels": levels,
        "per_live_sample": per_sample,
        "model": model,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
