"""Posed real-data scenes and image metrics shared by the benchmarks (``fit_multiview.py``,
``oracle_stages.py``).

Data conventions (../shared/data/README.md): ``transforms_{train,val,test}.json`` hold camera-to-world
matrices in the OpenGL camera convention (the camera looks down its −z, +y up; the world is z-up);
images are RGBA, composited on white as ``rgb·a + (1−a)``; the images are square, so
fovy = ``camera_angle_x``. Camera positions are multiplied by a scene scale (bound/1.5 = 0.667 for a
bound of 1) so that the objects, which fit in about [−1.5, 1.5]³, fit the field's [−1, 1]³ box.

Layouts: ``lego`` (or any NeRF-synthetic name) is ``<root>/nerf-synthetic-400/<name>``;
``dnerf:<name>`` is ``<root>/dnerf-400/<name>`` (every frame has a ``time`` in [0, 1]).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from animate124.render.cameras import Cameras

__all__ = ["Split", "load_split", "scene_dir", "is_dynamic_scene", "camera_radius", "psnr", "ssim"]


@dataclass
class Split:
    """Images ``[N, H, W, 3]`` float32 composited on white, cameras ``[N]`` (scaled), times ``[N]`` or
    None; ``alpha`` ``[N, H, W, 1]`` when loaded with ``keep_alpha``."""

    images: torch.Tensor
    cameras: Cameras
    times: torch.Tensor | None
    alpha: torch.Tensor | None = None


def is_dynamic_scene(scene: str) -> bool:
    """``dnerf:<name>`` scenes are dynamic (one camera per time); anything else is NeRF-synthetic."""
    return scene.startswith("dnerf:")


def scene_dir(data_root: Path, scene: str) -> Path:
    """``<root>/dnerf-400/<name>`` for ``dnerf:<name>``, else ``<root>/nerf-synthetic-400/<scene>``."""
    if is_dynamic_scene(scene):
        return Path(data_root) / "dnerf-400" / scene.split(":", 1)[1]
    return Path(data_root) / "nerf-synthetic-400" / scene


def camera_radius(scene_dir: Path, split: str = "train") -> float:
    """Mean distance of the split's cameras from the world origin (unscaled)."""
    meta = json.loads((Path(scene_dir) / f"transforms_{split}.json").read_text())
    c = torch.tensor([fr["transform_matrix"] for fr in meta["frames"]], dtype=torch.float64)[:, :3, 3]
    return float(c.norm(dim=-1).mean())


def load_split(
    scene_dir: Path,
    split: str,
    scale: float,
    downscale: int = 1,
    limit: int | None = None,
    *,
    keep_alpha: bool = False,
) -> Split:
    """Load ``transforms_<split>.json`` and its images (the first ``limit`` frames when given).

    Camera positions are multiplied by ``scale``; ``downscale > 1`` average-pools the images (the
    cameras get the smaller size, same field of view).
    """
    import imageio.v3 as iio

    meta = json.loads((Path(scene_dir) / f"transforms_{split}.json").read_text())
    frames = meta["frames"][:limit] if limit else meta["frames"]
    imgs, alphas, c2ws, times = [], [], [], []
    for fr in frames:
        path = Path(scene_dir) / (fr["file_path"].removeprefix("./") + ".png")
        rgba = torch.from_numpy(iio.imread(path)).float() / 255.0
        if rgba.shape[-1] == 3:
            rgba = torch.cat([rgba, torch.ones_like(rgba[..., :1])], -1)
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        a = rgba[..., 3:]
        if downscale > 1:
            rgb = F.avg_pool2d(rgb.permute(2, 0, 1)[None], downscale)[0].permute(1, 2, 0)
            a = F.avg_pool2d(a.permute(2, 0, 1)[None], downscale)[0].permute(1, 2, 0)
        imgs.append(rgb)
        if keep_alpha:
            alphas.append(a)
        m = torch.tensor(fr["transform_matrix"], dtype=torch.float32)
        m[:3, 3] *= scale
        c2ws.append(m)
        times.append(float(fr.get("time", 0.0)))
    images = torch.stack(imgs)
    n, h, w, _ = images.shape
    fovx = math.degrees(float(meta["camera_angle_x"]))
    fovy = math.degrees(2 * math.atan(math.tan(math.radians(fovx) / 2) * h / w))
    cams = Cameras(torch.stack(c2ws), torch.full((n,), fovy), h, w)
    has_time = "time" in meta["frames"][0]
    return Split(
        images,
        cams,
        torch.tensor(times) if has_time else None,
        torch.stack(alphas) if keep_alpha else None,
    )


# ----------------------------------------------------------------------------- metrics
def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    mse = F.mse_loss(pred.clamp(0, 1), gt).item()
    return -10.0 * math.log10(max(mse, 1e-12))


def ssim(pred: torch.Tensor, gt: torch.Tensor, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of [H,W,3] images in [0,1]: Gaussian 11×11 σ 1.5 window, valid region, channel mean,
    C1 = 0.01², C2 = 0.03² (Wang et al. 2004; as in the mip-NeRF / instant-ngp evaluations)."""
    x = pred.clamp(0, 1).permute(2, 0, 1)[:, None].double()
    y = gt.permute(2, 0, 1)[:, None].double()
    coords = torch.arange(size, dtype=torch.float64, device=x.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    gx, gy = g.view(1, 1, 1, size), g.view(1, 1, size, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, gx), gy)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).mean().item()
