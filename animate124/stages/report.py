"""The report: one self-contained ``<project>/report.html`` over the whole project.

Everything is in the one file (CSS inline, charts as inline SVG, no script, no font, nothing from the
network) except the project's own images and videos, which it links relatively — so the page works
when opened from disk, and keeps working when the project folder is moved or zipped.

What it shows, from the project alone: the input image, its matte and depth; the prompts (from
``config/<stage>.yaml``); per training stage its status, time, speed and peak memory (manifest), its
previews (``<stage>/previews/latest.png``, ``latest.mp4``), loss curves and gradient balance
(``logs/<stage>.jsonl``: ``loss/*`` and ``grad/*``); the render videos and stills
(``stages.render.outputs``), stages in the order they ran; the exported meshes; the metrics
(``metrics.json``); each stage's resolved config and the library versions.

This module only gathers those values; the page is the Jinja2 template ``templates/report.html.j2``
(autoescaped) and the charts come from :mod:`animate124.stages.report_charts` (matplotlib, SVG).

:func:`run_report_stage` writes the page only when its content changed (a hash of the page without its
"written on" time is kept in the manifest under ``stages.report``), so a ``run-all`` on an up-to-date
project writes nothing and says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import urllib.parse
from pathlib import Path
from typing import Any

from animate124.project import Project, atomic_write_text
from animate124.stages.outputs import OutputStage
from animate124.stages.report_charts import PALETTE, grad_chart, loss_chart, scalar_series
from animate124.stages.spec import TRAINING_STAGES

log = logging.getLogger(__name__)

__all__ = ["REPORT_STAGE", "write_report", "report_page", "run_report_stage", "loss_curves", "metric_text"]

#: What ``run-all``'s progress callbacks are told when the report is written (not a registry stage).
REPORT_STAGE = OutputStage("report", ())

_STAGES = ("preprocess", "invert", *TRAINING_STAGES, "render", "export", "evaluate")
_TEMPLATE = "report.html.j2"


# ------------------------------------------------------------------------------------------ helpers
def _href(project: Project, path: Path | str) -> str:
    """A relative, URL-quoted link to a file of the project."""
    p = Path(path)
    rel = p.resolve().relative_to(project.root) if p.is_absolute() else p
    return "/".join(urllib.parse.quote(part) for part in rel.as_posix().split("/"))


def _fmt_seconds(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return str(v)


def metric_text(v: Any) -> str:
    """A metric for the page: 5 significant digits, so 0.99967 is not shown as "1"."""
    return _fmt_num(v, 5)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # a damaged file shows as missing; the page still renders
        return {}
    return data if isinstance(data, dict) else {}


def _figure(
    project: Project,
    path: Path,
    title: str,
    caption: str,
    *,
    video: bool = False,
    cls: str = "",
    size: Any = None,
) -> dict[str, Any]:
    try:
        pixel = int(size) < 160
    except (TypeError, ValueError):
        pixel = False
    return {
        "src": _href(project, path),
        "title": title,
        "caption": caption,
        "video": video,
        "cls": cls,
        "pixel": pixel,
    }


def loss_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``loss/<term>`` -> [(step, value)] from a JSONL log (bad lines and non-finite values skipped)."""
    return scalar_series(path, "loss/")


# ------------------------------------------------------------------------------------------ sections
def _inputs(project: Project) -> list[dict[str, Any]]:
    figs = []
    inputs = (
        sorted(p for p in project.input_dir.glob("*") if p.is_file()) if project.input_dir.is_dir() else []
    )
    for p in inputs[:1]:
        figs.append(_figure(project, p, "input", p.name))
    if project.rgba.is_file():
        figs.append(
            _figure(
                project,
                project.rgba,
                "matte",
                "preprocess/rgba.png (transparent = background)",
                cls="checker",
            )
        )
    if project.depth.is_file():
        figs.append(_figure(project, project.depth, "depth", "preprocess/depth.png"))
    return figs


