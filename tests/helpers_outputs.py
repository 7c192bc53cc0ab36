"""Fixtures of the output tests (render, export, evaluate, report): analytic fields and trained projects.

* :class:`SphereField` / :class:`MovingSphereField`: analytic fields that satisfy the renderer's field
  protocol (``field(x, t) -> FieldOutput``, ``density``, ``normals``, ``bound``): exact radii and colours.
* :func:`make_trained_project`: a project with preprocess outputs, a saved config and trained tiny
  fields (static and, optionally, dynamic and refine) made by a short fit of the real grid field to a
  (moving) sphere, saved with ``save_trained`` and marked done in the manifest, with JSONL logs and
  previews, as the training stages leave them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

# The grid encoder is moving into the package ``animate124.scene.grid`` (another branch); until that
# lands, ``stages.build`` finds the module under its new name here. A no-op once the package exists.
try:  # pragma: no cover - depends on the merge order
    import animate124.scene.grid  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover
    import animate124.scene.encoding as _encoding

    sys.modules["animate124.scene.grid"] = _encoding

from animate124.config import dump_yaml, resolve_config  # noqa: E402
from animate124.project import Project  # noqa: E402
from animate124.scene.fields import FieldOutput  # noqa: E402

ALBEDO = (0.8, 0.3, 0.1)


class SphereField(torch.nn.Module):
    """σ = ``density`` inside a ball of ``radius`` (a steep logistic edge of width ``edge``), 0 outside;
    constant ``albedo``. Static (t ignored)."""

    dynamic = False

    def __init__(
        self,
        radius: float = 0.5,
        density: float = 200.0,
        albedo=ALBEDO,
        edge: float = 0.005,
        center=(0.0, 0.0, 0.0),
    ) -> None:
        super().__init__()
        self.bound = 1.0
        self.radius = radius
        self.sigma0 = density
        self.edge = edge
        self.register_buffer("albedo_value", torch.tensor(albedo, dtype=torch.float32))
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))

    def center_at(self, t):
        return self.center.expand(1, 3)

    def density(self, x, t=None):
        c = self.center_at(t)
        d = (x.float() - c).norm(dim=-1)
        return self.sigma0 * torch.sigmoid((self.radius - d) / self.edge)

    def forward(self, x, t=None):
        return FieldOutput(sigma=self.density(x, t), albedo=self.albedo_value.expand(x.shape[0], 3))

    def normals(self, x, t=None, eps=0.01):
        c = self.center_at(t)
        return torch.nn.functional.normalize(x.float() - c, dim=-1)


class GaussianField(SphereField):
    """σ = ``peak``·exp(−‖x‖²/(2 s²)): a soft blob whose rendered silhouette has a closed form.

    A ray at distance b from the centre collects ∫σ = peak·s·√(2π)·exp(−b²/(2 s²)), so its opacity is
    0.5 at ``b* = s·sqrt(2·ln(peak·s·√(2π)/ln 2))``."""

    def __init__(self, peak: float = 60.0, s: float = 0.2, albedo=ALBEDO) -> None:
        super().__init__(radius=0.0, density=peak, albedo=albedo)
        self.s = s

    def density(self, x, t=None):
        return self.sigma0 * torch.exp(-(x.float() ** 2).sum(-1) / (2 * self.s**2))

    def silhouette_radius(self) -> float:
        return self.s * math.sqrt(2 * math.log(self.sigma0 * self.s * math.sqrt(2 * math.pi) / math.log(2)))


class MovingSphereField(SphereField):
    """A ball whose centre moves along x, ``c(t) = (amp·(2t − 1), 0, 0)``; its albedo goes from red to blue."""

    dynamic = True

    def __init__(self, radius: float = 0.3, amp: float = 0.4, **kw) -> None:
        super().__init__(radius=radius, **kw)
        self.amp = amp

    def center_at(self, t):
        if t is None:
            t = torch.zeros(1, 1)
        t = t.reshape(-1, 1).float()
        return torch.cat([self.amp * (2 * t - 1), torch.zeros_like(t), torch.zeros_like(t)], dim=-1)

    def forward(self, x, t=None):
        tt = torch.zeros(x.shape[0], 1) if t is None else t.reshape(-1, 1).float().expand(x.shape[0], 1)
        albedo = torch.cat([1 - tt, 0.2 * torch.ones_like(tt), tt], dim=-1)
        return FieldOutput(sigma=self.density(x, t), albedo=albedo)


# ------------------------------------------------------------------------------------------ projects
def tiny_config(**sections):
    """The tiny preset with a larger density blob (the fixtures' ball), plus ``sections``."""
    opts = {"field": {"blob_density": 15.0, "blob_radius": 0.3}}
    for k, v in sections.items():
        opts.setdefault(k, {}).update(v)
    return resolve_config("tiny", options=opts)


#: Level of the grid tables per time grid of the fixtures' 4D field: the ball grows and shrinks.
PULSE = (0.0, 0.015, 0.03, 0.01)


def shape_field(field, *, dynamic: bool, albedo=ALBEDO, pulse=PULSE):
    """Set a real grid field's parameters so that it is a ball of constant ``albedo`` (no training).

    Every grid table entry of time grid k holds ``pulse[k]`` (the static field: ``pulse[1]``), so the
    features are that constant everywhere; the MLP's hidden unit 0 sums them and the density logit is
    ``−10 + s`` with ``s = 100·level``. With the fixtures' blob ``15·exp(−‖x‖²/0.18)`` the ball's surface
    (σ = 1) has radius ``sqrt(0.18·ln(15 / (10 − s)))``: 0.27 at s = 0, 0.37 at s = 3; far from it
    σ ≈ exp(−10 + s), i.e. empty.
    The albedo rows of the last layer are 0 with bias ``logit(albedo)``: albedo is exact everywhere.
    """
    with torch.no_grad():
        emb = field.encoder.embeddings
        if dynamic:
            for k in range(emb.shape[0]):
                emb[k].fill_(pulse[k % len(pulse)])
        else:
            emb.fill_(pulse[1 % len(pulse)])
        first, last = field.sigma_net.net[0], field.sigma_net.net[-1]
        for layer in field.sigma_net.net:
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0].fill_(1.0)
        for layer in list(field.sigma_net.net)[1:-1]:
            layer.weight[0, 0] = 1.0
        last.weight[0, 0] = 100.0 / emb.shape[-1] / max(1, first.weight.shape[1] // emb.shape[-1])
        last.bias[0] = -10.0
        a = torch.tensor(albedo).clamp(1e-4, 1 - 1e-4)
        last.bias[1:] = torch.log(a / (1 - a))
    return field


def write_preprocess(project: Project, size: int = 64) -> None:
    """An input image, ``rgba.png`` (a disc of ALBEDO on transparent), ``depth.png`` and ``preview.png``."""
    import imageio.v3 as iio

    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx + 0.5 - size / 2, yy + 0.5 - size / 2) / size
    alpha = (r < 0.3).astype(np.float32)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = (np.array(ALBEDO) * 255).astype(np.uint8)
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    project.input_dir.mkdir(parents=True, exist_ok=True)
    src = project.input_dir / "toy.png"
    photo = rgba[..., :3].copy()
    photo[alpha == 0] = (40, 90, 160)
    iio.imwrite(src, photo)
    project.preprocess_dir.mkdir(parents=True, exist_ok=True)
    iio.imwrite(project.rgba, rgba)
    depth = (255 * (1 - r.clip(0, 1)) * alpha).astype(np.uint8)
    iio.imwrite(project.depth, depth)
    np.save(project.depth_npy, depth.astype(np.float32) / 255)
    iio.imwrite(project.preview, photo)


