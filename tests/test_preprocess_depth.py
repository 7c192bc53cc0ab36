"""animate124.preprocess.depth: network preprocessing rules, disparity estimation, normalisations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from animate124.preprocess.depth import (
    depth_input_size,
    depth_to_uint8,
    estimate_depth,
    nonzero_normalize_depth,
    normalize_depth_in_mask,
    preprocess_for_depth,
)


class _Echo(torch.nn.Module):
    """Fake depth net: returns the first input channel (optionally upsampled), records its input."""

    def __init__(self, up: int = 1) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.up = up
        self.seen: torch.Tensor | None = None

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        self.seen = pixel_values
        d = pixel_values[:, 0] * self.w
        if self.up > 1:
            d = d.repeat_interleave(self.up, -1).repeat_interleave(self.up, -2)
        return SimpleNamespace(predicted_depth=d)


def _dm(model, kind="dpt", image_size=64, multiple_of=32, keep_aspect=False, mean=(0.5,) * 3, std=(0.5,) * 3):
    return SimpleNamespace(
        model=model, kind=kind, image_size=image_size, mean=mean, std=std, multiple_of=multiple_of,
        keep_aspect=keep_aspect,
    )  # fmt: skip


@pytest.mark.parametrize(
    "hw, size, mult, keep, expect",
    [
        ((1024, 1024), 512, 32, False, (512, 512)),  # Intel/dpt-beit-large-512 processor
        ((788, 797), 512, 32, True, (512, 512)),  # MiDaS "minimal" on space-shuttle: scale 512/788
        ((480, 640), 518, 14, True, (518, 686)),  # Depth-Anything: 640 * 518/480 = 690.7 -> 49*14
        ((100, 60), 28, 14, True, (42, 28)),  # scale 28/60 is closer to 1: 46.7 -> 3*14
        ((300, 200), 512, 32, False, (512, 512)),
    ],
)
def test_depth_input_size_rule(hw, size, mult, keep, expect):
    assert depth_input_size(*hw, size, mult, keep) == expect


def test_estimate_depth_identity_path_exact():
    """No resize needed: output = clamp((r - 0.5) / 0.5, min=0) exactly, at the input size."""
    rgb = torch.rand(3, 64, 64)
    net = _Echo()
    d = estimate_depth(_dm(net), rgb)
    assert d.shape == (64, 64)
    assert torch.allclose(d, ((rgb[0] - 0.5) / 0.5).clamp(min=0), atol=1e-6)
    assert torch.allclose(net.seen[0], (rgb - 0.5) / 0.5, atol=1e-6)


def test_estimate_depth_resizes_in_and_out_and_uses_model_stats():
    rgb = torch.rand(3, 100, 60)
    net = _Echo(up=2)  # like the tiny DPT head: prediction at 2x the network input
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    dm = _dm(net, kind="depth_anything", image_size=28, multiple_of=14, keep_aspect=True, mean=mean, std=std)
    d = estimate_depth(dm, rgb)
    assert net.seen.shape == (1, 3, 42, 28)
    assert d.shape == (100, 60) and (d >= 0).all()
    x = preprocess_for_depth(dm, rgb)
    back = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert back.min() >= -1e-6 and back.max() <= 1 + 1e-6  # normalised with the model's own stats


def test_tiny_transformers_depth_models_forward():
    from transformers import (
        BeitConfig,
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTConfig,
        DPTForDepthEstimation,
    )

    torch.manual_seed(0)
    dpt = DPTForDepthEstimation(
        DPTConfig(
            backbone_config=BeitConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                use_relative_position_bias=True, reshape_hidden_states=False,
            ),
            neck_hidden_sizes=[16, 16, 32, 32], reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=16,
            hidden_size=32, is_hybrid=False, image_size=32, patch_size=8, add_projection=False,
            use_bias_in_fusion_residual=False, readout_type="project", head_in_index=-1,
        )
    ).eval()  # fmt: skip
    da = DepthAnythingForDepthEstimation(
        DepthAnythingConfig(
            backbone_config=Dinov2Config(
                image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                reshape_hidden_states=False,
            ),
            patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
            reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=16, head_hidden_size=8,
        )
    ).eval()  # fmt: skip
    rgb = torch.rand(3, 70, 90)
    d1 = estimate_depth(_dm(dpt, image_size=32, multiple_of=32), rgb)
    d2 = estimate_depth(
        _dm(da, "depth_anything", 28, 14, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), rgb
    )
    for d in (d1, d2):
        assert d.shape == (70, 90) and d.dtype == torch.float32
        assert torch.isfinite(d).all() and (d >= 0).all()


def test_normalize_depth_in_mask_by_hand():
    disp = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    mask = torch.tensor([[True, True], [False, True]])
    out = normalize_depth_in_mask(disp, mask)
    assert torch.equal(out, torch.tensor([[0.0, 0.25], [0.0, 1.0]]))


def test_normalize_depth_in_mask_random_and_degenerate():
    g = torch.Generator().manual_seed(0)
    disp = torch.rand(40, 50, generator=g) * 300 + 20
    mask = torch.rand(40, 50, generator=g) > 0.6
    out = normalize_depth_in_mask(disp, mask)
    assert (out[~mask] == 0).all()
    assert out[mask].min() == 0 and out[mask].max() == 1
    # order preserved inside the mask (larger disparity = closer = larger value)
    i, j = torch.nonzero(mask)[:2]
    assert (out[tuple(i)] > out[tuple(j)]) == (disp[tuple(i)] > disp[tuple(j)])
    assert (normalize_depth_in_mask(torch.full((4, 4), 3.0), torch.ones(4, 4, dtype=torch.bool)) == 0).all()
    assert (normalize_depth_in_mask(disp, torch.zeros(40, 50, dtype=torch.bool)) == 0).all()


def test_depth_to_uint8_truncates_like_upstream():
    d = torch.tensor([0.0, 0.5, 0.999, 1.0, 1 / 255 - 1e-6])
    assert depth_to_uint8(d).tolist() == [0, 127, 254, 255, 0]


def test_nonzero_normalize_depth_upstream_semantics():
    depth = torch.tensor([[0.0, 0.2, 0.6], [0.4, 1.0, 0.8]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # smallest nonzero inside the mask = 0.2; max over the WHOLE map = 1.0 (an unmasked pixel)
    out = nonzero_normalize_depth(depth, mask)
    assert torch.allclose(out, ((depth - 0.2) / 1.0).clamp(0, 1))
    assert out[0, 0] == 0  # negative -> clamped
    # without a mask: min nonzero over everything (0.2 again), max 1
    assert torch.allclose(nonzero_normalize_depth(depth), out)
    # no nonzero value inside the mask -> unchanged
    z = torch.tensor([[0.0, 0.5]])
    assert torch.equal(nonzero_normalize_depth(z, torch.tensor([[True, False]])), z)
