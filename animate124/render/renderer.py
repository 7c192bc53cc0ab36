"""Volume renderer: cameras (+ times) -> images, through a radiance field (SPEC §3.1 shading/background, §3.2).

``render(field, cameras, times)`` renders ``B·T`` cameras. **Camera order:** ``cameras`` holds B·T
entries in row-major ``[B, T]`` order (entry ``b·T + k`` is frame k of clip b), i.e. the same order
as ``times.reshape(-1)``. With ``times=None`` the field is static (t is not passed), B = len(cameras)
and T = 1. Each frame uses the occupancy slot of its own time, ``⌊t·S⌋``; all frames' samples go
through one field call (in ``chunk``-sized pieces when given) and are composited per ray.

Outputs (per pixel; ``image = Σ w·c + (1−Σw)·bg``, ``opacity = Σw``, ``depth = Σ w·t``): depth is the
ray parameter t of upstream's unnormalized camera rays, i.e. planar (camera-z) depth, and it is
**not** divided by opacity (SPEC §3.2, §11.18). The normal image composites ``(n+1)/2`` with
**detached** weights and no background (as upstream). Per-sample outputs for the regularizers
(SPEC §3.6): ``weights`` [M] (entropy loss) and ``orientation`` [M] ``= sg(w)·max(0, n·d̂)²``.

Normals (``field.normals``: 6 extra density evaluations) are computed only when ``compute_normals``
is set or the shading mode needs them. When shading needs a light and ``light_dir`` is None, each
frame is lit from its camera position, ``l = normalize(origin)``; the training stages pass upstream's
random ``normalize(origin + N(0, I))`` themselves (SPEC §3.1).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from animate124.errors import Animate124Error
from animate124.render.cameras import Cameras, generate_rays
from animate124.render.marcher import composite, draw_offsets, march_rays, segment_sum
from animate124.scene.occupancy import OccupancyGrid
from animate124.scene.timeruns import TimeRuns
from animate124.transfer import to_device

__all__ = ["RenderOutput", "RayRenderOutput", "render", "render_rays", "SHADING_MODES", "RenderError"]

SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")


class RenderError(Animate124Error):
    """Invalid render arguments."""


class FieldLike(Protocol):
    """What the renderer needs from a field (see animate124.scene.fields.RadianceField)."""

    bound: float

    def __call__(self, x: Tensor, t: Tensor | None = None) -> Any: ...

    def normals(self, x: Tensor, t: Tensor | None = None, eps: float = 0.01) -> Tensor: ...


@dataclass
class RayRenderOutput:
    """Per-ray results: rgb [R,3], opacity [R], depth [R], normal [R,3] | None; packed per-sample
    weights [M], orientation [M] | None, ray_indices [M]."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None
    weights: Tensor
    orientation: Tensor | None
    ray_indices: Tensor
    num_samples: int


