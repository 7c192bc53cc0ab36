"""GPU checks of the packed marcher/renderer: CUDA results equal the CPU reference."""

from __future__ import annotations

import pytest
import torch

from animate124.render.cameras import orbit_cameras
from animate124.render.renderer import render
from animate124.scene.occupancy import OccupancyGrid

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_matches_cpu_with_skipping():
    from test_render_renderer import BlobField, SteppingBoxField

    for field_cls in (SteppingBoxField, BlobField):
        f_cpu = field_cls() if field_cls is BlobField else field_cls(slots=1)
        occ = OccupancyGrid(resolution=32)
        occ.update(f_cpu.density, generator=torch.Generator().manual_seed(0))
        cams = orbit_cameras(2, polar=75, height=32, width=32)
        ref = render(f_cpu, cams, occupancy=occ, compute_normals=True)
        f_gpu = f_cpu.cuda()
        out = render(f_gpu, cams.to("cuda"), occupancy=occ.cuda(), compute_normals=True)
        for k in ("rgb", "opacity", "depth", "normal"):
            torch.testing.assert_close(getattr(out, k).cpu(), getattr(ref, k), atol=1e-4, rtol=0)
        assert out.num_samples == ref.num_samples


def test_cuda_generator_perturb_and_backward():
    from test_render_renderer import BlobField

    f = BlobField().cuda()
    cams = orbit_cameras(1, height=64, width=64).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out = render(f, cams, perturb=True, generator=g)
    out.rgb.mean().backward()
    assert f.log_a.grad is not None and torch.isfinite(f.log_a.grad)
