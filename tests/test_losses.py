"""Training losses (animate124.losses) against hand computations on tiny tensors, plus properties."""

from __future__ import annotations

import math

import pytest
import torch

from animate124 import losses as L

# 9-tap Gaussian, σ = 1.7 (torchvision's default for kernel 9), normalised; written out by hand from
# exp(−x²/(2·1.7²)) / 4.2304136 for x = −4…4.
K9 = [0.014839, 0.049817, 0.118323, 0.198829, 0.236384, 0.198829, 0.118323, 0.049817, 0.014839]


def _h(w: float) -> float:
    return -w * math.log2(w) - (1 - w) * math.log2(1 - w)


# --------------------------------------------------------------------------- RGB and mask


def test_masked_rgb_loss_hand_value_background_counts_but_adds_zero() -> None:
    pred = torch.full((1, 3, 2, 2), 0.5)
    gt = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[[True, False], [False, True]]]])
    gt[..., 0, 1] = 100.0  # background: any error there must not count
    gt[..., 1, 0] = -7.0
    # 2 masked pixels × 3 channels × 0.25, divided by all 3·2·2 = 12 values
    assert L.masked_rgb_loss(pred, gt, mask).item() == pytest.approx(6 * 0.25 / 12)
    assert L.masked_rgb_loss(pred, gt, mask.float()).item() == pytest.approx(0.125)
    # [B, T, 3, H, W] with a [1, 1, 1, H, W] mask: same mean over every value
    assert L.masked_rgb_loss(pred[None], gt[None], mask[None]).item() == pytest.approx(0.125)


def test_masked_rgb_loss_gradient_only_inside_mask() -> None:
    pred = torch.rand(1, 3, 2, 2, requires_grad=True)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    L.masked_rgb_loss(pred, torch.rand(1, 3, 2, 2), mask).backward()
    g = pred.grad
    assert torch.all(g[..., 0, 1] == 0) and torch.all(g[..., 1, 0] == 0)
    assert torch.all(g[..., 0, 0] != 0) and torch.all(g[..., 1, 1] != 0)


def test_masked_rgb_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        L.masked_rgb_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError):  # mask larger than the image
        L.masked_rgb_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(2, 1, 2, 2))


def test_mask_loss_hand_value_and_perfect_opacity() -> None:
    opacity = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]], requires_grad=True)
    mask = torch.tensor([[[[True, True], [False, False]]]])
    assert L.mask_loss(opacity, mask).item() == pytest.approx((0 + 0.25 + 0 + 0.0625) / 4)
    perfect = mask.float().requires_grad_(True)
    loss = L.mask_loss(perfect, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(perfect.grad == 0)


# --------------------------------------------------------------------------- nonzero normalisation


def test_nonzero_normalize_subtracts_positive_min_then_divides_by_max_after() -> None:
    d = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    # min over d > 0 is 2 → [−2, 0, 1, 4]; max after subtracting is 4 (6/6 would be the "before" order)
    expected = torch.tensor([[0.0, 0.0], [1.0, 4.0]]) / (4.0 + 1e-6)
    assert torch.allclose(L.nonzero_normalize(d), expected, atol=0, rtol=1e-6)


def test_nonzero_normalize_nonzero_means_positive() -> None:
    d = torch.tensor([[-1.0, 0.0], [2.0, 4.0]])
    # "> 0": m = 2 → [−3, −2, 0, 2] / 2 → clamp → [0, 0, 0, 1]; "!= 0" would give m = −1 → [0, .2, .6, 1]
    out = L.nonzero_normalize(d)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-6)


def test_nonzero_normalize_mask_picks_min_but_max_is_over_whole_image() -> None:
    d = torch.tensor([[1.0, 9.0], [2.0, 3.0]])
    mask = torch.tensor([[True, False], [True, True]])
    # min positive inside the mask = 1; max of d − 1 over the WHOLE image = 8 (outside the mask)
    expected = torch.tensor([[0.0, 8.0], [1.0, 2.0]]) / (8.0 + 1e-6)
    assert torch.allclose(L.nonzero_normalize(d, mask), expected, atol=0, rtol=1e-6)
    mask2 = torch.tensor([[False, True], [True, True]])  # min inside = 2 → [−1, 7, 0, 1] / 7
    expected2 = torch.tensor([[0.0, 7.0], [0.0, 1.0]]) / (7.0 + 1e-6)
    assert torch.allclose(L.nonzero_normalize(d, mask2), expected2, atol=0, rtol=1e-6)