@dataclass
class RenderOutput:
    """Images ``[B, T, C, H, W]``: rgb (C=3), opacity (1), depth (1), normal (3, or None);
    packed per-sample ``weights`` [M] and ``orientation`` [M] (None without normals)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None
    weights: Tensor
    orientation: Tensor | None
    num_samples: int


def _runs_kw(runs: TimeRuns | None, start: int | None = None, stop: int | None = None) -> dict[str, Any]:
    """``runs=`` for a field call on points ``start:stop`` (nothing when there are no runs)."""
    if runs is None:
        return {}
    return {"runs": runs if start is None else _sliced(runs, start, stop)}


#: samples per activation-checkpoint segment when ``chunk`` is not set
CHECKPOINT_SEGMENT = 2**18


def _sliced(runs: TimeRuns | None, start: int, stop: int) -> TimeRuns | None:
    return None if runs is None else runs.slice(start, stop)


def _pieces(
    fn: Callable[..., Any], x: Tensor, t: Tensor | None, chunk: int | None, runs: TimeRuns | None,
    checkpoint: bool, pieces_without_grad: bool,
) -> list[Any]:  # fmt: skip
    """``fn(x_i, t_i, {"runs": ...})`` over ``chunk``-sized pieces of the samples. With ``checkpoint`` every
    piece (``CHECKPOINT_SEGMENT`` samples when ``chunk`` is None) is an activation-checkpoint segment when grad
    is enabled: it keeps nothing for backward but its inputs and is re-run in backward, with the same values
    and gradients as the same pieces without it. ``pieces_without_grad``: split into those pieces without grad
    too (bounds a no-grad render's transient memory)."""
    if checkpoint and (pieces_without_grad or torch.is_grad_enabled()):
        chunk = chunk or CHECKPOINT_SEGMENT
    if checkpoint and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint as activation_checkpoint

        fn = functools.partial(activation_checkpoint, fn, use_reentrant=False)
    n = x.shape[0]
    if chunk is None or n <= chunk:
        return [fn(x, t, _runs_kw(runs))]
    return [
        fn(x[i : i + chunk], None if t is None else t[i : i + chunk], _runs_kw(runs, i, i + chunk))
        for i in range(0, n, chunk)
    ]


def _eval_field(
    field: FieldLike,
    x: Tensor,
    t: Tensor | None,
    chunk: int | None,
    runs: TimeRuns | None = None,
    keep: int = 0,
) -> tuple[Tensor, Tensor]:
    """σ and albedo of the samples, ``chunk`` at a time. ``keep`` > 0 (``raymarch.checkpoint_field``): under
    grad, the grid and MLP activations of the first ``keep`` samples are kept for backward as usual and those
    of the rest are re-run in backward instead (:func:`_pieces`): the same values and gradients, at most
    ``keep`` samples' activations held, and the recompute costs only the samples beyond ``keep``. With a
    ``chunk``, ``keep`` is rounded down to a multiple of it, so that every field call sees the same samples as
    without ``keep`` (a CPU matmul's rounding of a row can depend on where the row sits in its batch)."""

    def one(xi: Tensor, ti: Tensor | None, kw: dict[str, Any]) -> tuple[Tensor, Tensor]:
        out = field(xi, ti, **kw)
        return out.sigma.float(), out.albedo.float()

    n = x.shape[0]
    if 0 < keep < n and torch.is_grad_enabled():  # the first ``keep`` samples as they are, the rest re-run
        keep = keep // chunk * chunk if chunk else keep
        parts = (
            _pieces(
                one, x[:keep], None if t is None else t[:keep], chunk, _sliced(runs, 0, keep), False, False
            )
            if keep
            else []
        )
        parts += _pieces(
            one, x[keep:], None if t is None else t[keep:], chunk, _sliced(runs, keep, n), True, False
        )
    else:
        parts = _pieces(one, x, t, chunk, runs, checkpoint=False, pieces_without_grad=False)
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _eval_normals(
    field: FieldLike, x: Tensor, t: Tensor | None, eps: float, chunk: int | None, checkpoint: bool = False,
    runs: TimeRuns | None = None,
) -> Tensor:  # fmt: skip
    """``field.normals`` over ``chunk``-sized pieces; with ``checkpoint`` the six density evaluations are
    re-run in backward instead of kept (:func:`_pieces`; ``raymarch.checkpoint_normals``), and a no-grad
    render (the refine stage's frozen copy, previews) is split into the same pieces, so it never holds the
    six evaluations of every sample at once. A field whose normals take the fused stencil kernel
    (``fused_normals_ready``, ``KernelOptions.fused_normals``) holds neither, so it is called once (per
    ``chunk`` when given) without the recompute."""

    def normals(xi: Tensor, ti: Tensor | None, kw: dict[str, Any]) -> Tensor:
        return field.normals(xi, ti, eps=eps, **kw).float()

    ready = getattr(field, "fused_normals_ready", None)
    if ready is not None and ready(x, t, runs):  # the fused kernel keeps no activations: nothing to recompute
        checkpoint = False
    parts = _pieces(normals, x, t, chunk, runs, checkpoint, pieces_without_grad=True)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def render_rays(
    field: FieldLike,
    origins: Tensor,
    dirs: Tensor,
    *,
    times: Tensor | None = None,
    slots: Tensor | None = None,
    bg_color: Tensor | None = None,
    occupancy: OccupancyGrid | None = None,
    shading: str = "albedo",
    ambient: float = 1.0,
    light_dir: Tensor | None = None,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    max_steps: int = 1024,
    min_near: float = 0.2,
    delta_mode: str = "metric",
    t_thresh: float = 1e-4,
    compute_normals: bool = False,
    normal_eps: float = 0.01,
    chunk: int | None = None,
    bound: float | None = None,
    checkpoint_normals: bool = False,
    offsets: Tensor | None = None,
    live_normals: bool = False,
    ray_runs: TimeRuns | None = None,
    checkpoint_field: int = 0,
    fused_march: bool | None = False,
) -> RayRenderOutput:
    """Render R rays (origins, dirs [R,3]). times: [R] per-ray time (None = static field); slots: [R]
    occupancy slot (None = slot 0); bg_color [3] or [R,3] (default white); light_dir [3] or [R,3].
    ``chunk`` bounds the samples per field call (None = one call). ``checkpoint_normals`` recomputes the
    normals' six density evaluations in backward instead of keeping their activations (same result),
    and bounds their no-grad evaluation to the same pieces. ``offsets``: the march's per-ray jitter drawn
    by the caller (see :func:`~animate124.render.marcher.march_rays`). ``live_normals`` evaluates the
    normals (six density evaluations each) only for the samples before early termination (transmittance
    ``>= t_thresh``): every other sample has weight exactly 0 and no gradient reaches it, so its normal
    changes nothing (the images, the orientation term and every gradient are the same; a NaN normal behind
    the surface no longer turns 0·NaN into a NaN pixel). Costs one device synchronisation (the count).
    ``ray_runs``: the rays' ``times`` as host-side runs (:class:`~animate124.scene.timeruns.TimeRuns` over
    rays); the samples' runs are then counted once here and passed to fields that accept them, so the 4D
    encoder never reads times back from the device (same values). ``checkpoint_field``: with more samples
    than this (0 = never), the field's own evaluations beyond the first ``checkpoint_field`` samples are
    recomputed in backward too (:func:`_eval_field`), so a training render keeps the grid and MLP activations
    of at most that many samples as the scene fills in (same result; the cost grows only with the excess).
    ``fused_march``: the marcher's lattice walk in one Triton kernel (``march_rays``' ``fused``: None = on CUDA,
    as the stages pass it with ``raymarch.fused_march``; False, the default, = the torch marcher)."""
    if shading not in SHADING_MODES:
        raise RenderError(f"unknown shading mode {shading!r}", f"use one of {SHADING_MODES}")
    dev = origins.device
    r = origins.shape[0]
    bnd = float(field.bound if bound is None else bound)
    need_normals = compute_normals or shading != "albedo"
    pk = march_rays(
        origins,
        dirs,
        bound=bnd,
        occupancy=occupancy,
        slots=slots,
        max_steps=max_steps,
        min_near=min_near,
        perturb=perturb,
        generator=generator,
        delta_mode=delta_mode,
        offsets=offsets,
        fused=fused_march,
    )
    m = pk.num_samples
    idx = pk.ray_indices
    ts = None if times is None else to_device(times, dev, torch.float32)[idx].unsqueeze(1)
    runs = None
    if ray_runs is not None and ts is not None and m > 0 and getattr(field, "accepts_time_runs", False):
        runs = ray_runs.recount(idx)  # one device read: samples per run
    if m > 0:
        sigma, albedo = _eval_field(field, pk.positions, ts, chunk, runs, checkpoint_field)
    else:
        sigma = origins.new_zeros(0)
        albedo = origins.new_zeros(0, 3)
    comp = composite(sigma, pk.deltas, idx, r, t_thresh)
    normals = None
    if need_normals and m == 0:
        normals = origins.new_zeros(0, 3)
    elif need_normals and live_normals:
        live = torch.nonzero(comp.transmittance >= t_thresh).squeeze(1)  # where composite keeps the weight
        if live.numel() == m:
            normals = _eval_normals(field, pk.positions, ts, normal_eps, chunk, checkpoint_normals, runs)
        else:
            live_runs = None if runs is None else runs.recount(live)
            part = _eval_normals(
                field,
                pk.positions[live],
                None if ts is None else ts[live],
                normal_eps,
                chunk,
                checkpoint_normals,
                live_runs,
            )
            normals = part.new_zeros(m, 3).index_copy(0, live, part)
    elif need_normals:
        normals = _eval_normals(field, pk.positions, ts, normal_eps, chunk, checkpoint_normals, runs)
    dirs_unit = torch.nn.functional.normalize(dirs.float(), dim=-1)
    if shading == "albedo":
        color = albedo
    else:
        from animate124.scene.shading import shade  # lazy: written in parallel, keep imports light

        if light_dir is None:
            light = torch.nn.functional.normalize(origins.float(), dim=-1)[idx]
        else:
            light = to_device(light_dir, dev, torch.float32)
            light = light[idx] if light.ndim == 2 else light
        color = shade(albedo, normals, light, ambient, shading).float()

    w = comp.weights
    rgb = segment_sum(w[:, None] * color, idx, r)
    depth = segment_sum(w * pk.t, idx, r)
    opacity = comp.opacity
    if bg_color is None:
        bg = torch.ones(3, device=dev)
    else:
        bg = to_device(bg_color, dev, torch.float32)
    rgb = rgb + (1.0 - opacity)[:, None] * bg
    normal_img = orientation = None
    if normals is not None:
        wd = w.detach()
        normal_img = segment_sum(wd[:, None] * (normals + 1.0) / 2.0, idx, r)
        cos = (normals * dirs_unit[idx]).sum(-1)
        orientation = wd * cos.clamp_min(0.0) ** 2
    return RayRenderOutput(
        rgb=rgb,
        opacity=opacity,
        depth=depth,
        normal=normal_img,
        weights=w,
        orientation=orientation,
        ray_indices=idx,
        num_samples=m,
    )


def _cat_optional(xs: list[Tensor | None]) -> Tensor | None:
    """Concatenate per-chunk tensors that are all present (else None: no chunk computed them)."""
    present = [x for x in xs if x is not None]
    return torch.cat(present) if len(present) == len(xs) else None


def _cat_outputs(parts: list[RayRenderOutput]) -> RayRenderOutput:
    offsets, acc = [], 0
    for p in parts:
        offsets.append(acc)
        acc += p.rgb.shape[0]
    return RayRenderOutput(
        rgb=torch.cat([p.rgb for p in parts]),
        opacity=torch.cat([p.opacity for p in parts]),
        depth=torch.cat([p.depth for p in parts]),
        normal=_cat_optional([p.normal for p in parts]),
        weights=torch.cat([p.weights for p in parts]),
        orientation=_cat_optional([p.orientation for p in parts]),
        ray_indices=torch.cat([p.ray_indices + o for p, o in zip(parts, offsets, strict=True)]),
        num_samples=sum(p.num_samples for p in parts),
    )


def render(
    field: FieldLike,
    cameras: Cameras,
    times: Tensor | None = None,
    *,
    shading: str = "albedo",
    ambient: float = 1.0,
    light_dir: Tensor | None = None,
    bg_color: Tensor | None = None,
    occupancy: OccupancyGrid | None = None,
    perturb: bool = False,
    max_steps: int = 1024,
    compute_normals: bool = False,
    normal_eps: float = 0.01,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    ray_noise_scale: float = 0.0,
    min_near: float = 0.2,
    delta_mode: str = "metric",
    t_thresh: float = 1e-4,
    ray_chunk: int | None = None,
    checkpoint_normals: bool = False,
    frames: Sequence[int] | None = None,
    live_normals: bool = False,
    checkpoint_field: int = 0,
    fused_march: bool | None = False,
) -> RenderOutput:
    """Render B·T cameras (order in the module docstring) -> :class:`RenderOutput` images [B,T,C,H,W].

    times: [B, T] in [0,1] or None (static). bg_color: [3] or [B, 3] (one colour per clip, shared by
    its frames; default white). light_dir: [3], [B, 3] (per clip), [B, T, 3] or [B·T, 3] (per frame: a
    moving camera's light follows it, ``l_f = normalize(origin_f + n)``, SPEC 3.1) or None. ``ray_noise_scale`` is the
    reference view's ``known_view_noise_scale`` (SPEC §3.4, drawn with ``generator``).
    ``ray_chunk`` renders that many rays at a time (large no-grad renders); ``chunk`` bounds the
    samples per field call; ``checkpoint_normals``, ``live_normals``, ``checkpoint_field`` and ``fused_march``:
    see :func:`render_rays`.
    ``frames``: render only these frames of every clip (indices into T; images [B, len(frames), ...]), each
    exactly as the whole render without ``ray_chunk`` gives it: the random numbers are drawn for every ray of every frame, in the
    same order, and the selected rays' share is used. The refine stage's frozen copy renders only the
    frames ControlNet reads this way.
    """
    n = len(cameras)
    if times is None:
        b, tt = n, 1
    else:
        if times.ndim != 2 or times.shape[0] * times.shape[1] != n:
            raise RenderError(
                f"times must be [B,T] with B*T = {n} cameras, got {tuple(times.shape)}",
                "pass one camera per (clip, frame) in row-major [B,T] order",
            )
        b, tt = times.shape
    h, w = cameras.height, cameras.width
    hw = h * w
    dev = cameras.device
    origins, dirs = generate_rays(cameras, ray_noise_scale, generator)
    origins = origins.reshape(-1, 3)
    dirs = dirs.reshape(-1, 3)
    cam_of_ray = torch.arange(n, device=dev).repeat_interleave(hw)

    ray_times = slots = None
    cam_times: Tensor | None = None  # [cameras] on the host: each camera's rays share its time
    if times is not None:
        cam_times = times.detach().reshape(-1).to("cpu", torch.float32)  # no device wait for host times
        if times.device.type == "cpu":
            tflat = to_device(cam_times, dev)
        else:
            tflat = to_device(times.reshape(-1), dev, torch.float32)
        ray_times = tflat[cam_of_ray]
        if occupancy is not None:
            slots = occupancy.slot_for_time(tflat)[cam_of_ray]

    def per_ray(v: Tensor | None, what: str, per_frame: bool) -> Tensor | None:
        """[3] -> as is; [B, 3] -> one value per clip; [B, T, 3] or [B·T, 3] -> one per frame (if allowed)."""
        if v is None:
            return None
        v = to_device(v, dev, torch.float32)
        if v.ndim == 1:
            return v
        if per_frame and v.shape in ((b, tt, 3), (n, 3)):
            return v.reshape(n, 3).repeat_interleave(hw, dim=0)
        if v.shape != (b, 3):
            allowed = f"[3], [B,3]=[{b},3]" + (f", [B,T,3]=[{b},{tt},3]" if per_frame else "")
            raise RenderError(f"{what} must be {allowed}, got {tuple(v.shape)}")
        return v.repeat_interleave(tt * hw, dim=0)

    bg_r = per_ray(bg_color, "bg_color", per_frame=False)
    light_r = per_ray(light_dir, "light_dir", per_frame=True)
    offsets = None
    if frames is not None:
        keep = [int(f) for f in frames]
        if not keep or any(f < 0 or f >= tt for f in keep):
            raise RenderError(f"frames {keep} out of range for clips of {tt} frames")
        # the whole render's draws first (as march_rays makes them for all rays at once), then the subset
        offsets = draw_offsets(origins.shape[0], generator, dev) if perturb else None
        cams = (torch.arange(b, device=dev)[:, None] * tt + to_device(torch.tensor(keep), dev)[None]).reshape(
            -1
        )
        sel = (cams[:, None] * hw + torch.arange(hw, device=dev)[None]).reshape(-1)
        origins, dirs = origins[sel], dirs[sel]
        ray_times = None if ray_times is None else ray_times[sel]
        slots = None if slots is None else slots[sel]
        bg_r = bg_r if bg_r is None or bg_r.ndim == 1 else bg_r[sel]
        light_r = light_r if light_r is None or light_r.ndim == 1 else light_r[sel]
        offsets = None if offsets is None else offsets[sel]
        if cam_times is not None:
            cam_times = cam_times[(torch.arange(b)[:, None] * tt + torch.tensor(keep)[None]).reshape(-1)]
        tt = len(keep)
    kwargs: dict[str, Any] = dict(
        occupancy=occupancy,
        shading=shading,
        ambient=ambient,
        perturb=perturb,
        generator=generator,
        max_steps=max_steps,
        min_near=min_near,
        delta_mode=delta_mode,
        t_thresh=t_thresh,
        compute_normals=compute_normals,
        normal_eps=normal_eps,
        chunk=chunk,
        checkpoint_normals=checkpoint_normals,
        live_normals=live_normals,
        checkpoint_field=checkpoint_field,
        fused_march=fused_march,
    )
    r = origins.shape[0]
    step = r if ray_chunk is None else max(1, int(ray_chunk))
    parts: list[RayRenderOutput] = []
    for i in range(0, r, step):
        sl = slice(i, min(i + step, r))
        ray_runs = None
        if cam_times is not None:  # the cameras this ray chunk covers, hw rays each
            first, last = sl.start // hw, (sl.stop - 1) // hw
            counts = [min(sl.stop, (c + 1) * hw) - max(sl.start, c * hw) for c in range(first, last + 1)]
            ray_runs = TimeRuns(tuple(counts), cam_times[first : last + 1])

        parts.append(
            render_rays(
                field,
                origins[sl],
                dirs[sl],
                times=None if ray_times is None else ray_times[sl],
                slots=None if slots is None else slots[sl],
                bg_color=bg_r if bg_r is None or bg_r.ndim == 1 else bg_r[sl],
                light_dir=light_r if light_r is None or light_r.ndim == 1 else light_r[sl],
                offsets=None if offsets is None else offsets[sl],
                ray_runs=ray_runs,
                **kwargs,
            )
        )
    out = parts[0] if len(parts) == 1 else _cat_outputs(parts)

    def img(x: Tensor, c: int) -> Tensor:
        return x.reshape(b, tt, h, w, c).permute(0, 1, 4, 2, 3).contiguous()

    return RenderOutput(
        rgb=img(out.rgb, 3),
        opacity=img(out.opacity[:, None], 1),
        depth=img(out.depth[:, None], 1),
        normal=None if out.normal is None else img(out.normal, 3),
        weights=out.weights,
        orientation=out.orientation,
        num_samples=out.num_samples,
    )
