"""Shared helpers of the guidance tests (not a test module: pytest collects ``test_*.py`` only)."""

from __future__ import annotations

import torch

#: tolerance of a gradient comparison, relative to the largest |element| of the expected gradient
GRAD_REL_TOL = 1e-4


def grad_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual − expected| / max|expected|`` computed in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).abs().max() / e.abs().max())


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = GRAD_REL_TOL) -> None:
    """Two gradients agree up to float32 summation order.

    Element-wise ``allclose`` with a small ``atol`` is fragile: a float32 gradient that went through a
    VAE encoder carries rounding errors of about ``1e-7 × (its largest elements) × √(terms)`` on EVERY
    element, so the elements near zero fail ``|a − e| ≤ atol + rtol·|e|`` depending on how the BLAS
    summed (a 2-core AVX2 machine put 3 of 49,152 video-gradient elements 2.25e-6 off, atol 1e-6).
    The error is compared with the gradient's scale instead: ``max|a − e| ≤ rel · max|e|`` (float64).
    A gradient off by 1 % (or with a flipped sign) is off by ≥ 1e-2·max|e| at its largest element,
    100× the tolerance, so real errors still fail (``test_assert_grad_close_catches_real_errors``).
    """
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    scale = float(expected.detach().double().abs().max())
    assert scale > 0, "the expected gradient is zero: the comparison would prove nothing"
    err = grad_error(actual, expected)
    assert err <= rel, f"gradient mismatch: max|a − e| = {err:.3g} · max|e| (allowed {rel:g})"