def test_nonzero_normalize_without_positive_values_returns_input_and_finite_grad() -> None:
    z = torch.zeros(1, 1, 3, 3, requires_grad=True)
    out = L.nonzero_normalize(z)
    assert torch.equal(out, torch.zeros(1, 1, 3, 3))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    d = torch.tensor([[0.0, 5.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])  # positive value only outside the mask
    assert torch.equal(L.nonzero_normalize(d, mask), d)


# --------------------------------------------------------------------------- Pearson and depth loss


def test_pearson_hand_values() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert L.pearson(x, torch.tensor([1.0, 3.0, 2.0, 4.0])).item() == pytest.approx(0.8)  # 4/√(5·5)
    assert L.pearson(x, 2 * x + 1).item() == pytest.approx(1.0)
    assert L.pearson(x, -x).item() == pytest.approx(-1.0)
    assert L.pearson(x, x).dtype == torch.float32


def test_depth_loss_hand_value_with_normalisation() -> None:
    pred = torch.tensor([[[[0.5, 1.0], [2.0, 4.0]]]])
    mask = torch.tensor([[[[True, False], [True, True]]]])
    gt = torch.tensor([0.0, 0.5, 1.0])
    # p = (pred − 0.5)/3.5 = [0, 1/7, 3/7, 1]; p[M] = [0, 3/7, 1] ∝ [0, 3, 7]; r = 7·3/√444
    expected = 0.5 * (1 - 21 / math.sqrt(444))
    assert L.depth_loss(pred, gt, mask).item() == pytest.approx(expected, rel=1e-5)


def test_depth_loss_normalisation_clamp_matters() -> None:
    pred = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    gt = torch.tensor([0.0, 1.0, 2.0, 4.0])
    assert L.depth_loss(pred, gt, mask, normalize=False).item() == pytest.approx(0.0, abs=1e-7)
    # normalised: m = 1 → [−1, 0, 1, 3] → clamp → [0, 0, 1, 3]/3; r = 7/√(6·8.75)
    expected = 0.5 * (1 - 7 / math.sqrt(52.5))
    assert L.depth_loss(pred, gt, mask).item() == pytest.approx(expected, rel=1e-5)


def test_depth_loss_invariant_to_affine_rescaling() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 1, 6, 6, generator=g) + 0.1
    mask = torch.rand(1, 1, 6, 6, generator=g) > 0.3
    gt = torch.rand(int(mask.sum()), generator=g)
    base = L.depth_loss(pred, gt, mask).item()
    assert 0.05 < base < 0.95
    for a, b in [(3.0, 0.0), (0.01, 0.0), (2.0, 5.0)]:
        assert L.depth_loss(a * pred + b, gt, mask).item() == pytest.approx(base, abs=1e-5)
        assert L.depth_loss(a * pred + b, gt, mask, normalize=False).item() == pytest.approx(
            L.depth_loss(pred, gt, mask, normalize=False).item(), abs=1e-6
        )
    # and to a positive affine map of the target
    assert L.depth_loss(pred, 4 * gt - 1, mask).item() == pytest.approx(base, abs=1e-5)


def test_depth_loss_gradient_only_at_mask_pixels_without_normalisation() -> None:
    pred = (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.1).requires_grad_(True)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1:3, :] = True
    L.depth_loss(pred, torch.rand(8), mask, normalize=False).backward()
    assert torch.all(pred.grad[~mask] == 0)
    assert torch.count_nonzero(pred.grad[mask]) > 0


