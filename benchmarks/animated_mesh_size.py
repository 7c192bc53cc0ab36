"""How an exported file grows with the frame count: the animated mesh (integer and float vertex data, a texture
atlas or vertex colours) against the flipbook, on one trained project (issue 32, BENCHMARKS.md §11).

Runs ``animate124 export`` on the project for every layout and frame count (each export replaces the last
one's files, so each size is read right after its export), and writes a JSON object: per export the frame
count, the glb's bytes, vertices and triangles, the seconds, the fit error and the position grid step; per
layout the growth per frame between the smallest and the largest frame count, per triangle, and its ratio to
the flipbook's (at equal triangles: the flipbook's meshes have their own triangle counts).

    animate124 run-all examples/toy.png "a toy is spinning" --preset tiny -p /tmp/toy
    python benchmarks/animated_mesh_size.py -p /tmp/toy --frames 4 16 64 --out animated_mesh_size.json
    python benchmarks/animated_mesh_size.py -p /tmp/toy --frames 2 3 --quick --out /tmp/s.json   # smoke

``--resolution`` and ``--max-faces`` go to every export; ``--quick`` exports at 32³ without turntables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The layouts: name -> the export's own options.
LAYOUTS: dict[str, list[str]] = {
    "animated, atlas, integer": [],
    "animated, atlas, float": ["--no-quantize"],
    "animated, vertex colours, integer": ["--texture", "vertex"],
    "animated, vertex colours, float": ["--texture", "vertex", "--no-quantize"],
    "flipbook": ["--flipbook"],
}


def export(project: Path, frames: int, options: list[str], extra: list[str]) -> dict[str, Any]:
    """One ``animate124 export``; its metrics from the manifest, and its wall seconds."""
    cmd = ["animate124", "export", "-p", str(project), "--frames", str(frames), "--quiet", *options, *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    m = json.loads((project / "manifest.json").read_text())["stages"]["export"]["metrics"]
    row = {"frames": frames, "bytes": m["glb_bytes"], "seconds": round(seconds, 1), "faces": m["faces_mean"]}
    for key in ("vertices", "quantized", "position_step", "texture"):
        if key in m:
            row[key] = m[key]
    if "fit_error_max" in m:
        row["fit_error_max_percent"] = round(100 * max(m["fit_error_max"]), 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--project", type=Path, required=True)
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--max-faces", type=int)
    ap.add_argument("--quick", action="store_true", help="32³, no turntables: a smoke test")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    extra: list[str] = []
    if args.quick:
        extra += ["--resolution", "32", "--set", "export.turntable=0", "--set", "export.texture_size=128"]
    elif args.resolution:
        extra += ["--resolution", str(args.resolution)]
    if args.max_faces is not None:
        extra += ["--max-faces", str(args.max_faces)]
    results: dict[str, Any] = {"project": str(args.project), "export_options": extra, "layouts": {}}
    for name in args.layouts:
        rows = [export(args.project, n, LAYOUTS[name], extra) for n in sorted(args.frames)]
        first, last = rows[0], rows[-1]
        growth = (last["bytes"] - first["bytes"]) / max(last["frames"] - first["frames"], 1)
        results["layouts"][name] = {
            "exports": rows,
            "growth_per_frame_bytes": round(growth, 1),
            "growth_per_frame_per_triangle_bytes": round(growth / last["faces"], 3),
        }
        print(f"{name}: {[r['bytes'] for r in rows]} B, {growth / 1e3:.1f} kB a frame", file=sys.stderr)
    flip = results["layouts"].get("flipbook")
    if flip:
        for lay in results["layouts"].values():
            ratio = lay["growth_per_frame_per_triangle_bytes"] / flip["growth_per_frame_per_triangle_bytes"]
            lay["ratio_to_flipbook_at_equal_triangles"] = round(ratio, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, lay in results["layouts"].items():
        r = lay.get("ratio_to_flipbook_at_equal_triangles")
        print(f"{name:36s} {lay['growth_per_frame_bytes'] / 1e3:8.1f} kB/frame  ratio {r}")


if __name__ == "__main__":
    main()