def _write_log(project: Project, stage: str, steps: int) -> None:
    path = project.log_path(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for s in range(1, steps + 1):
            rec = {
                "step": s,
                "time": 1000.0 + s,
                "loss/rgb": 0.5 * math.exp(-s / 10) + 0.01 * math.sin(s),
                "loss/sds": 3000.0 * math.exp(-s / 2),  # 2.5 decades: a log axis
                "lr": 1e-3,
            }
            if s == steps:  # a term logged once (as refine's depth/mask/rgb at its reference step)
                rec["loss/depth"] = 0.25
            if s % 2 == 0:  # gradient norms per group, every run.grad_stats_every steps
                rec.update(
                    {"grad/reference": 0.02 + 0.001 * s, "grad/sd": 4.0 + 0.1 * s, "grad/regularizers": 1e-4}
                )
            fh.write(json.dumps(rec) + "\n")


def _write_previews(project: Project, stage: str, frames: torch.Tensor, video: bool) -> None:
    from animate124.render.video import make_grid, save_image, save_video

    d = project.stage(stage).previews
    strip = make_grid(frames, nrow=frames.shape[0])
    save_image(d / "step-0000008.png", strip)
    save_image(d / "latest.png", strip)
    if video:
        save_video(d / "latest.mp4", frames, fps=8)


def make_trained_project(
    root: Path,
    stages: tuple[str, ...] = ("static", "dynamic"),
    *,
    albedo=ALBEDO,
) -> Project:
    """A project in ``root`` where ``stages`` (static, dynamic, refine) have finished with tiny fitted fields."""
    from animate124.render.cameras import camera_from_spherical
    from animate124.render.renderer import render
    from animate124.stages.artifacts import save_trained
    from animate124.stages.build import build_field, build_occupancy

    cfg = tiny_config(
        static={"prompt": "a high-resolution DSLR image of a toy"},
        dynamic={"prompt": "a toy is bouncing"},
        refine={"prompt": "a <token> is bouncing"},
    )
    project = Project(root)
    project.create(source_image=root / "input" / "toy.png")
    write_preprocess(project)
    project.update_stage("preprocess", status="done", seconds=0.5, artifacts={"rgba": str(project.rgba)})
    (project.root / "config").mkdir(exist_ok=True)
    for stage in stages:
        dynamic = stage != "static"
        torch.manual_seed(0)
        field = build_field(cfg.field, "dynamic" if dynamic else "static", "cpu")
        shape_field(field, dynamic=dynamic, albedo=albedo)
        occ = build_occupancy(cfg, dynamic, "cpu")
        with torch.no_grad():
            for _ in range(3):
                occ.update(field.density, generator=torch.Generator().manual_seed(1))
        key = f"{stage}_model"
        save_trained(
            project.artifact(key), field, occ, kind="dynamic" if dynamic else "static", field_cfg=cfg.field
        )
        (project.config_path(stage)).write_text(dump_yaml(cfg))
        _write_log(project, stage, 12)
        cams = camera_from_spherical(90.0, torch.tensor([0.0, 90.0, 180.0, 270.0]), 1.8, 40.0, 24, 24)
        with torch.no_grad():
            times = torch.zeros(4, 1) if dynamic else None
            frames = render(field, cams, times, occupancy=occ, max_steps=32).rgb[:, 0]
        _write_previews(project, stage, frames, video=dynamic)
        project.update_stage(
            stage,
            status="done",
            config_hash="test",
            seconds=12.5,
            artifacts={key: str(project.artifact(key))},
            metrics={"steps": 12, "it_s": 3.2, "peak_allocated_gib": 1.25},
            versions={"python": "3.11", "torch": torch.__version__},
        )
    return project


_CACHE: dict[tuple, Path] = {}


def trained_project(tmp_path: Path, stages: tuple[str, ...] = ("static", "dynamic")) -> Project:
    """A copy (in ``tmp_path``) of a trained project made once per test session."""
    import tempfile

    key = tuple(stages)
    if key not in _CACHE or not _CACHE[key].exists():
        base = Path(tempfile.mkdtemp(prefix="a124-outputs-")) / "proj"
        make_trained_project(base, stages)
        _CACHE[key] = base
    dest = tmp_path / "proj"
    shutil.copytree(_CACHE[key], dest)
    return Project(dest)


# ------------------------------------------------------------------------------------------ browser
def find_chromium() -> str | None:
    """A Chromium (or Chrome) executable on this machine, or None."""
    import shutil as _sh

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = _sh.which(name)
        if exe:
            return exe
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class HeadlessChromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    the browser reads NUL-terminated JSON commands on fd 3 and answers on fd 4). Needs no Python
    package and no network port; offline flags keep it from reaching out."""

    def __init__(self, exe: str, user_data_dir: Path, timeout: float = 60.0) -> None:
        import os
        import subprocess

        self.timeout = timeout
        r_in, self._w = os.pipe()
        self._r, w_out = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: the pipe ends become fds 3 and 4
            a, b = os.dup(r_in), os.dup(w_out)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-file-access-from-files",
            f"--user-data-dir={user_data_dir}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=child_fds,  # noqa: PLW1509 - single-threaded test process
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(r_in)
        os.close(w_out)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        import os
        import select
        import time

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import os
        import time

        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str | None = None) -> dict:
        import time

        deadline = time.monotonic() + self.timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method and (session is None or e.get("sessionId") == session):
                return self.events.pop(i)
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method and (session is None or m.get("sessionId") == session):
                return m
            self.events.append(m)

    def open(self, url: str, width: int = 1280, height: int = 900) -> str:
        """A new page at ``url`` (waits for its load event) -> session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        res = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, session: str, path: Path, full_page: bool = True) -> Path:
        import base64

        params: dict = {"format": "png"}
        if full_page:
            m = self.call("Page.getLayoutMetrics", session=session)
            size = m.get("cssContentSize") or m["contentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.call("Page.captureScreenshot", params, session=session)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        import contextlib
        import os
        import subprocess

        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._w, self._r):
            with contextlib.suppress(OSError):
                os.close(fd)