def _prompts(project: Project) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    cfgs = {s: _read_yaml(project.config_path(s)) for s in ("invert", *TRAINING_STAGES)}
    for stage in TRAINING_STAGES:
        c = cfgs.get(stage) or next((v for v in cfgs.values() if v), {})
        p = ((c.get(stage) or {}).get("prompt") or "").strip()
        if p and project.config_path(stage).is_file():
            rows.append((stage, p))
    inv = (cfgs.get("invert") or {}).get("invert")
    if inv:
        rows.append(
            ("invert", f"token {inv.get('placeholder', '')} initialised from “{inv.get('initializer', '')}”")
        )
    return rows


def _peak(metrics: dict[str, Any]) -> str:
    for k in ("peak_allocated_gib", "peak_reserved_gib", "peak_memory_gib", "peak_rss_gib"):
        if isinstance(metrics.get(k), (int, float)):
            return f"{metrics[k]:.2f} GiB"
    return "–"


def _stage_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    stages = manifest.get("stages", {})
    rows = []
    # the report's own record is left out: the page must not change just because it was written
    for name in [*_STAGES, *[s for s in stages if s not in _STAGES and s != "report"]]:
        rec = stages.get(name)
        if rec is None:
            continue
        m = rec.get("metrics") or {}
        status = str(rec.get("status", "missing"))
        its = m.get("it_s")
        rows.append(
            {
                "name": name,
                "status": status,
                "error": rec.get("error") if rec.get("error") and status != "done" else "",
                "time": _fmt_seconds(rec.get("seconds")),
                "steps": m.get("steps", "–"),
                "its": _fmt_num(its, 3) if its is not None else "–",
                "peak": _peak(m),
                "finished": str(rec.get("finished", "") or "").replace("T", " ")[:16],
            }
        )
    return rows


