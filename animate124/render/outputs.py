"""Output renders of a trained field: orbit and fixed-view videos, stills, depth/normal/opacity (SPEC 7, fixed).

Two shots, both a list of frames of (camera, time):

* **orbit**: frame k of n puts the camera at azimuth ``360·k/n`` while time runs ``t = (k·loops/n) mod 1``
  (or stays at a frozen ``t``);
* **views**: ``V`` fixed cameras at azimuths ``360·v/V``, each rendered at ``t = k/F`` for k < F (or at one
  frozen ``t``); written as one video per view and one grid video (all views side by side).

A static field has no time: every frame of a fixed view is the same image (rendered once), the orbit
still turns.

Channels, per frame, from one render with a black background (``P = Σ w·c``, ``α = Σ w``):

* ``color``: ``P + (1 − α)·bg`` — the field's albedo exactly, never min-max stretched (upstream
  stretches every saved tensor, SPEC 11.7); ``--rgba`` PNGs hold the straight colour ``P/α`` and ``α``;
* ``depth``: expected planar depth ``Σ w·t / α`` mapped through a perceptual colour map between a
  ``near``/``far`` that is fixed for the whole request (so colours mean the same distance in every frame),
  composited over the background with ``α``;
* ``normal``: ``(n + 1)/2`` of world-space normals composited with the weights, over the background;
* ``opacity``: ``α`` as grey.

MP4s are H.264, yuv420p, with the ``moov`` atom first (``-movflags +faststart``) so that browsers play
them while they load; frames are padded to even sizes. GIFs loop forever. Every file is written to a
temporary name and renamed when complete.

Nothing here reads the config: the stage (``animate124.stages.render``) fills :class:`RenderSettings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from animate124.fileio import atomic_path
from animate124.render.cameras import Cameras, camera_from_spherical
from animate124.render.colors import COLORMAPS, OutputError, apply_colormap, parse_background
from animate124.render.renderer import render
from animate124.render.video import make_grid, to_uint8

__all__ = [
    "CHANNELS",
    "COLORMAPS",
    "OutputError",
    "RenderSettings",
    "Shot",
    "OutputFile",
    "parse_background",
    "apply_colormap",
    "depth_range",
    "frame_channels",
    "orbit_shot",
    "views_shot",
    "render_shot",
    "VideoSink",
]

CHANNELS = ("color", "depth", "normal", "opacity")


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RenderSettings:
    """Plain settings of an output render (filled from the ``render`` and ``raymarch`` config sections)."""

    size: int = 400
    fovy: float = 40.0
    radius: float = 1.8
    polar: float = 90.0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: tuple[str, ...] = ("color",)
    colormap: str = "turbo"
    fps: int = 25
    quality: int = 8
    gif: bool = False
    stills: bool = False
    rgba: bool = False
    ray_chunk: int = 32768
    max_steps: int = 1024
    min_near: float = 0.2
    delta_mode: str = "metric"
    t_thresh: float = 1e-4
    normal_eps: float = 0.01
    sample_chunk: int | None = None
    fused_march: bool = True  # raymarch.fused_march: the marcher's Triton lattice walk on CUDA

    def __post_init__(self) -> None:
        bad = [c for c in self.channels if c not in CHANNELS]
        if bad or not self.channels:
            raise OutputError(
                f"unknown channel {bad[0] if bad else '(none)'}", hint=f"use {', '.join(CHANNELS)}"
            )
        if self.colormap not in COLORMAPS:
            raise OutputError(
                f"unknown colour map {self.colormap!r}", hint=f"use one of {', '.join(COLORMAPS)}"
            )


@dataclass
class Shot:
    """Frames to render: ``cameras[k·views + v]`` for step k and view v, ``times[k]`` (None for a static
    field). ``kind`` is "orbit" or "views"; ``tag`` ends the file names (``_t0.50`` for a frozen time).
    ``still``: one step written as images, not videos."""

    kind: str
    cameras: Cameras
    times: list[float] | None
    steps: int
    views: int
    tag: str = ""
    still: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}{self.tag}"

    def camera(self, k: int, v: int) -> Cameras:
        return self.cameras[k * self.views + v]


@dataclass
class OutputFile:
    """One written file: path, what it shows and its video geometry (frames, fps) or 1 frame for an image."""

    path: Path
    shot: str
    channel: str
    kind: str  # "video" | "gif" | "image" | "frames"
    frames: int
    size: int
    fps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_time(t: float | None) -> None:
    if t is not None and not (0.0 <= t <= 1.0):
        raise OutputError(
            f"time {t} is outside [0, 1]", hint="pass --time between 0 (first frame) and 1 (last)"
        )


def orbit_shot(
    frames: int,
    s: RenderSettings,
    *,
    dynamic: bool,
    time: float | None = None,
    loops: int = 1,
    device: torch.device | str = "cpu",
) -> Shot:
    """The camera circles once in ``frames`` steps; time runs ``loops`` times through [0, 1) (or is frozen)."""
    if frames < 1:
        raise OutputError("an orbit needs at least 1 frame", hint="pass --frames 2 or more")
    _check_time(time)
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames)
    cams = camera_from_spherical(s.polar, az, s.radius, s.fovy, s.size, s.size, device)
    times = None
    if dynamic:
        times = (
            [float(time)] * frames
            if time is not None
            else [(k * loops / frames) % 1.0 for k in range(frames)]
        )
    tag = f"_t{time:.2f}" if time is not None and dynamic else ""
    return Shot("orbit", cams, times, steps=frames, views=1, tag=tag)


def views_shot(
    views: int,
    frames: int,
    s: RenderSettings,
    *,
    dynamic: bool,
    time: float | None = None,
    device: torch.device | str = "cpu",
) -> Shot:
    """``views`` fixed cameras (azimuth ``360·v/views``) over ``frames`` time steps ``t = k/frames``.

    A frozen ``time`` (or a static field) gives one step: each view becomes an image, not a video —
    unless the field is static and ``frames > 1``, where the video repeats the one image (so that a
    static and a 4D project produce the same files).
    """
    if views < 1 or frames < 1:
        raise OutputError(
            "fixed views need at least 1 view and 1 frame", hint="pass --views N and --frames N >= 1"
        )
    _check_time(time)
    still = time is not None
    steps = 1 if still else frames
    az = torch.arange(views, dtype=torch.float32) * (360.0 / views)
    az = az.repeat(steps)  # [steps * views], row-major (k, v)
    cams = camera_from_spherical(s.polar, az, s.radius, s.fovy, s.size, s.size, device)
    times = None
    if dynamic:
        times = [float(time)] if still else [k / frames for k in range(frames)]
    tag = f"_t{time:.2f}" if still and dynamic else ""
    return Shot("views", cams, times, steps=steps, views=views, tag=tag, still=still)


# ------------------------------------------------------------------------------------------ frames
@dataclass
class FrameImages:
    """The raw render of one frame: premultiplied colour ``[3,H,W]``, opacity ``[H,W]``, planar depth
    ``[H,W]`` (already divided by opacity), normal ``[3,H,W]`` (premultiplied, or None)."""

    color: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None


@torch.no_grad()
def render_frame(
    field: Any, occupancy: Any, camera: Cameras, time: float | None, s: RenderSettings, normals: bool
) -> FrameImages:
    """Render one camera at one time (None: a static field) with a black background, ``ray_chunk`` rays a call."""
    times = None if time is None else torch.tensor([[float(time)]], device=camera.device)
    out = render(
        field,
        camera,
        times,
        bg_color=torch.zeros(3, device=camera.device),
        occupancy=occupancy,
        max_steps=s.max_steps,
        min_near=s.min_near,
        delta_mode=s.delta_mode,
        t_thresh=s.t_thresh,
        compute_normals=normals,
        normal_eps=s.normal_eps,
        chunk=s.sample_chunk,
        ray_chunk=s.ray_chunk,
        fused_march=None if s.fused_march else False,
    )
    a = out.opacity[0, 0, 0].float().cpu()
    d = out.depth[0, 0, 0].float().cpu()
    depth = torch.where(a > 1e-4, d / a.clamp_min(1e-4), torch.zeros_like(d))
    normal = None if out.normal is None else out.normal[0, 0].float().cpu()
    return FrameImages(color=out.rgb[0, 0].float().cpu(), opacity=a, depth=depth, normal=normal)


def depth_range(
    frames: list[FrameImages], alpha_thresh: float = 0.5, quantiles: tuple[float, float] = (0.01, 0.99)
) -> tuple[float, float]:
    """``(near, far)``: quantiles of the foreground depth (opacity > ``alpha_thresh``) over all ``frames``,
    padded by 5 % of the range; ``(0, 1)`` when nothing is in front of the cameras."""
    vals = [f.depth[f.opacity > alpha_thresh] for f in frames]
    d = torch.cat([v.reshape(-1) for v in vals]) if vals else torch.zeros(0)
    if d.numel() == 0:
        return 0.0, 1.0
    if d.numel() > 1_000_000:
        d = d[torch.linspace(0, d.numel() - 1, 1_000_000).long()]
    lo, hi = torch.quantile(d.double(), torch.tensor(quantiles, dtype=torch.float64)).tolist()
    pad = 0.05 * max(hi - lo, 1e-3)
    return float(lo - pad), float(hi + pad)


def frame_channels(
    f: FrameImages,
    channels: tuple[str, ...],
    background: tuple[float, float, float],
    near_far: tuple[float, float] = (0.0, 1.0),
    colormap: str = "turbo",
) -> dict[str, Tensor]:
    """Display images ``[3,H,W]`` in [0,1] of the requested channels (module docstring), plus
    ``rgba`` ``[4,H,W]`` (straight colour and opacity)."""
    bg = torch.tensor(background, dtype=torch.float32)[:, None, None]
    a = f.opacity[None]
    out: dict[str, Tensor] = {}
    if "color" in channels:
        out["color"] = (f.color + (1 - a) * bg).clamp(0, 1)
        straight = torch.where(a > 1e-4, f.color / a.clamp_min(1e-4), torch.zeros_like(f.color))
        out["rgba"] = torch.cat([straight.clamp(0, 1), a.clamp(0, 1)], dim=0)
    if "depth" in channels:
        near, far = near_far
        u = (f.depth - near) / max(far - near, 1e-8)
        cm = apply_colormap(u, colormap).permute(2, 0, 1)
        out["depth"] = (a * cm + (1 - a) * bg).clamp(0, 1)
    if "normal" in channels:
        if f.normal is None:
            raise OutputError("the normal channel needs a render with normals")
        out["normal"] = (f.normal + (1 - a) * bg).clamp(0, 1)
    if "opacity" in channels:
        out["opacity"] = a.expand(3, -1, -1).clamp(0, 1)
    return out


# ------------------------------------------------------------------------------------------ writers
class VideoSink:
    """Streams frames ``[3,H,W]`` (or ``[H,W,3]`` uint8) into an H.264/yuv420p/faststart MP4 or a GIF.

    Written to a temporary file beside ``path`` and renamed on :meth:`close` (``ok=False`` discards it).
    """

    def __init__(self, path: Path, fps: int, quality: int = 8) -> None:
        self.path = Path(path)
        self.fps = int(fps)
        self.quality = int(quality)
        self.frames = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._gen: Any = None
        self._gif: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None
        if self.path.suffix.lower() not in (".mp4", ".gif"):
            raise OutputError(f"unsupported video format {self.path.suffix!r}", hint="use .mp4 or .gif")

    def append(self, frame: Tensor | np.ndarray) -> None:
        arr = frame if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 else to_uint8(frame)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        arr = np.ascontiguousarray(arr[..., :3])
        if self.path.suffix.lower() == ".gif":
            self._gif.append(arr)
        else:
            h, w = arr.shape[:2]
            if h % 2 or w % 2:
                arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if self._gen is None:
                import imageio_ffmpeg

                self._size = (arr.shape[1], arr.shape[0])
                self._gen = imageio_ffmpeg.write_frames(
                    str(self._tmp),
                    self._size,
                    fps=self.fps,
                    quality=self.quality,
                    codec="libx264",
                    pix_fmt_out="yuv420p",
                    macro_block_size=1,
                    output_params=["-movflags", "+faststart"],
                )
                self._gen.send(None)
            self._gen.send(arr)
        self.frames += 1

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)

    def close(self, ok: bool = True) -> None:
        """Finish the file and rename it into place (``ok``), or delete the temporary file."""
        try:
            if self._gen is not None:
                self._gen.close()
                self._gen = None
            if ok and self.frames == 0:
                raise OutputError(f"no frames were written to {self.path}")
            if ok and self._gif:
                import imageio.v3 as iio

                iio.imwrite(
                    self._tmp, np.stack(self._gif), extension=".gif", duration=1000.0 / self.fps, loop=0
                )
        except BaseException as exc:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            err = OutputError("discarded")
            self._ctx.__exit__(OutputError, err, None)


def _save_png(path: Path, img: Tensor) -> None:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, to_uint8(img), extension=".png")


def _suffix(channel: str) -> str:
    return "" if channel == "color" else f"_{channel}"


ProgressFn = Callable[[int, int, dict[str, float]], None]


def _prepass_depth(
    field: Any, occupancy: Any, shot: Shot, s: RenderSettings, max_frames: int = 8, size: int = 64
) -> tuple[float, float]:
    """near/far of the whole shot from a few low-resolution frames spread over it (cheap, deterministic)."""
    n = shot.steps * shot.views
    picks = sorted({round(i * (n - 1) / max(1, max_frames - 1)) for i in range(min(max_frames, n))})
    small = min(size, s.size)
    frames = []
    for i in picks:
        k, v = divmod(i, shot.views)
        cam = shot.camera(k, v).with_size(small, small)
        t = None if shot.times is None else shot.times[k]
        frames.append(render_frame(field, occupancy, cam, t, s, normals=False))
    return depth_range(frames)


def shot_files(
    shot: Shot, s: RenderSettings, video_frames: int
) -> dict[str, list[tuple[int | None, str, Path]]]:
    """The files a shot writes, relative to its directory: ``{"video"|"gif"|"image": [(view, channel, path)]}``
    (view None = the whole shot: the orbit, or the grid of all views) and ``"frames"`` (PNG directories)."""
    multi = shot.views > 1
    as_video = not shot.still and video_frames > 1
    out: dict[str, list[tuple[int | None, str, Path]]] = {"video": [], "gif": [], "image": [], "frames": []}
    targets: list[int | None] = [None] + (list(range(shot.views)) if multi else [])
    for ch in s.channels:
        sfx = _suffix(ch)
        for v in targets:
            stem = shot.name if v is None else f"view_{v:02d}{shot.tag}"
            if as_video:
                out["video"].append((v, ch, Path(f"{stem}{sfx}.mp4")))
                if s.gif:
                    out["gif"].append((v, ch, Path(f"{stem}{sfx}.gif")))
            else:
                out["image"].append((v, ch, Path(f"{stem}{sfx}.png")))
    if as_video and (s.stills or s.rgba):
        out["frames"].append((None, "all", Path(f"{shot.name}_frames")))
    return out


def render_shot(
    field: Any,
    occupancy: Any,
    shot: Shot,
    out_dir: Path,
    s: RenderSettings,
    *,
    progress: ProgressFn | None = None,
    video_frames: int | None = None,
) -> list[OutputFile]:
    """Render ``shot`` and write its files (:func:`shot_files`) into ``out_dir``.

    ``video_frames``: the length of the videos when the shot has fewer steps than that (a static field's
    fixed views: one image per view, repeated). Returns the files written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    repeat = max(1, int(video_frames or shot.steps) // shot.steps) if shot.times is None else 1
    n_video = shot.steps * repeat
    plan = shot_files(shot, s, n_video)
    near_far = _prepass_depth(field, occupancy, shot, s) if "depth" in s.channels else (0.0, 1.0)
    depth_extra = {"near": round(near_far[0], 5), "far": round(near_far[1], 5)}

    def extra(ch: str, **kw: Any) -> dict[str, Any]:
        return dict(depth_extra if ch == "depth" else {}, **kw)

    multi = shot.views > 1
    ncol = grid_columns(shot.views)
    rgba_png = s.rgba and "color" in s.channels
    total = shot.steps * shot.views
    files: list[OutputFile] = []
    with ExitStack() as stack:
        sinks: dict[tuple[int | None, str], list[VideoSink]] = {}
        for kind in ("video", "gif"):
            for v, ch, rel in plan[kind]:
                sink = stack.enter_context(VideoSink(out_dir / rel, s.fps, s.quality))
                sinks.setdefault((v, ch), []).append(sink)
                files.append(
                    OutputFile(out_dir / rel, shot.name, ch, kind, n_video, s.size, s.fps, extra(ch, view=v))
                )
        frames_dir = out_dir / plan["frames"][0][2] if plan["frames"] else None
        done = 0
        for k in range(shot.steps):
            per_view: list[dict[str, Tensor]] = []
            t = None if shot.times is None else shot.times[k]
            for v in range(shot.views):
                f = render_frame(field, occupancy, shot.camera(k, v), t, s, "normal" in s.channels)
                per_view.append(frame_channels(f, s.channels, s.background, near_far, s.colormap))
                done += 1
                if progress is not None:
                    progress(done, total, {})
            for ch in s.channels:
                key = "rgba" if (ch == "color" and rgba_png) else ch
                views_img = [pv[ch] for pv in per_view]
                whole = make_grid(torch.stack(views_img), nrow=ncol, padding=0) if multi else views_img[0]
                for v, img in [(None, whole)] + (list(enumerate(views_img)) if multi else []):
                    for sink in sinks.get((v, ch), []):
                        for _ in range(repeat):
                            sink.append(img)
                if frames_dir is not None:
                    for v in range(shot.views):
                        stem = f"{k:04d}" if not multi else f"view_{v:02d}_{k:04d}"
                        prefix = "" if ch == "color" else f"{ch}_"
                        _save_png(frames_dir / f"{prefix}{stem}.png", per_view[v][key])
                for v, c, rel in plan["image"]:
                    if c != ch:
                        continue
                    if v is None and multi:
                        img = make_grid(torch.stack([pv[key] for pv in per_view]), nrow=ncol, padding=0)
                    else:
                        img = per_view[0 if v is None else v][key]
                    _save_png(out_dir / rel, img)
        for v, ch, rel in plan["image"]:
            files.append(
                OutputFile(
                    out_dir / rel,
                    shot.name,
                    ch,
                    "image",
                    1,
                    s.size,
                    None,
                    extra(ch, view=v, rgba=rgba_png and ch == "color"),
                )
            )
        for _, ch, rel in plan["frames"]:
            files.append(
                OutputFile(
                    out_dir / rel,
                    shot.name,
                    ch,
                    "frames",
                    shot.steps * shot.views,
                    s.size,
                    None,
                    dict(
                        depth_extra if "depth" in s.channels else {}, channels=list(s.channels), rgba=rgba_png
                    ),
                )
            )
    return files


def grid_columns(views: int) -> int:
    """Views per row of a grid video (at most 5, as balanced as possible)."""
    rows = math.ceil(views / 5)
    return math.ceil(views / rows)
