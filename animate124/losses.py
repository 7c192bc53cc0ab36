"""Training losses as pure functions of tensors (SPEC §1 "Training-time consumption", §3.5, §3.6).

No config, no module state, no stage knowledge: each function returns the *unweighted* term; the
stage multiplies by its λ (``stages/system.py``). Half-precision inputs are computed in
float32 (the entropy clamp ``1 − 1e−5`` is 1.0 in fp16).

Upstream references are to ``HeliosZhao/Animate124`` (commit d546941): ``nerf/utils.py`` (static
trainer), ``dnerf/utils.py`` (dynamic trainer), ``dnerf/renderer.py`` / ``nerf/renderer.py``
(per-sample orientation term). Pearson follows ``torchmetrics.functional.pearson_corrcoef``, the
blur ``torchvision.transforms.functional.gaussian_blur`` (neither is a dependency).

Shapes: images ``[..., C, H, W]`` (the renderer gives ``[B, T, C, H, W]``), masks ``[..., 1, H, W]``
broadcastable to the image, packed per-sample tensors ``[M]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "masked_rgb_loss",
    "mask_loss",
    "nonzero_normalize",
    "pearson",
    "depth_loss",
    "binary_entropy",
    "entropy_loss",
    "orientation_terms",
    "orientation_loss",
    "normal_tv_loss",
    "gaussian_kernel1d",
    "gaussian_blur",
    "normal_blur_loss",
]

ENTROPY_CLAMP = 1e-5
NONZERO_EPS = 1e-6


def _f32(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _mask_like(mask: Tensor, like: Tensor, name: str) -> Tensor:
    """Float mask broadcast to ``like``'s shape; a mask that would enlarge ``like`` is a shape error."""
    if torch.broadcast_shapes(mask.shape, like.shape) != like.shape:
        raise ValueError(
            f"{name}: mask of shape {tuple(mask.shape)} does not broadcast to {tuple(like.shape)}"
        )
    return mask.to(like.dtype)


def _mean(x: Tensor) -> Tensor:
    """Mean that is 0 (still attached to the graph) for an empty tensor instead of NaN."""
    return x.sum() / max(x.numel(), 1)


# --------------------------------------------------------------------------- reconstruction (SPEC 3.5)