def _training(project: Project, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    parts = []
    stages = manifest.get("stages", {})
    for stage in ("invert", *TRAINING_STAGES):
        log = project.log_path(stage)
        prev = project.stage(stage).previews
        if stages.get(stage) is None and not log.is_file():
            continue
        figs = []
        if (prev / "latest.png").is_file():
            figs.append(
                _figure(project, prev / "latest.png", stage, "previews/latest.png (front, side, back, side)")
            )
        if (prev / "latest.mp4").is_file():
            figs.append(
                _figure(project, prev / "latest.mp4", stage, "previews/latest.mp4", video=True, size=0)
            )
        steps = sorted(prev.glob("step-*.png")) if prev.is_dir() else []
        for p in steps[-3:-1] if len(steps) > 2 else []:
            figs.append(_figure(project, p, "", f"{stage} · {p.name}"))
        curves = sorted(loss_curves(log).items())
        grads = scalar_series(log, "grad/")
        parts.append(
            {
                "stage": stage,
                "figs": figs,
                "charts": [
                    loss_chart(stage, n, pts, PALETTE[i % len(PALETTE)]) for i, (n, pts) in enumerate(curves)
                ],
                "grad": grad_chart(stage, grads) if grads else "",
                "has_log": log.is_file(),
            }
        )
    return parts


def _stage_order(stage: str) -> int:
    """The order the stages ran in (static, dynamic, refine), for grouping renders."""
    return TRAINING_STAGES.index(stage) if stage in TRAINING_STAGES else len(TRAINING_STAGES)


def _render_order(item: tuple[str, dict[str, Any]]) -> tuple:
    rel, d = item
    channels = ("color", "depth", "normal", "opacity")
    ch = channels.index(d["channel"]) if d.get("channel") in channels else 9
    kind = {"video": 0, "image": 1, "gif": 2, "frames": 3}.get(d.get("kind", ""), 9)
    stage = d.get("stage", "")
    return (_stage_order(stage), stage, kind, d.get("shot", ""), d.get("view") is not None, ch, rel)


def _renders(project: Project, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    outputs = (manifest.get("stages", {}).get("render") or {}).get("outputs") or {}
    items = [(k, v) for k, v in outputs.items() if (project.root / k).exists()]
    groups: dict[str, dict[str, Any]] = {}
    for rel, d in sorted(items, key=_render_order):
        g = groups.setdefault(d.get("stage", "?"), {"stage": d.get("stage", "?"), "figs": [], "links": []})
        kind = d.get("kind")
        what = f"{d.get('shot', '')} · {d.get('channel', '')}"
        if kind == "video" and d.get("view") is None:
            cap = f"{rel} · {d.get('frames')} frames at {d.get('fps')} fps"
            if d.get("channel") == "depth" and "near" in d:
                cap += f" · depth {float(d['near']):.2f}–{float(d['far']):.2f}"
            span = "span" if d.get("shot") == "views" else ""  # a grid of several views gets a row of its own
            g["figs"].append(
                _figure(project, project.root / rel, what, cap, video=True, size=d.get("size"), cls=span)
            )
        elif kind == "image" and d.get("view") is None:
            cls = "checker" if d.get("rgba") else ""
            g["figs"].append(_figure(project, project.root / rel, what, rel, size=d.get("size"), cls=cls))
        else:
            g["links"].append({"href": _href(project, project.root / rel), "name": Path(rel).name})
    return list(groups.values())


def _meshes(project: Project, manifest: dict[str, Any]) -> dict[str, Any] | None:
    rec = manifest.get("stages", {}).get("export") or {}
    outputs = {k: v for k, v in (rec.get("outputs") or {}).items() if (project.root / k).exists()}
    if not outputs:
        return None
    rows = []
    for rel, d in sorted(outputs.items()):
        p = project.root / rel
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.glob("*") if f.is_file())
        rows.append(
            {
                "href": _href(project, p),
                "name": rel,
                "kind": d.get("kind", ""),
                "stage": d.get("stage", ""),
                "frames": d.get("frames", 1),
                "size": f"{size / 1e6:.2f} MB",
            }
        )
    m = rec.get("metrics") or {}
    note = ""
    if m:
        how = (
            "auto: the level whose silhouette matches the renders"
            if m.get("threshold_auto")
            else "set by hand"
        )
        closed = "watertight" if m.get("watertight") else "not watertight"
        note = (
            f"Last export: {m.get('stage')}, density level {_fmt_num(m.get('threshold'))} ({how}), "
            f"grid {m.get('resolution')}³, {closed}."
        )
        if m.get("mode") == "animated" and m.get("fit_error_max"):
            worst = max(m["fit_error_max"])
            verdict = (
                "within" if m.get("fit_ok") else f"over at {len(m.get('fit_frames_over') or [])} frame(s) of"
            )
            note += (
                f" One mesh of {m.get('vertices')} vertices / {m.get('faces')} triangles follows "
                f"{m.get('frames')} frames; its largest distance from a frame's surface is "
                f"{100 * worst:.2g} % of the object's size, {verdict} the tolerance of "
                f"{100 * float(m.get('fit_tolerance', 0)):.3g} %."
            )
    figs = []
    for key, title, video in (("turntable_png", "turntable", False), ("turntable_mp4", "turntable", True)):
        rel = m.get(key)
        if rel and (project.root / rel).is_file():
            figs.append(_figure(project, project.root / rel, title, rel, video=video))
    chart = None
    if m.get("mode") == "animated" and m.get("fit_error_max"):
        from animate124.stages.report_charts import fit_chart

        chart = fit_chart(
            str(m.get("stage")), m.get("fit_error_mean") or [], m["fit_error_max"], m.get("fit_tolerance", 0)
        )
    return {"note": note, "rows": rows, "figs": figs, "chart": chart}


def _metrics(project: Project) -> dict[str, Any] | None:
    from animate124.stages.evaluate import METRIC_NAMES

    path = project.artifact("metrics")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # missing, not UTF-8 or not JSON: the page says there are no metrics
        return None
    if not isinstance(data, dict):
        return None
    big = ("clip_i", "clip_t", "temporal_consistency", "psnr_masked", "ssim_masked")
    return {
        "cards": [
            {"label": label, "value": metric_text(data.get(k))}
            for k, (label, _) in METRIC_NAMES.items()
            if k in big
        ],
        "rows": [
            {"label": label, "value": metric_text(data.get(k)), "desc": desc}
            for k, (label, desc) in METRIC_NAMES.items()
            if k in data
        ],
        **{k: data.get(k, "") for k in ("stage", "clip_model", "prompt", "views", "frames")},
        "href": _href(project, path),
    }


def _configs(project: Project) -> list[dict[str, str]]:
    return [
        {"stage": stage, "name": p.name, "text": p.read_bytes().decode("utf-8", "replace")}
        for stage in _STAGES
        if (p := project.config_path(stage)).is_file()
    ]


def _versions(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for rec in manifest.get("stages", {}).values():
        for k, v in (rec.get("versions") or {}).items():
            seen[k] = str(v)
    from animate124 import __version__

    seen.setdefault("animate124", __version__)
    return sorted(seen.items())


# ------------------------------------------------------------------------------------------ the page
_WRITTEN_ON = "\x00written-on\x00"
_NAV = (
    ("Input", "input"),
    ("Prompts", "prompts"),
    ("Stages", "stages"),
    ("Renders", "renders"),
    ("Metrics", "metrics"),
    ("Training", "training"),
    ("Meshes", "meshes"),
    ("Configuration", "config"),
    ("Versions", "versions"),
)


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(_TEMPLATE)


def report_page(project: Project) -> str:
    """The report's HTML, with a placeholder where the time it is written goes (see :func:`_stamp`)."""
    from markupsafe import Markup

    manifest = project.read_manifest()
    stages = manifest.get("stages", {})
    done = [s for s in TRAINING_STAGES if (stages.get(s) or {}).get("status") == "done"]
    total = sum(float(r.get("seconds") or 0) for k, r in stages.items() if k != "report")
    prompts = _prompts(project)
    prompt = next((p for s, p in prompts if s == "dynamic"), None) or next((p for _, p in prompts), "")
    training = _training(project, manifest)
    for t in training:  # the charts are SVG made here, not text to escape
        t["charts"] = [Markup(c) for c in t["charts"]]
        t["grad"] = Markup(t["grad"]) if t["grad"] else ""
    meshes = _meshes(project, manifest)
    if meshes and meshes["chart"]:
        meshes["chart"] = Markup(meshes["chart"])
    return _template().render(
        name=project.root.name,
        prompt=prompt,
        chips=[
            f"created {manifest.get('created', '')[:10]}",
            f"stages done: {', '.join(done) or 'none'}",
            f"total time {_fmt_seconds(total)}",
        ],
        nav=_NAV,
        inputs=_inputs(project),
        prompts=prompts,
        stages=_stage_rows(manifest),
        renders=_renders(project, manifest),
        metrics=_metrics(project),
        training=training,
        meshes=meshes,
        configs=_configs(project),
        versions=_versions(manifest),
        written_on=_WRITTEN_ON,
        root=str(project.root),
    )


def write_report(project: Project) -> Path:
    """Write ``<project>/report.html`` (see the module docstring) and return its path."""
    path = project.artifact("report")
    atomic_write_text(path, _stamp(report_page(project)))
    return path


def _stamp(page: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page.replace(_WRITTEN_ON, now)


def run_report_stage(project: Project, cfg: Any = None, *, force: bool = False, **_: object) -> Any:
    """Write ``report.html`` and record it in the manifest (``stages.report``); returns a
    :class:`~animate124.engine.runner.StageResult` whose ``artifacts["report"]`` is the page's path.

    Skipped (nothing written, ``skipped=True``) when the page would be the same as the one already
    there, unless ``force``.
    """
    import time

    from animate124.engine.runner import StageResult
    from animate124.project import now_iso

    project.require()
    path = project.artifact("report")
    t0 = time.perf_counter()
    page = report_page(project)
    digest = hashlib.sha256(page.encode()).hexdigest()[:16]
    rec = project.stage_record("report")
    artifacts = {"report": str(path)}
    if not force and rec.get("content_hash") == digest and path.is_file():
        damaged = project.stage_problems("report", rec)
        if not damaged:
            return StageResult("report", skipped=True, artifacts=artifacts)
        log.warning("%s %s: the report will be written again", *damaged[0])
    with project.lock():
        atomic_write_text(path, _stamp(page))
        seconds = round(time.perf_counter() - t0, 3)
        project.update_stage(
            "report",
            status="done",
            finished=now_iso(),
            seconds=seconds,
            content_hash=digest,
            artifacts=artifacts,
            files=project.file_records([path]),
        )
    return StageResult("report", skipped=False, artifacts=artifacts, seconds=seconds)
