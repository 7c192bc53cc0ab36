"""Issue 30's record: the output commands at paper scale, from the ``capped_cli.py --record`` files.

``gpu_outputs.sh`` runs each output command once through ``benchmarks/capped_cli.py --record REC/<name>.json``;
this script gathers those records into one JSON (``card``, ``cap_gib``, and per command ``seconds``,
``peak_gib``, ``peak_reserved_gib``, ``peak_host_gib``, ``exit_code``), adds what the outputs are (the render
settings each command used, the files it wrote with their sizes, the exported glb as trimesh reads it), prints
a table and writes ``--out``:

    python benchmarks/outputs_gpu.py --records /tmp/a124/outs/rec --project /tmp/a124/outs/runs/toy \\
        --card "NVIDIA H100 80GB HBM3" --out benchmarks/results/outputs_gpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COMMANDS = (
    "render_orbit",
    "render_views",
    "render_stills",
    "export_flipbook",
    "export",
    "evaluate",
    "report",
)


def glb_summary(path: Path) -> dict[str, Any]:
    """The glb as trimesh loads it: meshes, vertices and faces of the first, and its bounds."""
    import trimesh

    scene = trimesh.load(str(path), force="scene")
    geoms = list(scene.geometry.values())
    first = geoms[0] if geoms else None
    return {
        "bytes": path.stat().st_size,
        "meshes": len(geoms),
        "vertices_first": int(len(first.vertices)) if first is not None else 0,
        "faces_first": int(len(first.faces)) if first is not None else 0,
        "bounds": scene.bounds.round(4).tolist() if scene.bounds is not None else None,
    }


def gather(records: Path, project: Path | None, card: str) -> dict[str, Any]:
    """One record per command found in ``records`` (missing ones are listed under ``not_run``)."""
    out: dict[str, Any] = {"card": card, "commands": {}, "not_run": []}
    for name in COMMANDS:
        f = records / f"{name}.json"
        if not f.is_file():
            out["not_run"].append(name)
            continue
        rec = json.loads(f.read_text())
        out["cap_gib"] = rec.get("cap_gib")
        keep = ("argv", "exit_code", "seconds", "peak_gib", "peak_reserved_gib", "peak_host_gib")
        out["commands"][name] = {k: rec.get(k) for k in keep}
    if project is not None and (project / "manifest.json").is_file():
        man = json.loads((project / "manifest.json").read_text())
        stages = man.get("stages", {})
        out["settings"] = {
            "render": {k: v for k, v in stages.get("render", {}).get("outputs", {}).items()},
            "export": stages.get("export", {}).get("metrics"),
            "evaluate": stages.get("evaluate", {}).get("metrics"),
        }
        glbs = sorted((project / "export").rglob("*.glb")) if (project / "export").is_dir() else []
        out["glbs"] = {}
        for glb in glbs:  # mesh.glb (animated) and flipbook.glb
            try:
                out["glbs"][glb.relative_to(project).as_posix()] = glb_summary(glb)
            except Exception as e:  # noqa: BLE001 - a record of what went wrong, not a crash
                out["glbs"][glb.relative_to(project).as_posix()] = {"error": f"{type(e).__name__}: {e}"}
    return out


def table(rec: dict[str, Any]) -> str:
    rows = [f"{'command':<15} {'s':>8} {'peak GiB':>9} {'reserved':>9} {'host GiB':>9} exit"]
    for name, r in rec["commands"].items():
        rows.append(
            f"{name:<15} {r['seconds']:>8.1f} {r['peak_gib'] or 0:>9.2f} {r['peak_reserved_gib'] or 0:>9.2f}"
            f" {r['peak_host_gib']:>9.2f} {r['exit_code']}"
        )
    if rec["not_run"]:
        rows.append(f"not run: {', '.join(rec['not_run'])}")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True)
    ap.add_argument("--project", type=Path)
    ap.add_argument("--card", default="unknown")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rec = gather(args.records, args.project, args.card)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    print(table(rec))


if __name__ == "__main__":
    main()