#: Waits until every <img> has finished and every <video> has its metadata (or failed), then reports.
MEDIA_CHECK_JS = """
(async () => {
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  const imgs = [...document.images];
  const vids = [...document.querySelectorAll('video')];
  vids.forEach(v => { try { v.load(); } catch (e) {} });
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const busy = imgs.some(i => !i.complete) || vids.some(v => v.readyState < 1 && !v.error);
    if (!busy) break;
    await sleep(100);
  }
  return {
    images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                            width: i.naturalWidth})),
    videos: vids.map(v => ({src: v.getAttribute('src'), ok: v.readyState >= 1 && v.duration > 0 && !v.error,
                            duration: v.duration, width: v.videoWidth, error: v.error ? v.error.code : null})),
    svgs: document.querySelectorAll('svg.plot').length,
    // every chart's text (tick labels, titles, legends) must be drawn inside the chart
    charts: [...document.querySelectorAll('svg.plot')].map(svg => {
      const box = svg.getBoundingClientRect();
      const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim());
      const outside = texts.filter(t => {
        const r = t.getBoundingClientRect();
        return r.width === 0 || r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1
          || r.bottom > box.bottom + 1;
      }).map(t => t.textContent);
      return {label: svg.getAttribute('aria-label'), width: box.width, texts: texts.length, outside};
    }),
    height: document.documentElement.scrollHeight,
  };
})()
"""
