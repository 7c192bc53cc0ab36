"""Static/4D fields (SPEC 3.1): density formula, truncated exp, 4D-from-static identity, normals."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_grid import field_kwargs, paper_grid_config, small_grid_config

from animate124.scene.activations import trunc_exp
from animate124.scene.fields import DynamicField, FieldOutput, StaticField

SMALL = small_grid_config()


def _static(cfg=SMALL, backend="torch", **overrides):
    return StaticField(cfg, backend=backend, **field_kwargs(**overrides))


def _dynamic(cfg=SMALL, time_grid_size=4, backend="torch", **overrides):
    return DynamicField(cfg, time_grid_size=time_grid_size, backend=backend, **field_kwargs(**overrides))


def _randomize(field, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
    return field


def test_static_field_output_contract():
    f = _randomize(_static())
    x = torch.rand(100, 3) * 2 - 1
    out = f(x)
    assert isinstance(out, FieldOutput)
    assert out.sigma.shape == (100,) and out.sigma.dtype == torch.float32
    assert out.albedo.shape == (100, 3) and out.albedo.dtype == torch.float32
    assert torch.all(out.sigma > 0)
    assert torch.all((out.albedo >= 0) & (out.albedo <= 1))
    assert torch.equal(f.density(x), out.sigma)
    assert not f.dynamic and f.bound == 1.0
    # the MLP is 32->64->4 for the paper config
    paper = _static(paper_grid_config())
    shapes = [tuple(p.shape) for p in paper.sigma_net.parameters()]
    assert shapes == [(64, 32), (64,), (4, 64), (4,)]


def test_density_formula_and_blob():
    f = _randomize(_static(blob_density=10, blob_radius=0.2))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05], [0.7, 0.7, 0.7]])
    h = f.encoder(x)
    w0, b0, w1, b1 = [p.detach() for p in f.sigma_net.parameters()]
    logits = torch.relu(h @ w0.T + b0) @ w1.T + b1
    blob = 10 * torch.exp(-(x**2).sum(-1) / (2 * 0.2**2))
    out = f(x)
    torch.testing.assert_close(out.sigma, torch.exp(logits[:, 0] + blob), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.albedo, torch.sigmoid(logits[:, 1:]), rtol=1e-6, atol=1e-7)
    # the blob carries no gradient: d sigma / d x = trunc_exp'(h) · d h0 / d x through the encoder only
    # (the torch encoder is differentiable in x); a blob gradient would add trunc_exp'(h) · blob · (-x / r^2)
    xg = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(f.density(xg).sum(), xg)
    xh = x.clone().requires_grad_(True)
    h0 = (torch.relu(f.encoder(xh) @ w0.T + b0) @ w1.T + b1)[:, 0]
    dsigma_dh = torch.exp(torch.clamp(h0.detach() + blob, max=15.0))  # trunc_exp's backward
    (expected,) = torch.autograd.grad(h0, xh, dsigma_dh)
    torch.testing.assert_close(grad_x, expected, rtol=1e-4, atol=1e-4)
    blob_grad = (dsigma_dh * blob)[:, None] * (-x / 0.2**2)
    assert blob_grad[1].abs().min() > 1.0  # large enough for the check above to see it


def test_trunc_exp_forward_and_truncated_gradient():
    h = torch.tensor([1.0, 15.0, 20.0, -3.0], requires_grad=True)
    y = trunc_exp(h)
    torch.testing.assert_close(y, torch.exp(h.detach()))
    y.backward(torch.tensor([1.0, 1.0, 2.0, 1.0]))
    expected = torch.tensor([math.e, math.exp(15), 2 * math.exp(15), math.exp(-3)])
    torch.testing.assert_close(h.grad, expected, rtol=1e-6, atol=0)


def test_level_mask_zeroes_features_and_param_groups():
    f = _randomize(_static())
    x = torch.rand(20, 3) * 2 - 1
    f.set_level_mask(2)
    feats = f.features(x, None)
    assert torch.all(feats[:, 4:] == 0) and feats[:, :4].abs().sum() > 0
    f.set_level_mask(None)
    assert f.features(x, None)[:, 4:].abs().sum() > 0
    groups = f.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-2), pytest.approx(1e-3)]
    assert groups[0]["params"][0] is f.encoder.embeddings
    assert len(groups[1]["params"]) == 4
    n_all = sum(p.numel() for p in f.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_all


@pytest.mark.parametrize("backend", ["torch"])
def test_dynamic_from_static_renders_static_at_every_t(backend):
    s = _randomize(_static(backend=backend))
    s.set_level_mask(3)
    d = DynamicField.from_static(s, time_grid_size=8)
    assert d.dynamic and d.max_level == 3
    assert tuple(d.encoder.embeddings.shape) == (8, s.encoder.embeddings.shape[0], 2)
    x = torch.rand(200, 3) * 2 - 1
    ref = s(x)
    for t in (0.0, 1 / 7, 0.37, 0.5, 0.999, 1.0):
        out = d(x, torch.full((200, 1), t))
        exact_grid_time = abs(t * 7 - round(t * 7)) < 1e-9
        tol = 0 if exact_grid_time else 1e-6
        torch.testing.assert_close(out.sigma, ref.sigma, rtol=tol, atol=0)
        torch.testing.assert_close(out.albedo, ref.albedo, rtol=tol, atol=0)
    out = d(x, torch.rand(200, 1))  # per-point times
    torch.testing.assert_close(out.sigma, ref.sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(d.normals(x, torch.rand(200, 1)), s.normals(x), atol=1e-4, rtol=0)
    # independent copies: training the 4D field does not touch the static one
    assert d.encoder.embeddings.data_ptr() != s.encoder.embeddings.data_ptr()
    assert d.time_tv_loss("table").item() == 0.0
    assert d.time_tv_loss("points", n_points=64).item() == 0.0


def test_dynamic_t_none_is_t0_and_broadcast():
    d = _randomize(_dynamic(time_grid_size=4))
    x = torch.rand(30, 3) * 2 - 1
    a = d(x).sigma
    torch.testing.assert_close(a, d(x, torch.zeros(30, 1)).sigma, rtol=0, atol=0)
    torch.testing.assert_close(d(x, torch.tensor([[0.4]])).sigma, d(x, torch.full((30, 1), 0.4)).sigma)
    assert not torch.allclose(a, d(x, torch.ones(30, 1)).sigma)


def test_normals_of_analytic_density_point_outward():
    f = _static()
    calls = []

    def density(x, t=None):  # sigma decreasing with radius: -grad points outward
        calls.append(x.shape[0])
        return torch.exp(-(x**2).sum(-1) / 0.5)

    f.density = density  # type: ignore[method-assign]
    x = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.5, 0.0], [0.2, 0.3, -0.4], [0.99, 0.99, 0.0]])
    n = f.normals(x)
    assert calls == [6 * 4]  # the 6 offsets in one batched call
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    cos = (n * torch.nn.functional.normalize(x, dim=-1)).sum(-1)
    assert torch.all(cos[:3] > 0.999), cos
    # at x = 0.99 with eps 0.01 the +x sample is clamped to 1.0: one-sided, still outward
    assert cos[3] > 0.99
    # hand value of the central difference at (0.3, 0, 0): only the x component is non-zero
    assert n[0, 0].item() == pytest.approx(1.0, abs=1e-6) and abs(n[0, 1].item()) < 1e-6


def test_normals_zero_gradient_and_nan_give_zero():
    f = _static()
    f.density = lambda x, t=None: torch.ones(x.shape[0])  # type: ignore[method-assign]
    assert torch.all(f.normals(torch.rand(5, 3)) == 0)
    f.density = lambda x, t=None: torch.full((x.shape[0],), float("nan"))  # type: ignore[method-assign]
    assert torch.all(f.normals(torch.rand(5, 3)) == 0)


def test_normals_are_differentiable_wrt_field_params():
    f = _randomize(_static())
    n = f.normals(torch.rand(50, 3) * 1.6 - 0.8)
    n.sum().backward()
    assert f.encoder.embeddings.grad is not None and f.encoder.embeddings.grad.abs().sum() > 0
    assert all(p.grad is not None for p in f.sigma_net.parameters())