@pytest.mark.parametrize("case", ["constant_pred", "empty_scene", "constant_gt", "one_pixel", "no_pixel"])
def test_depth_loss_degenerate_is_half_with_zero_gradient(case: str) -> None:
    pred = torch.full((1, 1, 3, 3), 2.0)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    gt = torch.linspace(0, 1, 9)
    if case == "empty_scene":
        pred = torch.zeros(1, 1, 3, 3)
    elif case == "constant_gt":
        pred = torch.rand(1, 1, 3, 3) + 0.1
        gt = torch.full((9,), 0.3)
    elif case == "one_pixel":
        pred = torch.rand(1, 1, 3, 3) + 0.1
        mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
        mask[..., 1, 1] = True
        gt = torch.tensor([0.7])
    elif case == "no_pixel":
        mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
        gt = torch.zeros(0)
    pred.requires_grad_(True)
    loss = L.depth_loss(pred, gt, mask)
    loss.backward()
    assert loss.item() == 0.5
    assert torch.all(pred.grad == 0)


def test_depth_loss_rejects_count_mismatch() -> None:
    with pytest.raises(ValueError, match="selects 4 pixels"):
        L.depth_loss(torch.rand(1, 1, 2, 2), torch.rand(3), torch.ones(1, 1, 2, 2, dtype=torch.bool))


# --------------------------------------------------------------------------- entropy and orientation


def test_entropy_hand_values_and_extremes() -> None:
    assert L.entropy_loss(torch.tensor([0.5])).item() == pytest.approx(1.0)
    assert L.entropy_loss(torch.tensor([0.25])).item() == pytest.approx(0.5 + 0.75 * math.log2(4 / 3))
    ends = L.entropy_loss(torch.tensor([0.0, 1.0])).item()
    assert ends == pytest.approx(_h(1e-5), rel=1e-3) and ends < 2e-4  # float32 log2(1 − 1e−5)
    w = torch.linspace(0, 1, 101)
    assert L.binary_entropy(w).max().item() == pytest.approx(1.0) and L.binary_entropy(w).argmax() == 50
    assert L.entropy_loss(torch.zeros(0)).item() == 0.0
    assert L.entropy_loss(torch.tensor([0.0, 1.0], dtype=torch.float16)).isfinite()


def test_entropy_gradient_is_log2_odds_over_m_and_zero_where_clamped() -> None:
    w = torch.tensor([0.25, 0.5, 0.0, 1.0], requires_grad=True)
    L.entropy_loss(w).backward()
    # dh/dw = log2((1 − w)/w); mean over M = 4
    assert w.grad[0].item() == pytest.approx(math.log2(3) / 4, rel=1e-5)
    assert w.grad[1].item() == pytest.approx(0.0, abs=1e-6)
    assert w.grad[2].item() == 0.0 and w.grad[3].item() == 0.0


def test_orientation_loss_is_mean_over_samples() -> None:
    assert L.orientation_loss(torch.tensor([0.0, 0.5, 1.0, 0.5])).item() == pytest.approx(0.5)
    assert L.orientation_loss(torch.zeros(0)).item() == 0.0


def test_orientation_terms_sign_and_detached_weights() -> None:
    w = torch.tensor([0.8, 0.8, 0.5], requires_grad=True)
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)  # rays travel along +z, away from the camera
    n = torch.tensor(
        [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [math.sqrt(3) / 2, 0.0, 0.5]], requires_grad=True
    )  # back-facing, facing the camera, 60° from the ray
    terms = L.orientation_terms(w, n, d)
    assert torch.allclose(terms, torch.tensor([0.8, 0.0, 0.5 * 0.25]))
    gw, gn = torch.autograd.grad(L.orientation_loss(terms), [w, n], allow_unused=True)
    assert gw is None  # sg(w): the weights get no gradient
    assert torch.count_nonzero(gn[0]) > 0 and torch.all(gn[1] == 0)


# --------------------------------------------------------------------------- normal TV and blur


