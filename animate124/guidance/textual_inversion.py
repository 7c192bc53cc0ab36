"""Textual inversion of the input photo into one SD 1.5 token (SPEC 2, 11.5).

A re-implementation of the diffusers ``textual_inversion.py`` example as upstream runs it: one new
token initialised from ``initializer``'s embedding; only that token's vector is trained, with
MSE(ε̂, ε), ``t ~ U{0..N−1}``, the SD noise schedule (``alphas_cumprod``), latents
``sample()·0.18215``, AdamW at a constant learning rate, prompts from the 27 "imagenet_templates_small".

Differences from upstream, all deliberate:

* We optimise a separate ``[D]`` parameter injected through a forward hook on the token-embedding
  module instead of putting the whole embedding matrix in AdamW and restoring the other rows after
  every step (SPEC 2 l.908-912). The result is the same (weight decay is decoupled and applies only to
  the trained vector in both); every other row of the matrix stays bit-identical, by construction.
* The augmented pixels are mapped to [−1, 1] (upstream forgot this, SPEC 11.5);
  ``upstream_aug_range_bug=True`` reproduces the bug.
* Augmentations are written in torch (no torchvision); sizes scale with ``resolution / 512``.
* All randomness (augmentations, prompts, posterior samples, t, ε) comes from one CPU
  ``torch.Generator`` seeded with ``seed``; its state is checkpointed, so a resumed run continues
  exactly where the interrupted one stopped.
* No validation images are generated (upstream rendered 4 every 100 steps).

After training the tokenizer contains the placeholder and its embedding row holds the learned vector.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from animate124.engine.trainer import StepOutput
from animate124.errors import ConfigError, InputError
from animate124.fileio import atomic_write_bytes
from animate124.guidance.base import native_half_precision
from animate124.guidance.common import alphas_cumprod_of, freeze, latent_scaling, module_dtype
from animate124.guidance.prompts import add_learned_token, input_embedding_matrix
from animate124.transfer import to_device

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTokenizer

    from animate124.models.loaders import SDComponents

log = logging.getLogger(__name__)

#: the 27 object templates of the diffusers textual-inversion example (``imagenet_templates_small``)
IMAGENET_TEMPLATES_SMALL: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)


@dataclass(kw_only=True)
class TIConfig:
    """Textual-inversion settings (SPEC 2). The values the config has fields for (``invert.*``,
    ``run.seed``) have no default here: the schema is the only place those live. The optimizer constants
    and templates, which have no config field, keep upstream's values as defaults."""

    placeholder: str
    """the new token string (must not exist in the tokenizer)"""
    initializer: str
    """word whose embedding initialises the token; must be exactly one token"""
    steps: int
    lr: float
    batch_size: int
    resolution: int
    augment: bool
    upstream_aug_range_bug: bool
    """reproduce upstream's missing [0,1] -> [-1,1] mapping on the augmented path (SPEC 11.5)"""
    seed: int
    checkpoint_every: int
    mixed_precision: bool
    """fp16 autocast + GradScaler, used only on CUDA"""
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    trace_steps: int = 0  # run.trace_steps: torch.profiler table of this many steps (after 10)
    trace_parts: str = "all"  # run.trace_parts
    tensorboard: bool = False  # run.tensorboard
    compile_unet: bool = False  # run.compile_priors names "invert": the UNet (forward + backward) compiled
    compile_mode: str = "default"  # run.compile_mode
    channels_last: bool = False  # run.channels_last names "invert": UNet and VAE encoder in channels-last
    fused_adamw: bool = False  # run.fused_adamw: one fused AdamW kernel (CUDA)
    native_fp16: bool = False  # run.native_fp16: the fp16 UNet outside autocast (guidance/base.py)
    templates: tuple[str, ...] = field(default=IMAGENET_TEMPLATES_SMALL)


