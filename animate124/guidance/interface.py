"""The one call interface of the diffusion priors: ``prior(images, views, *, step) -> GuidanceOutput``.

Every prior (SD 1.5 ``"sd"``, Zero123-XL ``"zero123"``, video ``"video"``, ControlNet-tile
``"controlnet"``) implements :class:`Guidance`::

    out = prior(images, views, step=step)          # images [B, T, 3, H, W] in [0, 1]
    out.losses[prior.loss_key]                      # fp32 scalar, differentiable w.r.t. the images

* ``images``: the renders, ``[B, T, 3, H, W]`` in [0, 1]. Image priors treat the B·T frames as independent
  images; the video prior treats each of the B rows as one clip of T frames.
* ``views``: :class:`Views`, what any prior may need about the cameras (and ControlNet's frozen
  render), per frame ``[B, T]``. Each prior reads its part: SD the absolute azimuth (view-dependent
  text), Zero123 the pose relative to the reference camera, the video prior ``static_camera`` (and the
  azimuth in its upstream-view-text mode), ControlNet ``condition``.
* ``step``: the training step; accepted by every prior for schedules, used by none today.
* ``generator``: every random draw of the call (posterior samples, t, ε) comes from it.
* ``noise`` / ``t``: injected by tests to recompute the formula independently.

The prompt is not a call argument: text priors take ``prompt=`` / ``negative_prompt=`` at
construction and :meth:`TextGuidance.set_prompt` changes it (the embeddings are encoded and cached
there, and the tokenizer length is checked there).

Model weights are frozen; the UNet runs under ``torch.no_grad()``; the VAE encoder runs with grad so
the SDS gradient reaches the rendered images (SPEC 3.7-2). Losses come back in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from animate124.errors import InputError

if TYPE_CHECKING:
    from animate124.render.cameras import Cameras

#: the reference camera of every stage: polar 90°, azimuth 0°, radius 1.8 (SPEC 0, 3.4)
REFERENCE_CAMERA: tuple[float, float, float] = (90.0, 0.0, 1.8)

#: two camera-to-world matrices closer than this (max abs difference) are "the same camera"
STATIC_CAMERA_ATOL = 1e-6


@dataclass
class GuidanceOutput:
    """Named scalar loss terms (fp32, differentiable w.r.t. the images) and diagnostics.

    A diagnostic is a float or a 0-dim tensor; a device tensor is left unread so that the step does not
    wait for the GPU (the scalar log converts it with ``float()`` when it writes).
    """

    losses: dict[str, Tensor]
    diagnostics: dict[str, float | Tensor] = field(default_factory=dict)


def wrap_degrees(a: Tensor) -> Tensor:
    """Wrap angles in degrees to (−180, 180] (SPEC 3.3: "Δazimuth = φ − 0 wrapped to (−180, 180]")."""
    return 180.0 - torch.remainder(180.0 - a, 360.0)


def _as_bt(x: Tensor | float | Sequence, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    if t.ndim != 2:
        raise InputError(f"Views.{name} must be shaped [B, T], got {tuple(t.shape)}")
    return t


@dataclass(frozen=True, eq=False)  # tensors: no field-wise ==
class Views:
    """Per-frame camera information for a batch of renders ``[B, T, 3, H, W]`` (all fields per frame).

    Attributes:
        dpolar: ``[B, T]`` float64 degrees, polar − reference polar (polar from +y, SPEC 0).
        dazimuth: ``[B, T]`` float64 degrees, azimuth − reference azimuth, wrapped to (−180, 180]
            (azimuth = atan2(x, z): 0 on +z, +90 on +x, SPEC 0).
        dradius: ``[B, T]`` float64, radius − reference radius.
        static_camera: ``[B]`` bool, the clip's camera does not move (every frame the same pose).
        condition: optional ``[B, T, 3, H, W]`` frozen render in [0, 1] (ControlNet's condition).
        c2w: optional ``[B, T, 4, 4]`` camera-to-world matrices (for priors that look poses up).
        reference: (polar°, azimuth°, radius) of the reference camera the deltas are relative to.

    The angle tensors live on the CPU in float64 (they feed small per-frame weights and embeddings);
    ``condition`` and ``c2w`` stay where they were given. Construct with :meth:`from_cameras` (what the
    stages do: the angles come from the camera positions, so the Zero123 sign is tied to
    ``render/cameras.py``) or :meth:`from_relative` (tests, benchmarks).
    """

    dpolar: Tensor
    dazimuth: Tensor
    dradius: Tensor
    static_camera: Tensor
    condition: Tensor | None = None
    c2w: Tensor | None = None
    reference: tuple[float, float, float] = REFERENCE_CAMERA

    def __post_init__(self) -> None:
        dp = _as_bt(self.dpolar, "dpolar")
        da = wrap_degrees(_as_bt(self.dazimuth, "dazimuth"))
        dr = _as_bt(self.dradius, "dradius")
        if not dp.shape == da.shape == dr.shape:
            raise InputError(
                f"Views angles disagree in shape: {tuple(dp.shape)}, {tuple(da.shape)}, {tuple(dr.shape)}"
            )
        b, t = dp.shape
        static = torch.as_tensor(self.static_camera).detach().cpu().to(torch.bool).reshape(-1)
        if static.numel() == 1 and b != 1:
            static = static.expand(b).clone()
        if static.shape != (b,):
            raise InputError(f"Views.static_camera must be shaped [B] = [{b}], got {tuple(static.shape)}")
        if self.condition is not None and (
            self.condition.ndim != 5 or tuple(self.condition.shape[:3]) != (b, t, 3)
        ):
            raise InputError(
                f"Views.condition must be [{b}, {t}, 3, H, W], got {tuple(self.condition.shape)}"
            )
        if self.c2w is not None and tuple(self.c2w.shape) != (b, t, 4, 4):
            raise InputError(f"Views.c2w must be [{b}, {t}, 4, 4], got {tuple(self.c2w.shape)}")
        object.__setattr__(self, "dpolar", dp)
        object.__setattr__(self, "dazimuth", da)
        object.__setattr__(self, "dradius", dr)
        object.__setattr__(self, "static_camera", static)
        object.__setattr__(self, "reference", tuple(float(v) for v in self.reference))

    # ------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_relative(
        cls,
        dpolar: Tensor | float | Sequence,
        dazimuth: Tensor | float | Sequence,
        dradius: Tensor | float | Sequence,
        *,
        static_camera: Tensor | bool | Sequence[bool] | None = None,
        condition: Tensor | None = None,
        c2w: Tensor | None = None,
        reference: tuple[float, float, float] = REFERENCE_CAMERA,
    ) -> Views:
        """Views from relative angles; the three broadcast to a common ``[B, T]``.

        ``static_camera=None`` is inferred: a clip is static when all its frames have the same
        (Δpolar, Δazimuth, Δradius).
        """
        dp, da, dr = (
            torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in (dpolar, dazimuth, dradius)
        )
        dp, da, dr = (x.clone() for x in torch.broadcast_tensors(dp, da, dr))
        if dp.ndim != 2:
            raise InputError(f"relative angles must broadcast to [B, T], got {tuple(dp.shape)}")
        if static_camera is None:
            pose = torch.stack([dp, wrap_degrees(da), dr], dim=-1)  # [B, T, 3]
            static_camera = (pose - pose[:, :1]).abs().amax(dim=(1, 2)) <= 1e-9
        return cls(dp, da, dr, torch.as_tensor(static_camera), condition, c2w, reference)

    @classmethod
    def from_cameras(
        cls,
        cameras: Cameras,
        batch: int,
        frames: int,
        *,
        static_camera: Tensor | bool | Sequence[bool] | None = None,
        condition: Tensor | None = None,
        reference: tuple[float, float, float] = REFERENCE_CAMERA,
    ) -> Views:
        """Views of N = B·T cameras (row-major ``[B, T]``) from their camera-to-world matrices.

        The angles are computed from the camera positions ``p = c2w[:3, 3]`` (SPEC 0), not from the
        optional ``cameras.polar/azimuth`` attributes::

            r = |p|,  polar = acos(p_y / r)  (from +y),  azimuth = atan2(p_x, p_z)  (0 on +z, 90 on +x)

        minus the reference, azimuth wrapped to (−180, 180]. ``static_camera=None`` is inferred: a clip
        is static when all its c2w matrices agree to :data:`STATIC_CAMERA_ATOL`. ``c2w`` is kept.
        """
        n = len(cameras)
        if n != batch * frames:
            raise InputError(f"{n} cameras cannot be viewed as [B, T] = [{batch}, {frames}]")
        c2w = cameras.c2w.reshape(batch, frames, 4, 4)
        pos = c2w[..., :3, 3].detach().to("cpu", torch.float64)
        r = pos.norm(dim=-1)
        if bool((r <= 0).any()):
            raise InputError("a camera sits at the origin: its polar and azimuth are undefined")
        polar = torch.rad2deg(torch.arccos((pos[..., 1] / r).clamp(-1.0, 1.0)))
        azimuth = torch.rad2deg(torch.atan2(pos[..., 0], pos[..., 2]))
        ref_polar, ref_azimuth, ref_radius = reference
        if static_camera is None:
            m = c2w.detach()
            static_camera = (m - m[:, :1]).abs().amax(dim=(1, 2, 3)).cpu() <= STATIC_CAMERA_ATOL
        return cls(
            polar - ref_polar,
            azimuth - ref_azimuth,
            r - ref_radius,
            torch.as_tensor(static_camera),
            condition,
            c2w,
            reference,
        )

    # ------------------------------------------------------------------------------------ access

    @property
    def batch(self) -> int:
        return int(self.dpolar.shape[0])

    @property
    def frames(self) -> int:
        return int(self.dpolar.shape[1])

    @property
    def polar(self) -> Tensor:
        """``[B, T]`` absolute polar in degrees (reference + Δpolar)."""
        return self.reference[0] + self.dpolar

    @property
    def azimuth(self) -> Tensor:
        """``[B, T]`` absolute azimuth in degrees (reference + Δazimuth), wrapped to (−180, 180]."""
        return wrap_degrees(self.reference[1] + self.dazimuth)

    @property
    def radius(self) -> Tensor:
        """``[B, T]`` absolute radius (reference + Δradius)."""
        return self.reference[2] + self.dradius

    def check(self, images: Tensor) -> None:
        """Raise InputError unless ``images`` is ``[B, T, 3, H, W]`` with this B and T."""
        if images.ndim != 5 or tuple(images.shape[:2]) != (self.batch, self.frames):
            raise InputError(
                f"images {tuple(images.shape)} do not match the views [B, T] = [{self.batch}, {self.frames}]",
                "build the Views from the cameras the images were rendered with",
            )

    def select_frames(self, idx: Sequence[int] | Tensor) -> Views:
        """The same views restricted to frames ``idx`` (every per-frame field; ``static_camera`` kept)."""
        index = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if index.numel() == 0 or bool((index < 0).any()) or bool((index >= self.frames).any()):
            raise InputError(f"frame indices {index.tolist()} out of range for {self.frames} frames")

        def sel(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[:, index.to(x.device)]

        return Views(
            self.dpolar[:, index],
            self.dazimuth[:, index],
            self.dradius[:, index],
            self.static_camera,
            sel(self.condition),
            sel(self.c2w),
            self.reference,
        )


@runtime_checkable
class Guidance(Protocol):
    """A diffusion prior: renders + views -> named losses (module docstring)."""

    #: short name: "sd", "zero123", "video" or "controlnet"
    name: str
    #: the key of its loss in ``GuidanceOutput.losses``: "sds", "zero123", "video_sds", "controlnet"
    loss_key: str

    def __call__(
        self,
        images: Tensor,
        views: Views,
        *,
        step: int,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        t: Tensor | int | None = None,
    ) -> GuidanceOutput: ...


@runtime_checkable
class TextGuidance(Guidance, Protocol):
    """A text-conditioned prior (SD, video, ControlNet): the prompt is state, not a call argument."""

    prompt: str

    def set_prompt(self, prompt: str) -> None:
        """Encode and cache ``prompt`` (and its view variants where used); InputError if too long or if
        it holds ``<token>`` without a learned token."""
        ...