def test_normal_tv_hand_value() -> None:
    img = torch.zeros(1, 1, 3, 2, 2)
    img[0, 0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    # Δy = [2, 2] on one channel of 3 → 8/6; Δx = [1, 1] → 2/6
    assert L.normal_tv_loss(img).item() == pytest.approx(8 / 6 + 2 / 6)
    two = torch.cat([img, torch.full_like(img, 0.3)], dim=1)  # second frame constant: mean halves
    assert L.normal_tv_loss(two).item() == pytest.approx((8 / 6 + 2 / 6) / 2)
    frames = torch.cat([torch.zeros(1, 1, 3, 4, 4), torch.ones(1, 1, 3, 4, 4)], dim=1)
    assert L.normal_tv_loss(frames).item() == 0.0  # no difference across frames
    assert L.normal_tv_loss(torch.rand(1, 1, 3, 1, 4)).isfinite()


def test_gaussian_kernel_default_sigma_is_1_7() -> None:
    k = L.gaussian_kernel1d(9)
    assert torch.allclose(k, torch.tensor(K9), atol=1e-6)
    assert torch.allclose(L.gaussian_kernel1d(9, 1.7), k)


def test_blur_single_bright_pixel_gives_kernel_weights() -> None:
    img = torch.zeros(1, 1, 3, 17, 17)
    img[0, 0, 1, 8, 8] = 1.0
    out = L.gaussian_blur(img)
    expected = torch.zeros(17, 17)
    expected[4:13, 4:13] = torch.outer(torch.tensor(K9), torch.tensor(K9))
    assert torch.allclose(out[0, 0, 1], expected, atol=1e-6)
    assert torch.all(out[0, 0, 0] == 0) and torch.all(out[0, 0, 2] == 0)  # channels stay separate
    assert out[0, 0, 1].sum().item() == pytest.approx(1.0, abs=1e-5)


def _reflect(i: int, n: int) -> int:
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def test_blur_matches_hand_built_reflect_convolution() -> None:
    """Hand-built separable sum with reflect indices (c b | a b c … ).

    Checked once (not a dependency) against torchvision 0.28.0's ``_functional_tensor.gaussian_blur``
    with its default σ = 0.15·9 + 0.35, torch 2.13 CPU, on random images [2,3,12,10], [16,3,128,128]
    and [1,3,5,5]: max |difference| 5.4e-7 in float32 and 5.6e-16 in float64 (normal_blur_loss within
    7.5e-9), so the separable blur equals torchvision's 2-D outer-product kernel up to rounding.
    """
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 6, 7, generator=g, dtype=torch.float64)
    out = L.gaussian_blur(img)
    x = img[0].tolist()
    for i in range(6):
        for j in range(7):
            acc = sum(
                K9[u] * K9[v] * x[_reflect(i + u - 4, 6)][_reflect(j + v - 4, 7)]
                for u in range(9)
                for v in range(9)
            )
            assert out[0, i, j].item() == pytest.approx(acc, rel=1e-5)  # K9 is rounded to 1e-6


def test_blur_loss_constant_is_zero_and_hand_mse() -> None:
    const = torch.full((1, 2, 3, 8, 8), 0.7)
    assert torch.allclose(L.gaussian_blur(const), const)  # zero padding would darken the border
    assert L.normal_blur_loss(const).item() == pytest.approx(0.0, abs=1e-12)
    img = torch.rand(1, 2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    blurred = L.gaussian_blur(img)
    assert L.normal_blur_loss(img).item() == pytest.approx(((img - blurred) ** 2).mean().item())


def test_blur_loss_gradient_flows_through_the_blurred_side() -> None:
    img = torch.rand(1, 1, 3, 8, 8, generator=torch.Generator().manual_seed(5), requires_grad=True)
    (g_full,) = torch.autograd.grad(L.normal_blur_loss(img), img)
    detached = ((img - L.gaussian_blur(img).detach()) ** 2).mean()
    (g_det,) = torch.autograd.grad(detached, img)
    assert not torch.allclose(g_full, g_det)


def test_blur_rejects_images_smaller_than_the_padding() -> None:
    with pytest.raises(ValueError, match="reflect padding"):
        L.normal_blur_loss(torch.rand(1, 1, 3, 4, 16))


# --------------------------------------------------------------------------- total
