"""Marcher and renderer against hand-computed values on analytic fields (SPEC §3.1, §3.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from animate124.render.cameras import Cameras, orbit_cameras, reference_camera
from animate124.render.marcher import composite, march_rays
from animate124.render.renderer import RenderError, render, render_rays
from animate124.scene.occupancy import OccupancyGrid

DT = 2 * math.sqrt(3) / 1024


# ----------------------------------------------------------------------------- analytic fields
@dataclass
class FieldOutput:
    sigma: Tensor
    albedo: Tensor


class AnalyticField(nn.Module):
    """Implements the RadianceField contract: forward -> (sigma, albedo), density, normals."""

    bound = 1.0
    dynamic = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def albedo(self, x: Tensor, t: Tensor | None) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def forward(self, x: Tensor, t: Tensor | None = None) -> FieldOutput:
        self.calls += 1
        return FieldOutput(self.density(x, t), self.albedo(x, t))

    def normals(self, x: Tensor, t: Tensor | None = None, eps: float = 0.01) -> Tensor:
        """-grad sigma by central differences, clamped to the box (SPEC §3.1)."""
        cols = []
        for k in range(3):
            e = torch.zeros(3, dtype=x.dtype, device=x.device)
            e[k] = eps
            hi = self.density((x + e).clamp(-1, 1), t)
            lo = self.density((x - e).clamp(-1, 1), t)
            cols.append((hi - lo) / (2 * eps))
        return torch.nan_to_num(torch.nn.functional.normalize(-torch.stack(cols, -1), dim=-1))


class SlabField(AnalyticField):
    def __init__(self, sigma: float = 5.0, half: float = 0.25, color=(0.2, 0.4, 0.6)) -> None:
        super().__init__()
        self.sigma, self.half, self.color = sigma, half, torch.tensor(color)

    def density(self, x, t=None):
        return torch.where(x[:, 2].abs() < self.half, self.sigma, 0.0) + 0 * x[:, 0]

    def albedo(self, x, t):
        return self.color.expand(x.shape[0], 3)


class SphereField(AnalyticField):
    def __init__(self, sigma: float = 3.0, radius: float = 0.5) -> None:
        super().__init__()
        self.sigma, self.radius = sigma, radius

    def density(self, x, t=None):
        return torch.where(x.norm(dim=-1) < self.radius, self.sigma, 0.0) + 0 * x[:, 0]


class BlobField(AnalyticField):
    """sigma = a·exp(-|x|²/(2 s²)) with a learnable log-scale; normals are x/|x| for any a."""

    def __init__(self, a: float = 20.0, s: float = 0.3) -> None:
        super().__init__()
        self.log_a = nn.Parameter(torch.tensor(math.log(a)))
        self.s = s

    def density(self, x, t=None):
        return self.log_a.exp() * torch.exp(-(x * x).sum(-1) / (2 * self.s**2))


class SteppingBoxField(AnalyticField):
    """Open box |x|∞ < half shifted along x by ``cell·⌊t·slots⌋``; faces lie on occupancy cell faces."""

    def __init__(self, sigma=6.0, half=0.5, cell=0.25, slots=4) -> None:
        super().__init__()
        self.sigma, self.half, self.cell, self.slots = sigma, half, cell, slots
        self.dynamic = slots > 1

    def density(self, x, t=None):
        if t is not None:
            k = (t[:, 0] * self.slots).floor().clamp(0, self.slots - 1)
            x = x - torch.stack([k * self.cell, 0 * k, 0 * k], -1)
        return torch.where((x.abs() < self.half).all(-1), self.sigma, 0.0) + 0 * x[:, 0]


def _axis_ray(offset=(0.0, 0.0), d=(0.0, 0.0, -1.0)):
    o = torch.tensor([[offset[0], offset[1], 1.8]])
    return o, torch.tensor([d])


def _discrete(sigma_of_t, near: float, far: float, delta: float, n_max: int = 1024):
    """Reference quadrature in float64: samples t_k = near + k·DT < far, s = σ·delta, no threshold hit."""
    t = torch.arange(n_max, dtype=torch.float64) * DT + near
    t = t[t < far]
    s = sigma_of_t(t) * delta
    trans = torch.exp(-(torch.cumsum(s, 0) - s))
    w = (1 - torch.exp(-s)) * trans
    return w, t


# ----------------------------------------------------------------------------- tests
def test_slab_axis_ray_exact_and_closed_form():
    f = SlabField(sigma=5.0)
    o, d = _axis_ray()
    out = render_rays(f, o, d)
    w, t = _discrete(lambda t: torch.where((1.8 - t).abs() < 0.25, 5.0, 0.0).double(), 0.8, 2.8, DT)
    assert out.opacity.item() == pytest.approx(w.sum().item(), abs=1e-5)
    assert out.depth.item() == pytest.approx((w * t).sum().item(), abs=1e-5)
    # closed form of the continuous integral, within the quadrature error O(σ·dt)
    a, t0, length = 5.0, 1.55, 0.5
    op = 1 - math.exp(-a * length)
    depth = t0 * op + (op / a - length * math.exp(-a * length))
    assert out.opacity.item() == pytest.approx(op, abs=2 * a * DT)
    assert out.depth.item() == pytest.approx(depth, abs=0.02)
    c = torch.tensor([0.2, 0.4, 0.6])
    torch.testing.assert_close(out.rgb[0], out.opacity[0] * c + (1 - out.opacity[0]), atol=1e-6, rtol=0)
    assert out.num_samples == len(t) == out.weights.shape[0]


@pytest.mark.parametrize("mode", ["metric", "upstream"])
def test_slab_oblique_ray_delta_modes(mode):
    f = SlabField(sigma=4.0)
    o, d = _axis_ray(d=(0.5, 0.0, -1.0))  # unnormalized, |d| = sqrt(1.25); t is still planar depth
    out = render_rays(f, o, d, delta_mode=mode)
    norm = math.sqrt(1.25)
    delta = DT * norm if mode == "metric" else DT
    # the ray leaves the box through x = 1 at t = 2
    w, t = _discrete(lambda t: torch.where((1.8 - t).abs() < 0.25, 4.0, 0.0).double(), 0.8, 2.0, delta)
    assert out.opacity.item() == pytest.approx(w.sum().item(), abs=1e-5)
    assert out.depth.item() == pytest.approx((w * t).sum().item(), abs=1e-5)
    # slab at t in (1.55, 2.05), cut by the exit at t = 2: 0.45 in t units, 0.45·|d| metric
    expected = 1 - math.exp(-4.0 * 0.45 * (norm if mode == "metric" else 1.0))
    assert out.opacity.item() == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("b", [0.0, 0.2, 0.4])
def test_sphere_chord_opacity(b):
    f = SphereField(sigma=3.0, radius=0.5)
    o, d = _axis_ray(offset=(b, 0.0))
    out = render_rays(f, o, d)
    chord = 2 * math.sqrt(0.25 - b * b)
    w, t = _discrete(
        lambda t: torch.where(torch.sqrt(b * b + (1.8 - t) ** 2) < 0.5, 3.0, 0.0).double(), 0.8, 2.8, DT
    )
    assert out.opacity.item() == pytest.approx(w.sum().item(), abs=1e-5)
    assert out.opacity.item() == pytest.approx(1 - math.exp(-3.0 * chord), abs=2 * 3.0 * DT)
    # the colour is the weighted mean albedo (x+1)/2 along the chord: x = b everywhere on this ray
    assert out.rgb[0, 0].item() == pytest.approx(
        out.opacity.item() * (b + 1) / 2 + 1 - out.opacity.item(), abs=1e-5
    )


def test_early_termination_zeroes_weights_after_threshold():
    f = SlabField(sigma=2000.0)
    o, d = _axis_ray()
    out = render_rays(f, o, d)
    pk = march_rays(o, d)
    s = f.density(pk.positions) * pk.deltas
    trans = torch.exp(-(torch.cumsum(s.double(), 0) - s.double()))
    keep = trans >= 1e-4
    assert (keep & (s > 0)).sum() < (s > 0).sum()  # the threshold is reached inside the slab
    assert torch.all(out.weights[~keep] == 0)
    assert torch.all(out.weights[keep & (s > 0)] > 0)
    assert out.opacity.item() == pytest.approx(1.0, abs=1e-4)


def test_composite_segments_are_independent():
    """Packed compositing of several rays equals compositing each ray alone (huge optical depth first)."""
    sig = torch.tensor([1e6, 1e6, 3.0, 1.0, 2.0, 0.0, 5.0])
    dl = torch.full((7,), 0.01)
    idx = torch.tensor([0, 0, 2, 2, 2, 3, 3])
    res = composite(sig, dl, idx, 5)
    for r in range(5):
        m = idx == r
        if m.any():
            alone = composite(sig[m], dl[m], torch.zeros(int(m.sum()), dtype=torch.long), 1)
            torch.testing.assert_close(res.weights[m], alone.weights)
    assert res.opacity[1] == 0 and res.opacity[4] == 0
    s = sig[2:5] * 0.01
    ref = (1 - torch.exp(-s)) * torch.exp(-(torch.cumsum(s, 0) - s))
    torch.testing.assert_close(res.weights[2:5], ref)


def test_composite_gradient_of_terminated_samples_is_exactly_zero():
    """∂L/∂σ_i = δ_i·([T_i ≥ θ]·T_{i+1}·g_i − Σ_{j>i} w_j·g_j) for L = Σ w·g (g = ∂L/∂w): 0 exactly behind
    early termination, where autograd through the global cumsum leaves a ~1e-16 residue (the grid backward
    skips all-zero rows, so an exact 0 saves its table additions); the live samples against the formula in
    float64 (fp32 α, T and w: a few ulps of T_{i+1}·|g| and Σ|w·g| per term)."""
    gen = torch.Generator().manual_seed(0)
    n = torch.randint(1, 60, (300,), generator=gen)
    idx = torch.repeat_interleave(torch.arange(300), n)
    sig = (torch.rand(idx.numel(), generator=gen) * 30).requires_grad_()
    dl = torch.full((idx.numel(),), 0.05)
    g = torch.randn(idx.numel(), generator=gen)
    res = composite(sig, dl, idx, 300)
    (res.weights * g).sum().backward()
    dead = res.transmittance < 1e-4
    assert 1000 < int(dead.sum()) < idx.numel() - 1000  # both kinds, many rays terminate
    assert torch.all(sig.grad[dead] == 0)
    want = torch.zeros(idx.numel(), dtype=torch.float64)
    s64, g64 = (sig.detach() * dl).double(), g.double()
    start = 0
    for c in n.tolist():
        s_r, g_r = s64[start : start + c], g64[start : start + c]
        t_r = torch.exp(-(torch.cumsum(s_r, 0) - s_r))
        live = t_r >= 1e-4
        w_r = torch.where(live, (1 - torch.exp(-s_r)) * t_r, 0.0)
        after = torch.flip(torch.cumsum(torch.flip(w_r * g_r, [0]), 0), [0]) - w_r * g_r  # Σ_{j>i} w_j g_j
        want[start : start + c] = 0.05 * (torch.where(live, t_r * torch.exp(-s_r) * g_r, 0.0) - after)
        start += c
    scale = 0.05 * (g64.abs().max())  # |T·g| and per-term magnitudes
    torch.testing.assert_close(sig.grad.double(), want, atol=float(scale) * 1e-5, rtol=0)


def test_background_blending_per_clip():
    f = SlabField(sigma=1.0, half=0.1)
    cams = orbit_cameras(2, height=6, width=6)
    bg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = render(f, cams, bg_color=bg)
    plain = render(f, cams, bg_color=torch.zeros(3))
    for b in range(2):
        expect = plain.rgb[b] + (1 - plain.opacity[b]) * bg[b].view(1, 3, 1, 1)
        torch.testing.assert_close(out.rgb[b], expect, atol=1e-6, rtol=0)
    white = render(f, cams)
    torch.testing.assert_close(white.rgb, plain.rgb + (1 - plain.opacity))
    with pytest.raises(RenderError):
        render(f, cams, bg_color=torch.zeros(3, 3))


def test_normal_image_uses_detached_weights_and_orientation():
    f = BlobField(a=20.0, s=0.3)
    cam = reference_camera(5, 5)
    out = render(f, cam, compute_normals=True)
    assert out.normal is not None and out.orientation is not None
    op = out.opacity[0, 0, 0, 2, 2].item()
    assert op > 0.999
    centre = out.normal[0, 0, :, 2, 2]
    # front half faces the camera: n = +z -> colour (0.5, 0.5, 1)·opacity (back half is hidden)
    torch.testing.assert_close(centre, torch.tensor([0.5, 0.5, 1.0]) * op, atol=2e-3, rtol=0)
    # normals do not depend on the amplitude a, so with detached weights d(normal image)/d(log a) = 0
    out.normal.sum().backward()
    assert f.log_a.grad.abs().item() < 1e-4
    f.zero_grad()
    render(f, cam, compute_normals=True).opacity.sum().backward()
    assert f.log_a.grad.abs().item() > 1e-3
    # orientation = sg(w)·max(0, n·d̂)²: recompute from the packed samples of the centre ray
    o, d = _axis_ray()
    r = render_rays(f, o, d, compute_normals=True)
    pk = march_rays(o, d)
    n = f.normals(pk.positions)
    ref = r.weights.detach() * (n @ torch.tensor([0.0, 0.0, -1.0])).clamp_min(0) ** 2
    torch.testing.assert_close(r.orientation, ref)
    assert r.orientation.sum() > 0  # the back half faces away from the camera


def test_no_normals_unless_needed():
    f = SlabField()
    out = render(f, reference_camera(4, 4))
    assert out.normal is None and out.orientation is None
    assert f.calls == 1


def test_empty_space_skipping_is_exact_static():
    f = SteppingBoxField(slots=1)
    occ = OccupancyGrid(resolution=8, num_slots=1)
    occ.update(f.density, generator=torch.Generator().manual_seed(0))
    assert 0 < occ.bitfield.float().mean() < 0.2
    cams = orbit_cameras(3, polar=70, height=12, width=12)
    full = render(f, cams)
    skip = render(f, cams, occupancy=occ)
    for k in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(getattr(skip, k), getattr(full, k), atol=1e-6, rtol=0)
    assert skip.num_samples < 0.3 * full.num_samples


@pytest.mark.parametrize("bug", [False, True])
def test_empty_space_skipping_per_frame_slots(bug):
    f = SteppingBoxField(slots=4)
    occ = OccupancyGrid(resolution=8, num_slots=4, upstream_times_bug=bug)
    occ.update(f.density, generator=torch.Generator().manual_seed(0))
    times = torch.tensor([[0.05, 0.3, 0.55, 0.95]])
    cams = Cameras.cat([reference_camera(10, 10)] * 4)
    cams = Cameras(cams.c2w, cams.fovy_deg, 10, 10)
    full = render(f, cams, times)
    skip = render(f, cams, times, occupancy=occ)
    assert full.rgb.shape == (1, 4, 3, 10, 10)
    assert not torch.allclose(full.rgb[0, 0], full.rgb[0, 3])  # the box moved
    if bug:  # all slots refreshed at t = 0.5 (SPEC §11.2): frames of other slots lose their moving part
        assert not torch.allclose(skip.opacity[0, 0], full.opacity[0, 0], atol=1e-3)
    else:
        torch.testing.assert_close(skip.rgb, full.rgb, atol=1e-6, rtol=0)
        torch.testing.assert_close(skip.depth, full.depth, atol=1e-6, rtol=0)


def test_chunking_and_perturb():
    f = SphereField()
    cams = orbit_cameras(2, height=8, width=8)
    ref = render(f, cams)
    chunked = render(f, cams, chunk=1000, ray_chunk=37)
    for k in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(getattr(chunked, k), getattr(ref, k), atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.weights, ref.weights, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    pert = render(f, cams, perturb=True, generator=g)
    assert not torch.allclose(pert.depth, ref.depth)
    torch.testing.assert_close(pert.opacity, ref.opacity, atol=2 * 3.0 * DT, rtol=0)


def test_march_respects_max_steps_and_first_offset():
    o, d = _axis_ray()
    pk = march_rays(o, d, max_steps=64)
    dt = 2 * math.sqrt(3) / 64
    assert pk.num_samples == math.ceil(2.0 / dt)  # from near 0.8 to far 2.8 with dt of 64 steps
    torch.testing.assert_close(pk.t[:3], 0.8 + dt * torch.arange(3.0))
    g = torch.Generator().manual_seed(5)
    pp = march_rays(o, d, max_steps=64, perturb=True, generator=g)
    u = (pp.t[0] - 0.8) / dt
    assert 0 <= u < 1
    torch.testing.assert_close(pp.t[1:4] - pp.t[:3], torch.full((3,), dt))
    miss = march_rays(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert miss.num_samples == 0


def test_gradients_reach_field_and_times_passed():
    f = BlobField()
    seen = []
    orig = f.density

    def density(x, t=None):
        seen.append(t)
        return orig(x, t)

    f.density = density  # type: ignore[method-assign]
    cams = orbit_cameras(2, height=4, width=4)
    out = render(f, cams, torch.tensor([[0.25], [0.75]]))
    out.rgb.sum().backward()
    assert f.log_a.grad is not None and f.log_a.grad.abs() > 0
    t = seen[0]
    assert t.shape[1] == 1 and set(t[:, 0].tolist()) <= {0.25, 0.75}


def test_lambertian_shading_uses_scene_shade(monkeypatch):
    from animate124.scene import shading

    calls = []
    real = shading.shade

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mode", args[4] if len(args) > 4 else None))
        return real(*args, **kwargs)

    f = BlobField()
    cam = reference_camera(4, 4)
    monkeypatch.setattr(shading, "shade", spy)
    lam = render(f, cam, shading="lambertian", ambient=1.0)
    assert calls == ["lambertian"]  # the renderer shades through scene.shading.shade
    monkeypatch.undo()
    alb = render(f, cam)
    torch.testing.assert_close(lam.rgb, alb.rgb, atol=1e-5, rtol=0)  # ambient 1 = albedo (SPEC §3.4)
    # ambient 0: lit from the camera side the centre shows the albedo (x+1)/2 (x = y = 0) of the front
    # surface; lit from behind, the visible (front-facing) normals get max(0, n·l) = 0 -> black
    cam5 = reference_camera(5, 5)
    front = render(f, cam5, shading="lambertian", ambient=0.0, light_dir=torch.tensor([0.0, 0.0, 1.0]))
    back = render(f, cam5, shading="lambertian", ambient=0.0, light_dir=torch.tensor([0.0, 0.0, -1.0]))
    assert front.opacity[0, 0, 0, 2, 2] > 0.999
    torch.testing.assert_close(front.rgb[0, 0, :2, 2, 2], torch.full((2,), 0.5), atol=0.02, rtol=0)
    assert front.rgb[0, 0, 2, 2, 2] > 0.6  # (z+1)/2 on the front surface (z > 0)
    torch.testing.assert_close(back.rgb[0, 0, :, 2, 2], torch.zeros(3), atol=0.02, rtol=0)


def test_camera_order_is_row_major_b_t():
    f = SteppingBoxField(slots=4)
    cams = Cameras.cat([reference_camera(6, 6)] * 4)
    out = render(f, cams, torch.tensor([[0.05, 0.95], [0.95, 0.05]]))
    assert out.rgb.shape == (2, 2, 3, 6, 6)
    torch.testing.assert_close(out.rgb[0, 0], out.rgb[1, 1])
    torch.testing.assert_close(out.rgb[0, 1], out.rgb[1, 0])
    assert not torch.allclose(out.rgb[0, 0], out.rgb[0, 1])
    with pytest.raises(RenderError):
        render(f, cams, torch.zeros(3, 1))


def test_light_per_frame_of_a_clip():
    """A moving camera's light follows it: ``light_dir`` [B, T, 3] lights each frame on its own (SPEC 3.1)."""
    f = BlobField()
    cam = reference_camera(5, 5)
    cams = Cameras.cat([cam, cam])
    times = torch.tensor([[0.0, 0.5]])
    lights = torch.tensor(
        [[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]]
    )  # frame 0 from the front, frame 1 from behind
    out = render(f, cams, times, shading="lambertian", ambient=0.0, light_dir=lights)
    front = render(f, cam, shading="lambertian", ambient=0.0, light_dir=lights[0, 0])
    back = render(f, cam, shading="lambertian", ambient=0.0, light_dir=lights[0, 1])
    torch.testing.assert_close(out.rgb[0, 0], front.rgb[0, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.rgb[0, 1], back.rgb[0, 0], atol=1e-5, rtol=0)
    assert out.rgb[0, 0, :, 2, 2].min() > 0.3 and out.rgb[0, 1, :, 2, 2].max() < 0.05
    # the same as [B·T, 3]; a [B, 3] light is one per clip (both frames lit alike)
    flat = render(f, cams, times, shading="lambertian", ambient=0.0, light_dir=lights[0])
    torch.testing.assert_close(flat.rgb, out.rgb)
    with pytest.raises(RenderError):
        render(f, cams, times, shading="lambertian", light_dir=torch.zeros(3, 3))


@pytest.mark.parametrize("chunk", [None, 97])
def test_checkpoint_normals_same_render_and_gradients_less_memory(chunk):
    """``checkpoint_normals`` recomputes the normals in backward: the same images, normals and parameter
    gradients as the plain path with the same pieces, far fewer bytes kept for backward."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.engine.timing import kept_for_backward
    from animate124.render import renderer
    from animate124.scene import fields

    cfg = paper_grid_config(log2_table_size=10, desired_resolution=64)
    torch.manual_seed(0)
    dyn = fields.DynamicField(cfg, time_grid_size=4, backend="torch", **field_kwargs(blob_density=1.0))
    cams = Cameras.cat([orbit_cameras(2, height=8, width=8)[0]] * 3)
    times = torch.tensor([[0.0, 0.4, 1.0]])
    if chunk is None:  # the default segment must split this render into several pieces
        renderer_segment = renderer.CHECKPOINT_SEGMENT
        renderer.CHECKPOINT_SEGMENT = 101
    results = []
    try:
        for ck in (False, True):
            dyn.zero_grad(set_to_none=True)
            out, saved = kept_for_backward(
                lambda ck=ck: render(
                    dyn, cams, times, shading="lambertian", compute_normals=True, max_steps=64,
                    chunk=chunk if chunk is not None else (101 if not ck else None), checkpoint_normals=ck,
                )
            )  # fmt: skip
            (out.rgb.square().mean() + out.orientation.mean() + out.normal.mean()).backward()
            grads = [p.grad.clone() for p in dyn.parameters()]
            results.append((out.rgb.detach(), out.normal.detach(), grads, saved, out.num_samples))
    finally:
        if chunk is None:
            renderer.CHECKPOINT_SEGMENT = renderer_segment
    (rgb0, nrm0, g0, saved0, m), (rgb1, nrm1, g1, saved1, _) = results
    assert m > 300  # several pieces
    assert torch.equal(nrm0, nrm1)
    if chunk is not None:  # the same pieces everywhere: bit-identical
        assert torch.equal(rgb0, rgb1)
        for a, b in zip(g0, g1, strict=True):
            assert torch.equal(a, b)
    else:  # the plain path also split the colour/density call (into 101s): float32 summation order only
        assert torch.allclose(rgb0, rgb1, atol=1e-6)
        for a, b in zip(g0, g1, strict=True):
            assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
    assert any(g.abs().sum() > 0 for g in g1)
    assert saved1 * 3 < saved0, (saved1, saved0)


def test_frames_render_the_same_images_as_the_whole_clip():
    """``frames`` renders a subset of every clip's frames bit-identical to the whole render's: perturbed
    marching draws every ray's jitter first, then uses the subset's; per-frame lights, per-clip
    backgrounds, occupancy slots and the no-grad normals' pieces all follow the selected rays."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.scene import fields

    cfg = paper_grid_config(log2_table_size=10, desired_resolution=64)
    torch.manual_seed(0)
    dyn = fields.DynamicField(cfg, time_grid_size=4, backend="torch", **field_kwargs(blob_density=1.0))
    occ = OccupancyGrid(resolution=8, num_slots=4)
    occ.update(dyn.density, generator=torch.Generator().manual_seed(0))
    cam = orbit_cameras(3, height=8, width=8)
    cams = Cameras.cat([cam[0], cam[1], cam[2], cam[1], cam[2], cam[0]])  # 2 clips × 3 frames
    times = torch.tensor([[0.0, 0.4, 0.9], [0.1, 0.5, 1.0]])
    lights = torch.nn.functional.normalize(torch.randn(2, 3, 3), dim=-1)
    bgs = torch.rand(2, 3)

    def go(frames):
        with torch.no_grad():
            return render(
                dyn, cams, times, shading="lambertian", light_dir=lights, bg_color=bgs, occupancy=occ,
                perturb=True, max_steps=64, generator=torch.Generator().manual_seed(5),
                checkpoint_normals=True, frames=frames,
            )  # fmt: skip

    whole = go(None)
    for frames in ([0, 2], [2], [1, 0, 2]):
        part = go(frames)
        assert part.rgb.shape == (2, len(frames), 3, 8, 8)
        assert torch.equal(part.rgb, whole.rgb[:, frames]), frames
        assert torch.equal(part.depth, whole.depth[:, frames])
    # without perturb no numbers are drawn; the generator is left as it was
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    render(dyn, cams, times, occupancy=occ, max_steps=32, generator=g, frames=[1])
    assert torch.equal(g.get_state(), state)
    with pytest.raises(RenderError, match="out of range"):
        render(dyn, cams, times, frames=[3])


@pytest.mark.parametrize("shading", ["lambertian", "textureless", "normal"])
def test_live_normals_same_render_and_gradients_fewer_evaluations(shading):
    """``live_normals`` evaluates normals only before early termination: an opaque field (most samples
    behind its surface) gives the same images, normal image, orientation and parameter gradients with a
    fraction of the normals' density evaluations, with and without their checkpointing (here 57 % of the
    samples are behind the surface)."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.scene import fields

    cfg = paper_grid_config(log2_table_size=10, desired_resolution=64)
    torch.manual_seed(0)
    kw = {**field_kwargs(), "blob_radius": 0.4}  # sigma up to e^10: transmittance falls below 1e-4 inside
    dyn = fields.DynamicField(cfg, time_grid_size=4, backend="torch", **kw)
    cams = Cameras.cat([orbit_cameras(2, height=10, width=10)[0]] * 2)
    times = torch.tensor([[0.0, 0.7]])
    seen: list[int] = []
    plain_normals = dyn.normals

    def counting(x, t=None, eps=0.01, **kw):
        seen.append(x.shape[0])
        return plain_normals(x, t, eps=eps, **kw)

    dyn.normals = counting
    for ck in (False, True):
        results = []
        for live in (False, True):
            dyn.zero_grad(set_to_none=True)
            seen.clear()
            out = render(
                dyn, cams, times, shading=shading, light_dir=torch.tensor([0.0, 0.6, 0.8]), ambient=0.2,
                compute_normals=True, max_steps=96, checkpoint_normals=ck, live_normals=live,
                perturb=True, generator=torch.Generator().manual_seed(2),
            )  # fmt: skip
            (out.rgb.square().mean() + out.orientation.mean() + out.normal.mean()).backward()
            grads = [p.grad.clone() for p in dyn.parameters()]
            results.append((out, grads, sum(seen)))
        (a, ga, na), (b, gb, nb) = results
        assert na == a.num_samples * (2 if ck else 1)  # the checkpoint recomputes them in backward
        assert 0 < nb < 0.7 * na, (na, nb)  # most samples are behind the surface
        for name in ("rgb", "normal", "orientation", "weights", "depth", "opacity"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (ck, name)
        # the MLP weights' gradients sum over fewer rows (the dead samples' rows were zeros): float32 order only
        for x, y in zip(ga, gb, strict=True):
            assert float((x - y).abs().max()) <= 1e-3 * float(x.abs().max()), ck
        # the grid table's gradient is bit for bit the same: its gather sums in a fixed order (index_add_), and
        # the dead samples only added zeros
        assert torch.equal(ga[0], gb[0])
        assert any(g.abs().sum() > 0 for g in gb)


@pytest.mark.parametrize("plan_block", [16, 1024])
def test_march_chunk_plan_gives_the_same_samples(monkeypatch, plan_block: int) -> None:
    """Chunks planned by candidate count (one read of the per-block counts) march exactly the samples of
    one chunk: the same rays, positions and t, in the same order, for any chunk bound and block size."""
    import animate124.render.marcher as M
    from animate124.scene.occupancy import OccupancyGrid

    monkeypatch.setattr(M, "PLAN_BLOCK", plan_block)
    gen = torch.Generator().manual_seed(0)
    origins = torch.randn(2500, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 2.0])
    dirs = torch.nn.functional.normalize(
        torch.randn(2500, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -1.0]), dim=-1
    )
    occ = OccupancyGrid(resolution=8)
    occ.bitfield[0, ::3] = False
    offsets = torch.rand(2500, generator=gen)
    kw = dict(occupancy=occ, max_steps=64, perturb=True, offsets=offsets)
    ref = M.march_rays(origins, dirs, max_candidates=2**30, **kw)
    for bound in (1, 500, 7000, 40_000):
        got = M.march_rays(origins, dirs, max_candidates=bound, **kw)
        assert torch.equal(got.ray_indices, ref.ray_indices)
        assert torch.equal(got.t, ref.t) and torch.equal(got.positions, ref.positions)
    chunks = M._plan_chunks(torch.full((2500,), 10, dtype=torch.long), 7000)
    assert [c[0] for c in chunks][0] == 0 and chunks[-1][1] == 2500
    assert all(c[2] == 10 * (c[1] - c[0]) for c in chunks)
    assert all(c[2] <= 7000 or c[1] - c[0] <= plan_block for c in chunks)


def test_checkpoint_field_same_render_and_gradients_less_kept_for_backward():
    """``checkpoint_field=N``: a render of more than N samples keeps the field's activations of its first N
    samples and re-runs the others' in backward; the images and gradients are the same as without it, and the
    bytes saved for backward drop with N (the grid and MLP activations of the samples beyond it); at or below
    the threshold nothing changes."""
    from helpers_grid import field_kwargs, paper_grid_config

    from animate124.scene import fields

    cfg = paper_grid_config(log2_table_size=10, desired_resolution=64)
    torch.manual_seed(0)
    dyn = fields.DynamicField(cfg, time_grid_size=4, backend="torch", **field_kwargs(blob_density=1.0))
    cams = Cameras.cat([orbit_cameras(2, height=10, width=10)[0]] * 2)
    times = torch.tensor([[0.0, 0.7]])

    def run(threshold: int):
        dyn.zero_grad(set_to_none=True)
        kept = [0]

        def pack(t):
            kept[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = render(
                dyn, cams, times, shading="lambertian", light_dir=torch.tensor([0.0, 0.6, 0.8]), ambient=0.2,
                compute_normals=True, max_steps=96, checkpoint_normals=True, live_normals=True, chunk=500,
                checkpoint_field=threshold, perturb=True, generator=torch.Generator().manual_seed(2),
            )  # fmt: skip
            loss = out.rgb.square().mean() + out.orientation.mean()
        loss.backward()
        return out, [p.grad.clone() for p in dyn.parameters()], kept[0]

    a, ga, ka = run(0)
    n = a.num_samples
    assert n > 1000
    b, gb, kb = run(1)  # one sample's activations kept, the rest re-run in backward
    c, gc, kc = run(n)  # this render is not above it
    h, gh, kh = run(n // 2)  # half kept, half re-run
    for name in ("rgb", "normal", "orientation", "weights", "depth", "opacity"):
        for other in (b, c, h):
            assert torch.equal(getattr(a, name), getattr(other, name)), name
    assert kc == ka and kb < 0.6 * ka and kb < kh < ka, (ka, kb, kc, kh)
    # the same bits: the kept/recomputed split falls on the pieces of `chunk` (every field call sees the same
    # samples), and the grid's and the compositing's gathers sum their gradients in a fixed order (index_add_)
    for x, *others in zip(ga, gb, gc, gh, strict=True):
        for other in others:
            assert torch.equal(x, other)
    assert any(g.abs().sum() > 0 for g in gb)
