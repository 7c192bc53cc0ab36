"""The real static and 4D fields through the renderer against hand-composited rays (SPEC 3.1, 3.2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from animate124.render.cameras import Cameras, reference_camera
from animate124.render.renderer import render


def _hand_composite(field, t_col: Tensor | None, max_steps: int, shade_fn) -> dict[str, float | Tensor]:
    """The centre ray of a 5×5 reference camera, composited by hand in float64: samples t_k = 0.8 + k·dt
    (the ray enters the box at 0.8 and leaves at 2.8, |d| = 1 so δ = dt), σ and albedo from the field, colours
    ``shade_fn(x, albedo)``, w = (1 − e^{−σδ})·T with T < 1e−4 ending the ray, white background (SPEC 3.2)."""
    dt = 2 * math.sqrt(3) / max_steps
    t = torch.arange(max_steps, dtype=torch.float64) * dt + 0.8
    t = t[t < 2.8]
    x = torch.stack([torch.zeros_like(t), torch.zeros_like(t), 1.8 - t], -1).float()
    tt = None if t_col is None else t_col.expand(len(t), 1)
    with torch.no_grad():
        out = field(x, tt)
        colour = shade_fn(x, tt, out.albedo).double()
    s = out.sigma.double() * dt
    trans = torch.exp(-(torch.cumsum(s, 0) - s))
    w = torch.where(trans >= 1e-4, (1 - torch.exp(-s)) * trans, torch.zeros_like(s))
    op = w.sum()
    return {"rgb": (w[:, None] * colour).sum(0) + (1 - op), "opacity": op, "depth": (w * t).sum()}


def test_real_fields_through_renderer():
    """The real static and 4D fields through the renderer: the centre pixel equals the hand-composited ray
    (lambertian shading of the field's own normals under a given light; each frame of a clip at its own
    time), and the gradients reach the grid tables."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.scene import fields
    from animate124.scene.shading import shade

    cfg = paper_grid_config(log2_table_size=10, desired_resolution=64)
    torch.manual_seed(0)
    # a weak blob (the paper's e^10 makes the centre ray opaque at once) and features far from the tiny
    # initial values: a partly transparent ray whose colour and background both count
    static = fields.StaticField(cfg, backend="torch", **field_kwargs(blob_density=1.0))
    with torch.no_grad():
        static.encoder.embeddings.uniform_(-1.0, 1.0)
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 1.0]), dim=0)
    cam = reference_camera(5, 5)
    out = render(
        static, cam, shading="lambertian", ambient=0.2, light_dir=light, compute_normals=True, max_steps=128
    )

    def lambertian(x, tt, albedo):
        return shade(albedo, static.normals(x, tt, eps=0.01), light, 0.2, "lambertian")

    want = _hand_composite(static, None, 128, lambertian)
    assert 0.05 < float(want["opacity"]) < 0.999
    torch.testing.assert_close(out.rgb[0, 0, :, 2, 2].double(), want["rgb"], atol=2e-5, rtol=0)
    assert out.opacity[0, 0, 0, 2, 2].item() == pytest.approx(float(want["opacity"]), abs=2e-5)
    assert out.depth[0, 0, 0, 2, 2].item() == pytest.approx(float(want["depth"]), abs=2e-5)
    (out.rgb.mean() + out.orientation.mean()).backward()
    assert static.encoder.embeddings.grad is not None and static.encoder.embeddings.grad.abs().sum() > 0

    dyn = fields.DynamicField(cfg, time_grid_size=4, backend="torch", **field_kwargs(blob_density=1.0))
    with torch.no_grad():
        dyn.encoder.embeddings.uniform_(-1.0, 1.0)  # every time grid its own values
    times = torch.tensor([[0.0, 0.5, 1.0]])
    clip = render(dyn, Cameras.cat([cam] * 3), times, max_steps=128)
    for f in range(3):
        want = _hand_composite(dyn, times[:, f : f + 1], 128, lambda x, tt, albedo: albedo)
        torch.testing.assert_close(clip.rgb[0, f, :, 2, 2].double(), want["rgb"], atol=2e-5, rtol=0)
        assert clip.opacity[0, f, 0, 2, 2].item() == pytest.approx(float(want["opacity"]), abs=2e-5)
    assert not torch.allclose(clip.rgb[0, 0], clip.rgb[0, 2], atol=1e-3)  # the frames read different grids