# ---------------------------------------------------------------------------------------------- IO


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def save_learned_embeds(path: Path | str, embeds: dict[str, torch.Tensor]) -> None:
    """Write ``{placeholder: vector [D]}`` atomically: ``.safetensors``, or a torch pickle otherwise
    (the ``learned_embeds.bin`` layout of SPEC 2, fp32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().float().cpu().flatten().contiguous() for k, v in embeds.items()}
    if path.suffix == ".safetensors":
        atomic_write_bytes(path, _tensor_bytes(clean))
    else:
        buf = io.BytesIO()
        torch.save(clean, buf)
        atomic_write_bytes(path, buf.getvalue())


def load_learned_embeds(path: Path | str) -> dict[str, torch.Tensor]:
    """Read ``{placeholder: FloatTensor[D]}`` from ``.safetensors`` or upstream's ``learned_embeds.bin``
    (``torch.load(weights_only=True)``; SPEC 2 layout). Vectors are flattened to ``[D]`` fp32."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"learned embeddings file not found: {path}", "run the inversion stage first")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, numpy pickle, ...
        raise InputError(
            f"cannot read learned embeddings {path}: {e}", "the file must hold {token: tensor}"
        ) from e
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())
    ):
        raise InputError(
            f"{path} does not hold a {{token: tensor}} dict", "expected the learned_embeds layout"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1:
            raise InputError(f"{path}: token {k!r} has shape {tuple(v.shape)}, expected one vector [D]")
        out[k] = v.float()
    return out


# ---------------------------------------------------------------------------------------------- tokens


def prepare_placeholder(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, placeholder: str, initializer: str
) -> tuple[int, torch.Tensor]:
    """Add ``placeholder`` to the tokenizer/encoder, initialised from ``initializer``'s embedding.

    Returns ``(token id, initial vector [D] fp32)``. Raises InputError if the placeholder already exists
    or the initializer is not exactly one token (SPEC 2).
    """
    if placeholder in tokenizer.get_vocab():
        raise InputError(
            f"the placeholder token {placeholder!r} already exists in the tokenizer",
            "choose another placeholder string",
        )
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise InputError(
            f"the initializer word {initializer!r} encodes to {len(init_ids)} tokens; it must be exactly one",
            "pick a simpler single word, e.g. 'object', 'animal', 'toy'",
        )
    init_vec = input_embedding_matrix(text_encoder)[init_ids[0]].detach().float().cpu().clone()
    token_id = add_learned_token(tokenizer, text_encoder, placeholder, init_vec)
    return token_id, init_vec


# ---------------------------------------------------------------------------------------------- augmentation


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of ``[C, H, W]`` (torchvision ``Resize`` default)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` so that the short side is ``size`` (aspect kept)."""
    h, w = x.shape[-2:]
    if h <= w:
        return _resize(x, (size, max(1, round(w * size / h))))
    return _resize(x, (max(1, round(h * size / w)), size))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop ``[C, H, W]`` to ``size²`` (torchvision rounding)."""
    h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def rotate(x: torch.Tensor, degrees: float, fill: float = 1.0) -> torch.Tensor:
    """Rotate ``[C, H, W]`` about the centre (bilinear), filling uncovered pixels with ``fill``."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    h, w = x.shape[-2:]
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta[None], [1, x.shape[0], h, w], align_corners=False)
    out = F.grid_sample((x - fill)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0] + fill


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision ``RandomResizedCrop`` (10 tries, then a centre crop at the clamped ratio)."""
    h, w = x.shape[-2:]
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _u(gen, *scale)
        ar = math.exp(_u(gen, *log_r))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, (), generator=gen))
            j = int(torch.randint(0, w - cw + 1, (), generator=gen))
            return _resize(x[..., i : i + ch, j : j + cw], (size, size))
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    i, j = (h - ch) // 2, (w - cw) // 2
    return _resize(x[..., i : i + ch, j : j + cw], (size, size))


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[0], x[1], x[2]
    maxc, _ = x.max(0)
    minc, _ = x.min(0)
    v = maxc
    cr = maxc - minc
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, v])


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x[0], x[1], x[2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    r = torch.stack([v, q, p, p, t, v])
    g = torch.stack([t, v, v, q, p, p])
    b = torch.stack([p, p, t, v, v, q])
    idx = i[None]
    return torch.cat([r.gather(0, idx), g.gather(0, idx), b.gather(0, idx)])


def color_jitter(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter(b, c, s, h)`` with all four = ``amount``, in a random order."""
    order = torch.randperm(4, generator=gen).tolist()
    for k in order:
        if k == 0:
            x = (x * _u(gen, 1 - amount, 1 + amount)).clamp(0, 1)
        elif k == 1:
            f = _u(gen, 1 - amount, 1 + amount)
            x = (f * x + (1 - f) * _gray(x).mean()).clamp(0, 1)
        elif k == 2:
            f = _u(gen, 1 - amount, 1 + amount)
            x = (f * x + (1 - f) * _gray(x)).clamp(0, 1)
        else:
            hsv = _rgb_to_hsv(x)
            hsv = torch.stack([torch.remainder(hsv[0] + _u(gen, -amount, amount), 1.0), hsv[1], hsv[2]])
            x = _hsv_to_rgb(hsv)
    return x


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[C, H, W]`` with reflect padding (torchvision ``GaussianBlur``)."""
    half = (kernel - 1) * 0.5
    k = torch.linspace(-half, half, kernel, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    p = kernel // 2
    y = F.pad(x[None], (p, p, p, p), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    y = F.conv2d(y, k.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)
    return y[0]


def base_image(image: torch.Tensor, resolution: int, augment: bool) -> torch.Tensor:
    """Deterministic first step: resize the short side to 640·s and centre-crop 640·s (s = res/512);
    without augmentation, to ``resolution`` directly."""
    size = round(640 * resolution / 512) if augment else resolution
    return center_crop(resize_short_side(image.float(), size), size)


def augment_image(base: torch.Tensor, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """One augmented view ``[3, res, res]`` in [0, 1] of the base image (SPEC 2 augmentation list)."""
    s = resolution / 512
    x = base
    if _u(gen) < 0.75:
        x = rotate(x, _u(gen, -10.0, 10.0), fill=1.0)
        x = center_crop(x, round(426 * s))
        x = _resize(x, (resolution, resolution))
    x = random_resized_crop(x, resolution, (0.85, 1.15), gen)
    if _u(gen) < 0.75:
        x = color_jitter(x, 0.04, gen)
    if _u(gen) < 0.1:
        x = _gray(x).expand(3, -1, -1)
    if _u(gen) < 0.1:
        x = gaussian_blur(x, 5, _u(gen, 0.1, 2.0))
    if _u(gen) < 0.5:
        x = x.flip(-1)
    return x.clamp(0, 1)


def training_pixels(base: torch.Tensor, cfg: TIConfig, gen: torch.Generator) -> torch.Tensor:
    """One training image ``[3, res, res]`` as the VAE sees it: [−1, 1], or [0, 1] with the upstream bug."""
    if cfg.augment:
        x = augment_image(base, cfg.resolution, gen)
        return x if cfg.upstream_aug_range_bug else x * 2.0 - 1.0
    x = base.flip(-1) if _u(gen) < 0.5 else base  # diffusers' flip_p = 0.5
    return x * 2.0 - 1.0


# ---------------------------------------------------------------------------------------------- training


class TextualInversionSystem:
    """One textual-inversion step for the shared trainer (``engine/trainer.py``), SPEC 2.

    Per step: ``batch_size`` augmented crops of the photo, a random template per crop with the
    placeholder, ``z = s·E(x).sample()`` (no grad), ``t ~ U{0..999}``, ``ε ~ N(0, I)`` and the MSE between
    the UNet's prediction and ε (or v for v-prediction schedulers). Only the placeholder's vector is a
    parameter: a forward hook on the input embeddings puts it into every sequence that contains the
    token, so no other row of the embedding matrix can change (upstream restores them after every
    step, l.908-912; here they are never touched). Random draws come from one generator (``"ti"``).
    """

    def __init__(self, components: SDComponents, image: torch.Tensor, cfg: TIConfig, device: torch.device):
        from animate124.engine.timing import Timers

        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"the inversion image must be [3, H, W], got {tuple(image.shape)}")
        if cfg.steps < 0 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
            raise ConfigError("textual inversion needs steps >= 0, batch_size >= 1, checkpoint_every >= 1")
        self.c = components
        self.cfg = cfg
        self.device = device
        self.timers = Timers(False)
        freeze(components.text_encoder, components.vae, components.unet)
        self.token_id, init_vec = prepare_placeholder(
            components.tokenizer, components.text_encoder, cfg.placeholder, cfg.initializer
        )
        self.vec = torch.nn.Parameter(init_vec.to(device))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        sched = components.scheduler
        self.alphas = alphas_cumprod_of(sched)
        self.pred_type = getattr(getattr(sched, "config", None), "prediction_type", "epsilon")
        self.scale = latent_scaling(components.vae)
        self.base = base_image(image.to(device), cfg.resolution, cfg.augment)
        self.max_len = int(getattr(components.tokenizer, "model_max_length", 77))
        self.unet = self._fast_unet(components, cfg, device)
        self._handle = components.text_encoder.get_input_embeddings().register_forward_hook(self._inject)

    @staticmethod
    def _fast_unet(components: SDComponents, cfg: TIConfig, device: torch.device) -> Any:
        """The UNet as the step calls it: channels-last (with the VAE encoder) and compiled when asked (issue 27;
        the same network up to summation order, ``guidance/agreement.py``). Compiled only on CUDA: on the CPU,
        Inductor's C++ code for this UNet's backward to its text context gives a wrong gradient in torch 2.13
        (``tests/test_guidance_agreement.py``), so the step runs eager there, with a warning."""
        unet = components.unet
        if cfg.channels_last:
            from animate124.guidance.layout import channels_last_

            channels_last_(unet)
            channels_last_(components.vae.encoder)
        if cfg.compile_unet and device.type != "cuda":
            log.warning(
                "run.compile_priors=invert: the inversion's UNet is compiled on CUDA only; it runs eager here"
            )
        elif cfg.compile_unet:
            from animate124.guidance.compiled import CompiledCall

            return CompiledCall(unet, cfg.compile_mode)
        return unet

    def _inject(self, _mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        mask = (args[0] == self.token_id)[..., None]
        return torch.where(mask, self.vec.to(out.dtype), out)

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW β (0.9, 0.999), weight decay 1e-2, eps 1e-8, constant lr (SPEC 2); one fused kernel on CUDA with
        ``fused_adamw``."""
        c = self.cfg
        fused = {"fused": True} if c.fused_adamw and self.vec.device.type == "cuda" else {}
        return torch.optim.AdamW(
            [self.vec], lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **fused
        )

    # trainer hooks
    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def preview(self, step: int) -> None:
        pass

    def generators(self) -> dict[str, torch.Generator]:
        return {"ti": self.gen}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"vector": self.vec.detach()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.vec.copy_(tensors["vector"].to(self.vec.device, self.vec.dtype))

    def training_step(self, step: int, loss_scale: float | None) -> StepOutput:
        cfg, c, gen, dev = self.cfg, self.c, self.gen, self.device
        pix = torch.stack([training_pixels(self.base, cfg, gen) for _ in range(cfg.batch_size)])
        idx = torch.randint(0, len(cfg.templates), (cfg.batch_size,), generator=gen).tolist()
        prompts = [cfg.templates[i].format(cfg.placeholder) for i in idx]
        ids = c.tokenizer(
            prompts, padding="max_length", max_length=self.max_len, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            dist = c.vae.encode(pix.to(module_dtype(c.vae))).latent_dist
            e_post = to_device(torch.randn(dist.mean.shape, generator=gen), dev, dist.mean.dtype)
            latents = ((dist.mean + dist.std * e_post) * self.scale).float()
        noise = to_device(torch.randn(latents.shape, generator=gen), dev)
        t = torch.randint(0, len(self.alphas), (cfg.batch_size,), generator=gen)
        a = to_device(self.alphas[t], dev).view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = noise if self.pred_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        with torch.autocast(dev.type, enabled=False):  # the text encoder runs in fp32, as upstream
            ehs = c.text_encoder(to_device(ids.input_ids, dev))[0]
        udtype = module_dtype(c.unet)
        native = native_half_precision(udtype, dev) if cfg.native_fp16 else contextlib.nullcontext()
        with native:  # run.native_fp16: the fp16 UNet's norms on fp16, not on autocast's fp32 copies
            pred = self.unet(noisy.to(udtype), to_device(t, dev), encoder_hidden_states=ehs.to(udtype)).sample
        return StepOutput({"mse": F.mse_loss(pred.float(), target.float())})

    def finish(self) -> torch.Tensor:
        """Remove the hook, write the vector into the embedding matrix and return it ``[D]`` fp32 CPU."""
        self._handle.remove()
        with torch.no_grad():
            weight = input_embedding_matrix(self.c.text_encoder)
            weight[self.token_id] = self.vec.detach().to(weight.dtype)
        return self.vec.detach().float().cpu()


def train_textual_inversion(
    components: SDComponents,
    image: torch.Tensor,
    cfg: TIConfig,
    *,
    checkpoint_dir: Path,
    device: torch.device | str,
    progress: Callable[[int, int, Mapping[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log_path: Path | None = None,
    metrics: dict | None = None,
) -> torch.Tensor:
    """Learn one token for ``image`` ``[3, H, W]`` in [0, 1] (the original photo, background included).

    Runs :class:`TextualInversionSystem` on the shared trainer: resumes from ``checkpoint_dir``
    (``ckpt-NNNNNNN.{safetensors,json}``: the vector, AdamW moments, generator and GradScaler state),
    checkpoints every ``checkpoint_every`` steps, at the end, and when ``should_stop()`` returns True
    (then returns early). fp16 autocast + GradScaler on CUDA when ``mixed_precision`` (the UNet in fp16,
    the text encoder in fp32, as upstream's accelerate setup).

    Returns the learned vector ``[D]`` (fp32, CPU). Modifies ``components``' tokenizer and text encoder:
    the placeholder is added and its row holds the returned vector. ``metrics``, if given, receives the
    trainer's numbers (steps, it/s, peak GPU memory).
    """
    from animate124.engine.trainer import Trainer, TrainerSettings

    device = torch.device(device)
    system = TextualInversionSystem(components, image, cfg, device)
    settings = TrainerSettings(
        iters=cfg.steps,
        device=device,
        precision="fp16" if cfg.mixed_precision and device.type == "cuda" else "fp32",
        grad_clip=0.0,
        checkpoint_every=cfg.checkpoint_every,
        log_every=1,
        preview_every=0,
        config_hash=f"ti:{cfg.placeholder}",
        label="invert",
        trace_steps=cfg.trace_steps,
        trace_parts=cfg.trace_parts,
        tensorboard=cfg.tensorboard,
    )
    try:
        result = Trainer(settings).run(
            system,
            system.optimizer(),
            checkpoint_dir=Path(checkpoint_dir),
            log_path=log_path,
            progress=progress,
            should_stop=should_stop,
        )
    finally:
        vec = system.finish()
    if metrics is not None:
        metrics.update(result.metrics)
    return vec