def masked_rgb_loss(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """``mean((pred·M − gt·M)²)`` over **all** values of ``[..., 3, H, W]`` (SPEC 3.5, weight λ_rgb 5).

    ``M`` [..., 1, H, W] (bool or float; upstream's ``opacity`` is the float binary mask, SPEC 1) is
    broadcast over the channels. Background pixels contribute 0 but count in the denominator
    (3·H·W per image), exactly like ``F.mse_loss(pred_rgb*gt_opacity, gt_rgb*gt_opacity)``
    (``nerf/utils.py:785-786``, ``dnerf/utils.py:270-271``).
    """
    pred, gt = _f32(pred), _f32(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"masked_rgb_loss: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    m = _mask_like(mask, pred, "masked_rgb_loss")
    return ((pred * m - gt * m) ** 2).mean()


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """``mean((opacity − M)²)`` over ``[..., 1, H, W]`` (SPEC 3.5, weight λ_mask 0.5).

    ``M`` is the binary reference mask (``α > 0.5``) as float; upstream
    ``F.mse_loss(pred_mask, gt_mask.float().unsqueeze(0))`` (``nerf/utils.py:789``,
    ``dnerf/utils.py:274``).
    """
    opacity = _f32(opacity)
    return ((opacity - _mask_like(mask, opacity, "mask_loss")) ** 2).mean()


def nonzero_normalize(depth: Tensor, mask: Tensor | None = None, eps: float = NONZERO_EPS) -> Tensor:
    """Upstream's "nonzero normalisation" of a depth tensor (SPEC 1, 3.5), same shape as ``depth``.

    Order of operations (``nerf/utils.py:245-261``, ``nonzero_normalize_depth``):

    1. ``m = min{depth_i : depth_i > 0}`` — "nonzero" means **strictly positive**; the candidates are
       the pixels inside ``mask`` (bool, broadcastable) when given, else the whole tensor;
    2. ``d = depth − m`` on the **whole** tensor;
    3. ``d = d / (max(d) + 1e-6)`` — the max is taken **after** subtracting and over the **whole**
       tensor, masked-out pixels included (for the reference depth, ``gt = 1 − png/255`` is 1 on the
       background, so the divisor there is ``1 − m``);
    4. clamp to [0, 1] (pixels ≤ m, e.g. zeros, become 0).

    With no positive candidate the input is returned unchanged (upstream's ``return depth``).
    The reduction is over the whole tensor (all batch items / frames, as upstream's
    ``nerf/utils.py:734-736`` / ``dnerf/utils.py:212-214``); pass one image to normalise one image.
    Branch-free (no host sync); min and max stay differentiable, as upstream.
    """
    x = _f32(depth)
    pos = x > 0
    if mask is not None:
        pos = pos & mask.to(torch.bool)
    has = pos.any()
    m = torch.where(pos, x, torch.full_like(x, float("inf"))).amin()
    m = torch.where(has, m, torch.zeros_like(m))  # keeps the unused branch finite (no NaN gradients)
    d = x - m
    d = d / (d.amax().clamp_min(0.0) + eps)
    return torch.where(has, d.clamp(0.0, 1.0), x)


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation ``r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)²·Σ(y−ȳ)²)`` of two ``[K]`` vectors, in [−1, 1].

    Same value as ``torchmetrics.functional.pearson_corrcoef`` (used at ``nerf/utils.py:802``), which
    divides cov and both variances by K−1 (cancels) and clamps to [−1, 1]. Computed in float64
    (K ≈ 37k pixels: exact centring, so a constant input has variance exactly 0); returned in the
    inputs' (≥ float32) dtype.

    Degenerate cases (torchmetrics gives NaN; recent versions already for variance < √eps): if either
    vector is constant (zero variance), K < 2, or K = 0, ``r = 0`` (uncorrelated) with **zero
    gradient** — a constant depth carries no relative-depth information and must not produce NaN.
    """
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson: need two [K] vectors, got {tuple(x.shape)} and {tuple(y.shape)}")
    out_dtype = torch.promote_types(_f32(x).dtype, _f32(y).dtype)
    xd, yd = x.double(), y.double()
    n = max(x.numel(), 1)
    xc = xd - xd.sum() / n
    yc = yd - yd.sum() / n
    cov = (xc * yc).sum()
    vv = (xc * xc).sum() * (yc * yc).sum()
    ok = vv > 0
    denom = torch.sqrt(torch.where(ok, vv, torch.ones_like(vv)))  # sqrt'(0) would give 0·∞ = NaN
    r = torch.where(ok, cov / denom, torch.zeros_like(cov)).clamp(-1.0, 1.0)
    return r.to(out_dtype)


def depth_loss(pred_depth: Tensor, gt_depth_masked: Tensor, mask: Tensor, normalize: bool = True) -> Tensor:
    """Relative depth loss ``½·(1 − Pearson(p[M], g))`` (SPEC 3.5, weight λ_depth 0.01), in [0, 1].

    * ``pred_depth`` [..., 1, H, W]: the rendered depth ``Σ w·t`` of the reference view (one image:
      the normalisation reduces over the whole tensor, as upstream does over the whole render);
    * ``p = nonzero_normalize(pred_depth)`` without a mask when ``normalize`` (upstream's default
      ``normalize_depth=True``, ``nerf/utils.py:734-736``, ``dnerf/utils.py:212-214``);
    * ``mask`` bool [..., 1, H, W] (a float mask is read as ``mask > 0.5``), broadcastable;
      ``p[M]`` is taken in row-major order (``nerf/utils.py:801``, ``dnerf/utils.py:286``);
    * ``gt_depth_masked`` [K]: the reference depth ``1 − png/255``, ``nonzero_normalize``-d with the
      mask over the full image and then indexed with the same mask in the same order
      (``nerf/utils.py:514-523``, SPEC 1); K must equal the mask's pixel count.

    Pearson is invariant to a positive affine map of p, so the normalisation changes the loss only
    through the clamp (pixels with depth ≤ the smallest positive depth, e.g. empty pixels, tie at 0).
    Degenerate inputs (constant p or g, fewer than 2 pixels) give ½ with zero gradient (see ``pearson``).
    """
    p = nonzero_normalize(pred_depth) if normalize else _f32(pred_depth)
    mb = mask if mask.dtype == torch.bool else mask > 0.5
    if torch.broadcast_shapes(mb.shape, p.shape) != p.shape:
        raise ValueError(f"depth_loss: mask {tuple(mb.shape)} does not broadcast to {tuple(p.shape)}")
    sel = p[mb.expand_as(p)]
    g = _f32(gt_depth_masked).reshape(-1)
    if sel.numel() != g.numel():
        raise ValueError(
            f"depth_loss: the mask selects {sel.numel()} pixels but gt_depth_masked has {g.numel()} values"
        )
    return 0.5 * (1.0 - pearson(sel, g.to(sel.dtype)))


# --------------------------------------------------------------------------- regularisers (SPEC 3.6)


def binary_entropy(w: Tensor, clamp: float = ENTROPY_CLAMP) -> Tensor:
    """Element-wise ``h(w) = −w·log2 w − (1−w)·log2(1−w)`` with ``w`` clamped to [clamp, 1 − clamp].

    ``h(0.5) = 1``; ``h(0) = h(1) = h(1e−5) ≈ 1.805e−4``; zero gradient outside the clamp range.
    """
    w = _f32(w).clamp(clamp, 1.0 - clamp)
    return -w * torch.log2(w) - (1.0 - w) * torch.log2(1.0 - w)


def entropy_loss(weights: Tensor) -> Tensor:
    """``mean_i h(w_i)`` over the packed per-sample **rendering weights** ``w_i = α_i·T_i`` [M] (SPEC 3.6).

    Upstream names them ``alphas`` but passes ``outputs['weights']`` (SPEC 11.18), clamps to
    [1e−5, 1 − 1e−5] and averages over all samples of all frames, zeros after early ray termination
    included (``nerf/utils.py:893-896``, ``dnerf/utils.py:476-479``). Weight ``1e−3·min(1, 2·step/iters)``
    is the caller's. M = 0 gives 0.
    """
    return _mean(binary_entropy(weights))


def orientation_terms(weights: Tensor, normals: Tensor, dirs: Tensor) -> Tensor:
    """Per-sample orientation penalty ``sg(w_i)·max(0, n_i·d_i)²`` [M] (SPEC 3.6).

    ``weights`` [M], ``normals`` [M, 3] unit ``n = −∇σ/‖∇σ‖`` (outward), ``dirs`` [M, 3] the **unit
    ray direction from the camera into the scene** (upstream's ``safe_normalize(dirs)`` of
    ``march_rays_train``, ``dnerf/renderer.py:108-109``): a normal facing away from the camera
    (``n·d > 0``) is penalised; only the normals receive gradient (``dnerf/renderer.py:168``,
    ``nerf/renderer.py:1049``). The renderer (``animate124/render/renderer.py``) computes the same
    per-sample term itself and returns it as ``orientation``; this is the reference formula.
    """
    cos = (_f32(normals) * _f32(dirs)).sum(-1)
    return _f32(weights).detach() * cos.clamp_min(0.0) ** 2


def orientation_loss(orientation: Tensor) -> Tensor:
    """``mean_i orientation_i`` over all packed samples [M] of all frames (SPEC 3.6, weight λ_orient 1e−2).

    ``orientation`` = ``sg(w)·max(0, n·d)²`` per sample from the renderer (see ``orientation_terms``).
    Upstream takes the **mean** over samples on the CUDA path (``dnerf/renderer.py:169``,
    ``nerf/renderer.py:1050``; ``dnerf/utils.py:499``'s extra ``.mean()`` of the scalar is a no-op).
    M = 0 gives 0.
    """
    return _mean(_f32(orientation))


def normal_tv_loss(normal_image: Tensor) -> Tensor:
    """``mean((N[y+1,x] − N[y,x])²) + mean((N[y,x+1] − N[y,x])²)`` (SPEC 3.6, weight 0.5).

    ``normal_image`` [..., 3, H, W] (the renderer's ``[B, T, 3, H, W]``, values ``(n+1)/2``): each
    mean is over **all** differences of all channels and all frames (``B·T·3·(H−1)·W`` and
    ``B·T·3·H·(W−1)`` values); no difference across frames. Upstream ``nerf/utils.py:899-903``,
    ``dnerf/utils.py:483-487`` (layout ``[B·F, H, W, 3]``, same values). A side of length 1 adds 0.
    """
    n = _f32(normal_image)
    dy = n[..., 1:, :] - n[..., :-1, :]
    dx = n[..., :, 1:] - n[..., :, :-1]
    return _mean(dy.square()) + _mean(dx.square())


def gaussian_kernel1d(
    kernel_size: int = 9,
    sigma: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised 1-D Gaussian ``k_j ∝ exp(−x_j²/(2σ²))``, ``x_j = j − (k−1)/2`` [kernel_size].

    Default ``σ = 0.3·((k−1)/2 − 1) + 0.8`` (= ``0.15·k + 0.35``, torchvision's default): 1.7 for k = 9.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_kernel1d: kernel_size must be odd and positive, got {kernel_size}")
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1.0) + 0.8
    if sigma <= 0:
        raise ValueError(f"gaussian_kernel1d: sigma must be positive, got {sigma}")
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(image: Tensor, kernel_size: int = 9, sigma: float | None = None) -> Tensor:
    """Per-channel Gaussian blur of ``[..., C, H, W]`` with **reflect** padding of ``k//2`` pixels.

    Matches ``torchvision.transforms.functional.gaussian_blur(img, kernel_size)`` (tensor path:
    ``F.pad(..., mode="reflect")`` then a depthwise conv with the outer-product kernel ``k kᵀ``); here
    the same kernel is applied separably (rows, then columns), equal up to float rounding. Reflect
    mirrors without repeating the edge pixel (``c b | a b c``) and needs ``H, W > k//2``.
    """
    x = _f32(image)
    if x.ndim < 3:
        raise ValueError(f"gaussian_blur: need [..., C, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    r = kernel_size // 2
    if h <= r or w <= r:
        raise ValueError(
            f"gaussian_blur: reflect padding of {r} pixels needs an image larger than {r}×{r}, got {h}×{w}"
        )
    k = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, 1, h, w)
    flat = F.pad(flat, [r, r, r, r], mode="reflect")
    flat = F.conv2d(flat, k.view(1, 1, kernel_size, 1))  # along H
    flat = F.conv2d(flat, k.view(1, 1, 1, kernel_size))  # along W
    return flat.reshape(x.shape)


def normal_blur_loss(normal_image: Tensor, kernel_size: int = 9, sigma: float | None = None) -> Tensor:
    """``mean((N − GaussianBlur_{9×9, σ=1.7}(N))²)`` over ``[..., 3, H, W]`` (SPEC 3.6, weight 0.5).

    Upstream ``F.mse_loss(pred_vals, TF.gaussian_blur(pred_vals, kernel_size=9))`` on ``[B·F, 3, H, W]``
    (``nerf/utils.py:907-910``, ``dnerf/utils.py:492-495``): the blurred image is **not** detached,
    so the gradient flows through both sides. A constant image gives 0 (reflect padding).
    """
    n = _f32(normal_image)
    return F.mse_loss(n, gaussian_blur(n, kernel_size, sigma))
