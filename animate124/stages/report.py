"""The report: one self-contained ``<project>/report.html`` over the whole project.

Everything is in the one file (CSS inline, loss curves as inline SVG, no script, no font, nothing from
the network) except the project's own images and videos, which it links relatively — so the page works
when opened from disk, and keeps working when the project folder is moved or zipped.

What it shows, from the project alone: the input image, its matte and depth; the prompts (from
``config/<stage>.yaml``); per training stage its status, time, speed and peak memory (manifest), its
previews (``<stage>/previews/latest.png``, ``latest.mp4``) and loss curves (``logs/<stage>.jsonl``); the
render videos and stills (``stages.render.outputs``); the exported meshes; the metrics
(``metrics.json``); each stage's resolved config and the library versions.

:func:`run_report_stage` writes the page only when its content changed (a hash of the page without its
"written on" time is kept in the manifest under ``stages.report``), so a ``run-all`` on an up-to-date
project writes nothing and says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import logging
import math
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from animate124.project import Project, atomic_write_text
from animate124.stages.outputs import OutputStage
from animate124.stages.spec import TRAINING_STAGES

log = logging.getLogger(__name__)

__all__ = ["REPORT_STAGE", "write_report", "report_page", "run_report_stage", "loss_curves", "svg_chart"]

#: What ``run-all``'s progress callbacks are told when the report is written (not a registry stage).
REPORT_STAGE = OutputStage("report", ())

_STAGES = ("preprocess", "invert", *TRAINING_STAGES, "render", "export", "evaluate")
_PALETTE = ("#4f7cff", "#f2994a", "#27ae60", "#eb5757", "#9b51e0", "#2d9cdb", "#f2c94c", "#6fcf97")

_CSS = """
:root { --bg:#f5f6f8; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#4f7cff; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
header { background: linear-gradient(120deg,#1d2330,#33416b); color:#fff; padding:28px 40px 24px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:-0.01em; }
header .sub { color:#c7cfe3; font-size:14px; }
header .chips { margin-top:12px; display:flex; gap:8px; flex-wrap:wrap; }
.chip { background:rgba(255,255,255,.12); border:1px solid rgba(255,255,255,.2); border-radius:999px; padding:2px 10px; font-size:12.5px; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:14px; padding:18px 22px 20px; margin:0 0 20px; box-shadow:0 1px 2px rgba(16,24,40,.04); }
h2 { font-size:18px; margin:0 0 14px; font-weight:650; }
h3 { font-size:15px; margin:16px 0 10px; color:#344054; font-weight:600; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(220px,1fr)); gap:16px; align-items:start; }
.grid.wide { grid-template-columns:repeat(auto-fill,minmax(300px,1fr)); }
figure { margin:0; background:#fafbfc; border:1px solid var(--line); border-radius:10px; padding:10px; }
figure img, figure video { display:block; width:100%; height:auto; border-radius:6px; background:#fff; }
figure.checker img { background-color:#fff; background-image: linear-gradient(45deg,#e9ecf1 25%,transparent 25%), linear-gradient(-45deg,#e9ecf1 25%,transparent 25%), linear-gradient(45deg,transparent 75%,#e9ecf1 75%), linear-gradient(-45deg,transparent 75%,#e9ecf1 75%); background-size:16px 16px; background-position:0 0,0 8px,8px -8px,-8px 0; }
.pixel { image-rendering: pixelated; }
figcaption { font-size:12.5px; color:var(--muted); margin-top:6px; word-break:break-all; }
figcaption b { color:var(--ink); font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12.5px; text-transform:uppercase; letter-spacing:.03em; }
th.num { text-align:right; }
.err { display:block; color:#b42318; font-size:12px; margin-top:2px; max-width:420px; word-break:break-word; }
header .kicker { color:#9fb0d9; font-size:12.5px; text-transform:uppercase; letter-spacing:.08em; margin-bottom:2px; }
figure video { max-height:420px; object-fit:contain; }
figure.span { grid-column: 1 / -1; } figure.span video { max-height:260px; }
td.num { font-variant-numeric: tabular-nums; text-align:right; white-space:nowrap; }
.status { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12.5px; font-weight:600; }
.status.done { background:#e7f6ec; color:#1e7b3c; } .status.failed { background:#fdecec; color:#b42318; }
.status.running, .status.interrupted { background:#fff4e5; color:#b54708; } .status.missing { background:#f2f4f7; color:#667085; }
.prompt { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:13.5px; background:#f6f7fb; border-radius:6px; padding:2px 8px; }
details { margin:6px 0; } summary { cursor:pointer; color:#344054; font-weight:600; }
pre { background:#0f1523; color:#dfe6f5; padding:14px; border-radius:8px; overflow:auto; font-size:12.5px; max-height:420px; }
.charts { display:grid; grid-template-columns:repeat(auto-fill,minmax(270px,1fr)); gap:12px; }
.chart { border:1px solid var(--line); border-radius:10px; padding:6px 8px 2px; background:#fcfcfd; }
.muted { color:var(--muted); font-size:13.5px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.metric-big { display:flex; gap:14px; flex-wrap:wrap; margin-bottom:12px; }
.metric-big div { background:#f6f7fb; border-radius:10px; padding:10px 14px; min-width:130px; }
.metric-big .v { font-size:22px; font-weight:650; } .metric-big .k { font-size:12px; color:var(--muted); }
footer { text-align:center; color:var(--muted); font-size:12.5px; padding:20px; }
"""


# ------------------------------------------------------------------------------------------ helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


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
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    return str(v)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # a damaged file shows as missing; the page still renders
        return {}
    return data if isinstance(data, dict) else {}


def _small(size: Any) -> str:
    try:
        return " pixel" if int(size) < 160 else ""
    except (TypeError, ValueError):
        return ""


def _figure(
    project: Project, path: Path, caption: str, *, video: bool = False, cls: str = "", size: Any = None
) -> str:
    src = _href(project, path)
    pix = _small(size)
    if video:
        media = f'<video src="{src}" class="{pix.strip()}" autoplay loop muted playsinline controls preload="auto"></video>'
    else:
        media = f'<img src="{src}" class="{pix.strip()}" alt="{_e(caption)}" loading="eager">'
    return f'<figure class="{cls}"><a href="{src}">{media}</a><figcaption>{caption}</figcaption></figure>'


# ------------------------------------------------------------------------------------------ charts
def loss_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``loss/<term>`` -> [(step, value)] from a JSONL log (bad lines and non-finite values skipped)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return curves
    for line in lines:
        try:
            rec = json.loads(line)
            step = float(rec["step"])
        except (ValueError, TypeError, KeyError):
            continue
        if not isinstance(rec, dict) or not math.isfinite(step):
            continue
        for k, v in rec.items():
            if k.startswith("loss/") and isinstance(v, (int, float)) and math.isfinite(v):
                curves.setdefault(k[5:], []).append((step, float(v)))
    return curves


def _nice(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        return f"{v:.1e}"
    return f"{v:.3g}"


def svg_chart(
    points: list[tuple[float, float]], title: str, color: str = "#4f7cff", w: int = 270, h: int = 150
) -> str:
    """An inline SVG line chart of (step, value) points: raw values faint, an EMA on top, axis labels."""
    pad_l, pad_r, pad_t, pad_b = 46, 10, 22, 24
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)

    def X(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (w - pad_l - pad_r)

    def Y(y: float) -> float:
        return pad_t + (1 - (y - y0) / (y1 - y0)) * (h - pad_t - pad_b)

    alpha = 2.0 / (1 + max(2, len(points) // 20))
    ema, smooth = ys[0], []
    for y in ys:
        ema = alpha * y + (1 - alpha) * ema
        smooth.append(ema)
    raw = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in points)
    sm = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, smooth, strict=True))
    grid = "".join(
        f'<line x1="{pad_l}" x2="{w - pad_r}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eef0f4"/>'
        for v in (y0, (y0 + y1) / 2, y1)
    )
    labels = (
        f'<text x="{pad_l - 6}" y="{Y(y1) + 4:.1f}" text-anchor="end">{_e(_nice(y1))}</text>'
        f'<text x="{pad_l - 6}" y="{Y(y0) + 4:.1f}" text-anchor="end">{_e(_nice(y0))}</text>'
        f'<text x="{pad_l}" y="{h - 6}" text-anchor="start">{_e(_nice(x0))}</text>'
        f'<text x="{w - pad_r}" y="{h - 6}" text-anchor="end">step {_e(_nice(x1))}</text>'
    )
    return (
        f'<svg class="loss" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="10" fill="#667085">'
        f'<text x="{pad_l}" y="14" font-size="12" font-weight="600" fill="#1d2330">{_e(title)}</text>'
        f'{grid}<polyline points="{raw}" fill="none" stroke="{color}" stroke-opacity="0.3" stroke-width="1"/>'
        f'<polyline points="{sm}" fill="none" stroke="{color}" stroke-width="1.8"/>{labels}</svg>'
    )


# ------------------------------------------------------------------------------------------ sections
def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _input_section(project: Project, manifest: dict[str, Any]) -> str:
    figs = []
    inputs = (
        sorted(p for p in project.input_dir.glob("*") if p.is_file()) if project.input_dir.is_dir() else []
    )
    for p in inputs[:1]:
        figs.append(_figure(project, p, f"<b>input</b> · {_e(p.name)}"))
    if project.rgba.is_file():
        figs.append(
            _figure(
                project,
                project.rgba,
                "<b>matte</b> · preprocess/rgba.png (transparent = background)",
                cls="checker",
            )
        )
    if project.depth.is_file():
        figs.append(_figure(project, project.depth, "<b>depth</b> · preprocess/depth.png"))
    if not figs:
        return '<p class="muted">No input yet: run <code>animate124 preprocess IMAGE</code>.</p>'
    return f'<div class="grid">{"".join(figs)}</div>'


def _prompts(project: Project) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    cfgs = {s: _read_yaml(project.config_path(s)) for s in ("invert", *TRAINING_STAGES)}
    for stage in TRAINING_STAGES:
        c = cfgs.get(stage) or next((v for v in cfgs.values() if v), {})
        p = ((c.get(stage) or {}).get("prompt") or "").strip()
        if p and project.config_path(stage).is_file():
            rows.append((stage, p))
    inv = cfgs.get("invert") or {}
    if inv.get("invert"):
        rows.append(
            (
                "invert",
                f"token {inv['invert'].get('placeholder', '')} initialised from “{inv['invert'].get('initializer', '')}”",
            )
        )
    return rows


def _prompt_section(project: Project) -> str:
    rows = _prompts(project)
    if not rows:
        return '<p class="muted">No stage config saved yet.</p>'
    body = "".join(f'<tr><td>{_e(s)}</td><td><span class="prompt">{_e(p)}</span></td></tr>' for s, p in rows)
    return f"<table><tr><th>stage</th><th>prompt</th></tr>{body}</table>"


def _peak(metrics: dict[str, Any]) -> str:
    for k in ("peak_allocated_gib", "peak_reserved_gib", "peak_memory_gib", "peak_rss_gib"):
        if isinstance(metrics.get(k), (int, float)):
            return f"{metrics[k]:.2f} GiB"
    return "–"


def _stage_table(manifest: dict[str, Any]) -> str:
    stages = manifest.get("stages", {})
    rows = []
    # the report's own record is left out: the page must not change just because it was written
    for name in [*_STAGES, *[s for s in stages if s not in _STAGES and s != "report"]]:
        rec = stages.get(name)
        if rec is None:
            continue
        m = rec.get("metrics") or {}
        status = str(rec.get("status", "missing"))
        steps = m.get("steps", "–")
        its = m.get("it_s")
        err = f'<span class="err">{_e(rec["error"])}</span>' if rec.get("error") and status != "done" else ""
        finished = str(rec.get("finished", "") or "").replace("T", " ")[:16]
        rows.append(
            f'<tr><td>{_e(name)}</td><td><span class="status {_e(status)}">{_e(status)}</span>{err}</td>'
            f'<td class="num">{_e(_fmt_seconds(rec.get("seconds")))}</td><td class="num">{_e(steps)}</td>'
            f'<td class="num">{_e(_fmt_num(its, 3)) if its is not None else "–"}</td>'
            f'<td class="num">{_e(_peak(m))}</td><td class="muted">{_e(finished)}</td></tr>'
        )
    if not rows:
        return '<p class="muted">No stage has run.</p>'
    return (
        '<table><tr><th>stage</th><th>status</th><th class="num">time</th><th class="num">steps</th>'
        '<th class="num">it/s</th><th class="num">peak memory</th>'
        f"<th>finished</th></tr>{''.join(rows)}</table>"
    )


def _training_section(project: Project, manifest: dict[str, Any]) -> str:
    parts = []
    stages = manifest.get("stages", {})
    for stage in ("invert", *TRAINING_STAGES):
        rec = stages.get(stage)
        log = project.log_path(stage)
        prev = project.stage(stage).previews
        if rec is None and not log.is_file():
            continue
        figs = []
        if (prev / "latest.png").is_file():
            figs.append(
                _figure(
                    project,
                    prev / "latest.png",
                    f"<b>{_e(stage)}</b> · previews/latest.png (front, side, back, side)",
                )
            )
        if (prev / "latest.mp4").is_file():
            figs.append(
                _figure(
                    project,
                    prev / "latest.mp4",
                    f"<b>{_e(stage)}</b> · previews/latest.mp4",
                    video=True,
                    size=0,
                )
            )
        steps = sorted(prev.glob("step-*.png")) if prev.is_dir() else []
        for p in steps[-3:-1] if len(steps) > 2 else []:
            figs.append(_figure(project, p, f"{_e(stage)} · {_e(p.name)}"))
        curves = loss_curves(log)
        charts = "".join(
            f'<div class="chart">{svg_chart(pts, name, _PALETTE[i % len(_PALETTE)])}</div>'
            for i, (name, pts) in enumerate(sorted(curves.items()))
        )
        html_part = f"<h3>{_e(stage)}</h3>"
        if figs:
            html_part += f'<div class="grid wide">{"".join(figs)}</div>'
        if charts:
            html_part += f'<h3>{_e(stage)} · losses</h3><div class="charts">{charts}</div>'
        elif log.is_file():
            html_part += '<p class="muted">The log holds no loss values.</p>'
        parts.append(html_part)
    return "".join(parts) or '<p class="muted">No training stage has run.</p>'


def _render_order(item: tuple[str, dict[str, Any]]) -> tuple:
    rel, d = item
    ch = (
        ("color", "depth", "normal", "opacity").index(d.get("channel"))
        if d.get("channel") in ("color", "depth", "normal", "opacity")
        else 9
    )
    kind = {"video": 0, "image": 1, "gif": 2, "frames": 3}.get(d.get("kind", ""), 9)
    is_view = d.get("view") is not None
    return (d.get("stage", ""), kind, d.get("shot", ""), is_view, ch, rel)


def _renders_section(project: Project, manifest: dict[str, Any]) -> str:
    outputs = (manifest.get("stages", {}).get("render") or {}).get("outputs") or {}
    items = [(k, v) for k, v in outputs.items() if (project.root / k).exists()]
    if not items:
        return '<p class="muted">No renders yet: run <code>animate124 render --orbit</code>.</p>'
    by_stage: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for k, v in sorted(items, key=_render_order):
        by_stage.setdefault(v.get("stage", "?"), []).append((k, v))
    parts = []
    for stage, rows in by_stage.items():
        figs, links = [], []
        for rel, d in rows:
            kind = d.get("kind")
            what = f"{d.get('shot', '')} · {d.get('channel', '')}"
            if kind == "video" and d.get("view") is None:
                cap = f"<b>{_e(what)}</b> · {_e(rel)} · {d.get('frames')} frames at {d.get('fps')} fps"
                if d.get("channel") == "depth" and "near" in d:
                    cap += f" · depth {float(d['near']):.2f}–{float(d['far']):.2f}"
                # a grid of several views is wide: it gets a row of its own
                span = "span" if d.get("shot") == "views" else ""
                figs.append(
                    _figure(project, project.root / rel, cap, video=True, size=d.get("size"), cls=span)
                )
            elif kind == "image" and d.get("view") is None:
                figs.append(
                    _figure(
                        project,
                        project.root / rel,
                        f"<b>{_e(what)}</b> · {_e(rel)}",
                        size=d.get("size"),
                        cls="checker" if d.get("rgba") else "",
                    )
                )
            else:
                links.append(f'<a href="{_href(project, project.root / rel)}">{_e(Path(rel).name)}</a>')
        parts.append(f"<h3>{_e(stage)}</h3>")
        if figs:
            parts.append(f'<div class="grid wide">{"".join(figs)}</div>')
        if links:
            parts.append(
                f"<details><summary>{len(links)} more files: per-view videos, GIFs, frame folders</summary>"
                f'<p class="muted">{" · ".join(links)}</p></details>'
            )
    return "".join(parts)


def _export_section(project: Project, manifest: dict[str, Any]) -> str:
    rec = manifest.get("stages", {}).get("export") or {}
    outputs = {k: v for k, v in (rec.get("outputs") or {}).items() if (project.root / k).exists()}
    if not outputs:
        return '<p class="muted">No meshes yet: run <code>animate124 export</code>.</p>'
    rows = []
    for rel, d in sorted(outputs.items()):
        p = project.root / rel
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.glob("*") if f.is_file())
        rows.append(
            f'<tr><td><a href="{_href(project, p)}">{_e(rel)}</a></td><td>{_e(d.get("kind", ""))}</td>'
            f'<td>{_e(d.get("stage", ""))}</td><td class="num">{_e(d.get("frames", 1))}</td>'
            f'<td class="num">{size / 1e6:.2f} MB</td></tr>'
        )
    m = rec.get("metrics") or {}
    note = ""
    if m:
        how = (
            "auto: the level whose silhouette matches the renders"
            if m.get("threshold_auto")
            else "set by hand"
        )
        note = (
            f'<p class="muted">Last export: {_e(m.get("stage"))}, density level {_e(_fmt_num(m.get("threshold")))} '
            f"({_e(how)}), grid {_e(m.get('resolution'))}³, watertight: {_e(m.get('watertight'))}.</p>"
        )
    return (
        note
        + '<table><tr><th>file</th><th>kind</th><th>stage</th><th class="num">frames</th><th class="num">size</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _metrics_section(project: Project) -> str:
    from animate124.stages.evaluate import METRIC_NAMES

    path = project.artifact("metrics")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        return '<p class="muted">No metrics yet: run <code>animate124 evaluate</code>.</p>'
    big = "".join(
        f'<div><div class="v">{_e(_fmt_num(data.get(k), 3))}</div><div class="k">{_e(label)}</div></div>'
        for k, (label, _) in METRIC_NAMES.items()
        if k in ("clip_i", "clip_t", "temporal_consistency", "psnr_masked", "ssim_masked")
    )
    rows = "".join(
        f'<tr><td>{_e(label)}</td><td class="num">{_e(_fmt_num(data.get(k), 5))}</td><td class="muted">{_e(desc)}</td></tr>'
        for k, (label, desc) in METRIC_NAMES.items()
        if k in data
    )
    meta = (
        f'<p class="muted">Stage {_e(data.get("stage"))} · CLIP model {_e(data.get("clip_model"))} · prompt '
        f'<span class="prompt">{_e(data.get("prompt", ""))}</span> · {_e(data.get("views"))} views × '
        f'{_e(data.get("frames"))} frames · <a href="{_href(project, path)}">metrics.json</a></p>'
    )
    return f'<div class="metric-big">{big}</div>{meta}<table><tr><th>metric</th><th class="num">value</th><th>meaning</th></tr>{rows}</table>'


def _config_section(project: Project) -> str:
    parts = []
    for stage in _STAGES:
        p = project.config_path(stage)
        if p.is_file():
            parts.append(
                f"<details><summary>{_e(stage)} · config/{_e(p.name)}</summary><pre>{_e(p.read_bytes().decode('utf-8', 'replace'))}</pre></details>"
            )
    return "".join(parts) or '<p class="muted">No config saved yet.</p>'


def _versions_section(manifest: dict[str, Any]) -> str:
    seen: dict[str, str] = {}
    for rec in manifest.get("stages", {}).values():
        for k, v in (rec.get("versions") or {}).items():
            seen[k] = str(v)
    from animate124 import __version__

    seen.setdefault("animate124", __version__)
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(seen.items()))
    return f"<table><tr><th>package</th><th>version</th></tr>{rows}</table>"


def _nav(sections: Iterable[tuple[str, str]]) -> str:
    return " · ".join(f'<a href="#{a}" style="color:#c7cfe3">{_e(t)}</a>' for t, a in sections)


_WRITTEN_ON = "\x00written-on\x00"


def write_report(project: Project) -> Path:
    """Write ``<project>/report.html`` (see the module docstring) and return its path."""
    path = project.artifact("report")
    atomic_write_text(path, _stamp(report_page(project)))
    return path


def _stamp(page: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page.replace(_WRITTEN_ON, _e(now))


def report_page(project: Project) -> str:
    """The report's HTML, with a placeholder where the time it is written goes (see :func:`_stamp`)."""
    manifest = project.read_manifest()
    name = project.root.name
    done = [s for s in TRAINING_STAGES if (manifest.get("stages", {}).get(s) or {}).get("status") == "done"]
    total = sum(float(r.get("seconds") or 0) for k, r in manifest.get("stages", {}).items() if k != "report")
    prompt = next((p for s, p in _prompts(project) if s == "dynamic"), None) or next(
        (p for _, p in _prompts(project)), ""
    )
    chips = [
        f"created {manifest.get('created', '')[:10]}",
        f"stages done: {', '.join(done) or 'none'}",
        f"total time {_fmt_seconds(total)}",
    ]
    sections = [
        ("Input", "input", _input_section(project, manifest)),
        ("Prompts", "prompts", _prompt_section(project)),
        ("Stages", "stages", _stage_table(manifest)),
        ("Renders", "renders", _renders_section(project, manifest)),
        ("Metrics", "metrics", _metrics_section(project)),
        ("Training", "training", _training_section(project, manifest)),
        ("Meshes", "meshes", _export_section(project, manifest)),
        ("Configuration", "config", _config_section(project)),
        ("Versions", "versions", _versions_section(manifest)),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>animate124 · {_e(name)}</title><style>{_CSS}</style></head><body>"
        f'<header><div class="kicker">animate124 report</div><h1>{_e(name)}</h1><div class="sub">{_e(prompt) if prompt else "animate124 project"}</div>'
        f'<div class="chips">{"".join(f"<span class=chip>{_e(c)}</span>" for c in chips)}</div>'
        f'<div class="sub" style="margin-top:10px">{_nav((t, a) for t, a, _ in sections)}</div></header><main>'
        + "".join(_section(t, b, a) for t, a, b in sections)
        + f"</main><footer>Written by animate124 on {_WRITTEN_ON} from {_e(project.root)}.</footer></body></html>\n"
    )


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
