"""Shading formulas (SPEC 3.1 "Shading"); the light the systems draw is tested in test_stages_system."""

from __future__ import annotations

import pytest
import torch

from animate124.errors import ConfigError
from animate124.scene.shading import shade

ALBEDO = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]])
NORMAL = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
LIGHT = torch.tensor([0.0, 0.6, 0.8])


def test_albedo_mode_returns_albedo():
    assert torch.equal(shade(ALBEDO, None, LIGHT, 0.3, "albedo"), ALBEDO)


def test_lambertian_by_hand():
    # point 0: n·l = 0.8 -> 0.3 + 0.7·0.8 = 0.86; point 1: n·l = -0.8 -> clamp 0 -> 0.3
    out = shade(ALBEDO, NORMAL, LIGHT, 0.3, "lambertian")
    expected = torch.stack([ALBEDO[0] * 0.86, ALBEDO[1] * 0.3])
    torch.testing.assert_close(out, expected)


def test_textureless_and_per_point_ambient_and_light():
    out = shade(ALBEDO, NORMAL, LIGHT, torch.tensor([0.1, 0.5]), "textureless")
    expected = torch.tensor([[0.1 + 0.9 * 0.8] * 3, [0.5] * 3])
    torch.testing.assert_close(out, expected)
    lights = torch.stack([LIGHT, -LIGHT])  # [N,3]: second point now lit with n·l = 0.8
    out = shade(ALBEDO, NORMAL, lights, 0.0, "lambertian")
    torch.testing.assert_close(out, ALBEDO * 0.8)


def test_normal_mode():
    torch.testing.assert_close(
        shade(ALBEDO, NORMAL, LIGHT, 0.3, "normal"), torch.tensor([[0.5, 0.5, 1.0], [0.5, 0.5, 0.0]])
    )


def test_errors():
    with pytest.raises(ConfigError):
        shade(ALBEDO, NORMAL, LIGHT, 0.3, "phong")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shade(ALBEDO, None, LIGHT, 0.3, "lambertian")
