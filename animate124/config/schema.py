"""The configuration schema: the only place a default lives.

Every section is a frozen dataclass; every field carries a one-line ``help`` (used by
``animate124 config show`` and the docs). The defaults are the *paper* settings: SPEC.md section 12
(the effective values the upstream scripts run), with the upstream bugs of SPEC section 11 fixed.
Each fix has a switch so that the paper's exact behaviour can be reproduced (most are named
``upstream_*``; the others take the value ``upstream``). One bug is kept by default because it shaped the
published results and nobody here can measure its fix with real weights: the static stage's SDS strength
(``static.sds_grad_scale``, SPEC 11.1).

Presets (``presets.py``) are override dictionaries on top of these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Literal

from animate124.config.fields import ZERO123_C_CONCAT_HELP, ZERO123_CLIP_HELP, opt

# the output commands' sections live in output_sections.py (re-exported here: one schema)
from animate124.config.output_sections import EvaluateConfig as EvaluateConfig
from animate124.config.output_sections import ExportConfig as ExportConfig
from animate124.config.output_sections import RenderConfig as RenderConfig

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings."""

    seed: int = opt(3407, "Random seed (upstream uses 3407).", min=0, max=2**32 - 1)
    device: str = opt("auto", "Device: auto, cpu, cuda or cuda:N.", nohash=True)
    devices: str = opt(
        "",
        "Several devices of one machine for one training stage (comma-separated, e.g. cuda:0,cuda:1; "
        "--gpus N sets cuda:0..N-1): the field, renderer and optimizer on the first, the priors spread over "
        "all by docs/gpu.md's placement table; the same maths. Empty = run.device alone.",
        nohash=True,
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = opt(
        "auto", "Mixed precision for the NeRF and priors: auto = fp16 on CUDA, fp32 on CPU."
    )
    deterministic: Literal["auto", "on", "off"] = opt(
        "auto",
        "Sum gradients in a fixed order, so that two runs with the same seed on the same machine and thread count "
        "give identical tensors (and an interrupted run resumes to the same bytes): PyTorch's deterministic "
        "algorithms, and on a GPU the torch grid encoder instead of the Triton one (slower). auto = on on the "
        "CPU (where it costs little), off on a GPU.",
        nohash=True,
    )
    checkpoint_every: int = opt(
        500, "Save a resumable checkpoint every N steps of a training stage.", min=1, nohash=True
    )
    log_every: int = opt(10, "Write scalars to the project's JSONL log every N steps.", min=1, nohash=True)
    grad_stats_every: int = opt(
        100,
        "Every N steps also log the gradient balance: grad/<group> in the stage's JSONL log, the norm of the "
        "gradient each loss group alone (reference, each prior, regularizers, time_tv) puts on the field, and "
        "grad/total; report.html plots it. Costs one more backward pass per group on those steps only; the "
        "training is the same bit for bit (0 = off).",
        min=0,
        nohash=True,
    )
    profile: bool = opt(
        False,
        "Time each part of a training step (render, priors, optimizer) with device syncs; a bit slower.",
        nohash=True,
    )
    trace_steps: int = opt(
        0,
        "Record this many steps of each training stage with torch.profiler, after 10 warm-up steps; writes "
        "logs/<stage>.profile.txt (operators and kernels by device time, GPU busy fraction, memory at the peak).",
        min=0,
        nohash=True,
    )
    trace_parts: Literal["all", "ops", "memory"] = opt(
        "all",
        "What run.trace_steps records: all, ops (the profiler table only) or memory (the allocation sites only).",
        nohash=True,
    )
    preview_every: int = opt(
        250,
        "Write a preview (PNG strip; mp4 in the 4D stages) every N steps (0 = only at the end).",
        min=0,
        nohash=True,
    )
    vae_checkpoint: bool = opt(
        True,
        "Keep no VAE-encoder activations for backward in the priors: recompute them in backward, in chunks "
        "of 4 × 256² pixels (a 1024² image alone, block by block) (same gradients; saves about 0.6 GiB per "
        "256² frame and 9.7 GiB per 1024² frame; costs one more encoder pass; static.vae_keep_pixels excepted).",
        nohash=True,
    )
    vae_checkpoint_pixels: int = opt(
        4 * 256 * 256,
        "With vae_checkpoint: pixels the encoder recomputes at once in backward (default 4 frames at 256²; an "
        "image above it is recomputed alone, block by block). Lower = less memory, the same gradients.",
        min=1, nohash=True, max=2**31 - 1,
    )  # fmt: skip
    vae_attention: Literal["blocked", "sdpa"] = opt(
        "blocked",
        "Attention of the priors' VAE encoders over large images (the mid block at 512² and up: one head "
        "wider than flash attention allows): blocked = exact softmax attention in query blocks with fp32 "
        "scores (same function; BENCHMARKS.md §8.7), sdpa = "
        "PyTorch's kernel choice.",
        nohash=True,
    )
    vae_fused_norm: bool = opt(
        True,
        "Run the group norms (+ SiLU) of the priors' VAE encoders as one fused fp16 pass under fp16 autocast "
        "(statistics and SiLU in fp32, as autocast's fp32 norm computes; same function up to fp32 summation "
        "order; BENCHMARKS.md §8.8), for norms of at least 2^24 elements (smaller ones are faster plain). Needs "
        "Triton on a CUDA GPU; elsewhere the plain norms run.",
        nohash=True,
    )
    unet_fused_norm: bool = opt(
        True,
        "Run the group norms (+ SiLU) of the priors' fp16 UNets and ControlNet, and of the textual inversion's "
        "UNet, as one fused fp16 pass under fp16 autocast, as run.vae_fused_norm does for the VAE encoders "
        "(statistics and SiLU in fp32: the same function up to fp32 summation order). In the inversion the "
        "backward then keeps fp16 norm inputs instead of autocast's fp32 copies. Norms of at least 2^24 elements "
        "(the inversion's batch of 16, ControlNet at 1024², ModelScope's largest). Needs Triton on a CUDA GPU; "
        "elsewhere the plain norms run. H100 (BENCHMARKS.md §10): inversion 0.265 -> 0.259 s a step and peak "
        "18.1 -> 15.8 GiB, ControlNet 287 -> 278 ms a call, the others unchanged; gradients at cosine >= 0.99992.",
        nohash=True,
    )
    park_encoders: bool = opt(
        True,
        "Move the priors' text and image encoders to the CPU once the prompts and the reference are embedded "
        "(same embeddings; frees 0.8-1.4 GiB of GPU memory per stage).",
        nohash=True,
    )
    offload_priors: str = opt(
        "",
        "Priors whose UNet/ControlNet weights stay in pinned host memory and are copied in for each call "
        "(comma-separated from sd, zero123, video, controlnet; same outputs, no CUDA graph for them, one "
        "weight copy per call: ~70 ms per 1.7 GB on PCIe 4). low-vram: zero123.",
        nohash=True,
    )
    cuda_graphs: bool = opt(
        True,
        "Replay the priors' UNet/ControlNet calls from CUDA graphs recorded on first use (same outputs; "
        "removes per-kernel launch overhead; CUDA only).",
        nohash=True,
    )
    fused_normals: bool = opt(
        True,
        "Compute the finite-difference normals in one fused Triton stencil kernel per direction instead of six "
        "field evaluations (KernelOptions.fused_normals): the same function up to fp32 rounding. Triton kernels "
        "on a CUDA GPU only, for the tiled 2-feature grid and 2-layer MLP of the presets; elsewhere the six "
        "evaluations run. Measured 12-18 % off the NeRF side of a dynamic or refine step on an H100 "
        "(BENCHMARKS.md §15.8); the oracle check (benchmarks/oracle_stages.py) gives the recorded PSNRs with it "
        "(lego 28.45 dB, standup 30.34 dB on an H100). false: the six field evaluations of upstream's code.",
        nohash=True,
    )
    tensorboard: bool = opt(
        False,
        "Also write the training scalars (the same as logs/<stage>.jsonl) as TensorBoard event files under "
        "<project>/logs/tb/<stage> (`tensorboard --logdir <project>/logs/tb`). Needs the tensorboard package: "
        "pip install 'animate124[tensorboard]'.",
        nohash=True,
    )
    compile_priors: str = opt(
        "", "Priors whose UNet/ControlNet run through torch.compile (comma-separated from sd, zero123, video, "
        "controlnet, invert = the textual inversion's UNet, or all): the same network up to rounding; ModelScope "
        "-8 %, ControlNet -10 % a call on an H100 (BENCHMARKS.md §15.14), about 3 min a paper run, but compiling "
        "takes about as long on first use (cached under the model cache after), so off: for batches.",
        nohash=True,
    )  # fmt: skip
    compile_mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"] = opt(
        "default",
        "Inductor mode for run.compile_priors: default, max-autotune (also tries Triton matmul/convolution "
        "templates and replays from CUDA graphs; compiles for longer), max-autotune-no-cudagraphs, "
        "reduce-overhead.",
        nohash=True,
    )
    channels_last: str = opt(
        "",
        "Priors whose UNet/ControlNet and VAE encoder keep their convolutions in channels-last layout "
        "(comma-separated from sd, zero123, video, controlnet, invert = the textual inversion's UNet and VAE, or "
        "all): no NCHW/NHWC transposes around cuDNN's fp16 convolutions; the same network up to summation "
        "order. Pays mostly with run.compile_priors (eager group norms are slow on NHWC).",
        nohash=True,
    )
    fused_adamw: bool = opt(
        False,
        "Textual inversion's AdamW step as one fused kernel on CUDA (the same update up to rounding).",
        nohash=True,
    )
    native_fp16: bool = opt(
        True,
        "Run the priors' fp16 UNets and ControlNet, and the textual inversion's UNet, natively in fp16 outside "
        "autocast, as upstream calls them: their group/layer norms read and write fp16 (statistics in fp32) "
        "instead of autocast's fp32 copies. The same function up to fp16 rounding (gradient agreement rule, "
        "issue 27); fewer memory passes, and in the inversion fp16 instead of fp32 activations for backward. "
        "H100 (BENCHMARKS.md §10, variants in alternating order): inversion 0.278 -> 0.260 s a step and peak "
        "15.8 -> 14.5 GiB, ControlNet 288 -> 275 ms, ModelScope 168-177 -> 162-168 ms, Zero123 unchanged, "
        "SD 1-20 % slower (45.5 -> 46-55 ms); on by default since. No effect on the CPU (fp32 there).",
        nohash=True,
    )
    prior_precision: Literal["fp16", "fp8"] = opt(
        "fp16",
        "Precision of the priors' UNet/ControlNet matrix products: fp16, or fp8 (e4m3 with row-wise scales, "
        "linear and 1×1 layers; needs a CUDA GPU of compute capability >= 8.9; lower precision than the paper's: "
        "an opt-in with its own record, never in a preset).",
    )


@dataclass(frozen=True)
class ModelsConfig:
    """Which pretrained models to use and where they live."""

    tiny: bool = opt(False, "Use tiny random models (tests and smoke runs; built offline on first use).")
    cache_dir: str = opt(
        "", "Model cache directory (default: ANIMATE124_CACHE or the user cache dir).", nohash=True
    )
    offline: bool = opt(
        True,
        "Never touch the network when loading (downloads only via `animate124 models download`).",
        nohash=True,
    )
    video_model: Literal["modelscope", "zeroscope"] = opt(
        "modelscope", "Text-to-video prior: ModelScope 1.7B (paper) or Zeroscope v2 576w."
    )
    sd: str = opt("", "Override for the Stable Diffusion 1.5 role: a local directory or repo id[@revision].")
    zero123: str = opt("", "Override for the Zero123-XL role (any of the four published layouts).")
    video: str = opt("", "Override for the text-to-video role.")
    controlnet: str = opt("", "Override for the ControlNet v1.1 tile role.")
    depth: str = opt("", "Override for the depth role (DPT-BEiT-L-512 by default).")
    matting: str = opt("", "Override for the matting role (VitMatte).")
    segment: str = opt("", "Override for the segmentation role (CLIPSeg) used before matting.")
    clip: str = opt("", "Override for the CLIP role (metrics).")


@dataclass(frozen=True)
class PreprocessConfig:
    """SPEC section 1: background removal, square framing, depth."""

    framing: Literal["pad", "recenter"] = opt(
        "pad", "pad = upstream (pad to a square, no recentring); recenter = centre the object with a margin."
    )
    size: int = opt(
        0, "Output side in pixels (0 = keep the input's long side, as upstream).", min=0, max=8192
    )
    border_ratio: float = opt(0.2, "Margin around the object when framing = recenter.", min=0.0, max=0.9)
    segment_query: str = opt(
        "the main object", "Text query for the coarse foreground segmenter (images without alpha)."
    )
    min_foreground_fraction: float = opt(
        0.001, "Fail when less than this fraction of pixels is foreground.", min=0.0, max=1.0
    )
    min_side: int = opt(64, "Reject images whose short side is below this many pixels.", min=1, max=8192)


@dataclass(frozen=True)
class InvertConfig:
    """SPEC section 2: textual inversion of one SD 1.5 token on the original photo."""

    placeholder: str = opt("<a124>", "The new token's string.")
    initializer: str = opt(
        "object", "A word that is a single token; its embedding initialises the new token."
    )
    steps: int = opt(3000, "Training steps (upstream 3000).", min=1)
    lr: float = opt(1e-4, "AdamW learning rate, constant (upstream 1e-4).", min=0.0)
    batch_size: int = opt(16, "Images per step (upstream 16).", min=1, max=1024)
    resolution: int = opt(512, "Training resolution (SD 1.5: 512).", min=8, max=2048)
    augment: bool = opt(
        True, "Upstream's augmentation chain (rotation, crops, jitter, grayscale, blur, flip)."
    )
    upstream_aug_range_bug: bool = opt(
        False, "Reproduce the upstream bug: augmented pixels stay in [0,1] instead of [-1,1] (SPEC 11.5)."
    )
    checkpoint_every: int = opt(500, "Checkpoint every N steps (resumable).", min=1)


@dataclass(frozen=True)
class FieldConfig:
    """SPEC 3.1: the grid encoding and MLP shared by the static and 4D fields."""

    grid_type: Literal["tiled", "hash"] = opt(
        "tiled", "tiled = upstream modulo-wrapped grid; hash = instant-ngp hash."
    )
    num_levels: int = opt(16, "Grid levels.", min=2, max=32)
    level_dim: int = opt(2, "Features per level (a power of two).", min=1, power_of_two=True, max=8)
    base_resolution: int = opt(16, "Coarsest grid resolution.", min=2, max=2**16)
    desired_resolution: int = opt(2048, "Finest grid resolution.", min=2, max=2**16)
    log2_table_size: int = opt(16, "log2 of the per-level table size (upstream tiled: 16).", min=4, max=24)
    hidden_dim: int = opt(64, "MLP hidden width.", min=1, max=4096)
    num_layers: int = opt(2, "MLP layers.", min=1, max=16)
    blob_density: float = opt(10.0, "Gaussian density blob amplitude added to the density logit.")
    blob_radius: float = opt(0.2, "Gaussian density blob radius.", min=1e-6)
    time_grid_size: int = opt(64, "Number of time grids in the 4D field.", min=1, max=1024)
    backend: Literal["auto", "torch", "triton", "tcnn"] = opt(
        "auto", "Grid encoder implementation: auto = Triton on CUDA, torch otherwise.", nohash=True
    )


@dataclass(frozen=True)
class RaymarchConfig:
    """SPEC 3.2: occupancy-grid ray marching and compositing (training and output renders)."""

    max_steps: int = opt(1024, "Samples per ray at most (dt = 2*sqrt(3)/max_steps).", min=8, max=2**16)
    min_near: float = opt(0.2, "Rays start at least this far from the camera.", min=0.0)
    transmittance_thresh: float = opt(
        1e-4, "Stop compositing a ray once its transmittance falls below this.", min=0.0, max=1.0
    )
    occupancy_resolution: int = opt(128, "Occupancy grid resolution per axis.", min=8, max=1024)
    time_slots: int = opt(16, "Occupancy time slots in the 4D stages.", min=1, max=1024)
    density_thresh: float = opt(10.0, "Occupancy density threshold (capped by the grid mean).", min=0.0)
    occupancy_decay: float = opt(
        0.95, "Decay of the occupancy grid's running max per update.", min=0.0, max=1.0
    )
    update_interval: int = opt(16, "Refresh the occupancy grid every N steps.", min=1)
    normal_eps: float = opt(0.01, "Finite-difference step of the density normals.", min=1e-6, max=1.0)
    metric_step: bool = opt(
        True, "Integrate alpha with the metric step dt*|d| (False = upstream's dt in ray-parameter units)."
    )
    upstream_times_bug: bool = opt(
        False,
        "Reproduce SPEC 11.2: every 4D occupancy slot refreshed at t=0.5 after loading the static model.",
    )
    chunk: int = opt(
        0,
        "Samples per field call in training renders (0 = all at once). Bounds one call's transient memory; "
        "with checkpoint_normals it is also the recompute segment.",
        min=0,
    )
    checkpoint_normals: bool = opt(
        True,
        "Keep no activations of the six density evaluations behind each sample's normal; recompute them in "
        "backward (same gradients; a 16 × 128² clip: 23.5 → 4.3 GiB on an H200; false keeps them).",
        nohash=True,
    )
    checkpoint_field: int = opt(
        0,
        "Training renders keep the activations of the field's own evaluations (grid + MLP) for at most this "
        "many samples; the samples beyond it are recomputed in backward, in pieces of `chunk` (or 2^18): the "
        "same gradients, memory bounded as the scene fills in, a second field forward for the excess only "
        "(0 = keep all; BENCHMARKS.md §8.8-8.9).",
        min=0,
        nohash=True,
    )
    live_normals: bool = opt(
        True,
        "Evaluate the finite-difference normals only for samples before early termination (transmittance >= "
        "transmittance_thresh); the others have weight exactly 0, so images, losses and gradients are the same "
        "(false evaluates every sample, as upstream).",
        nohash=True,
    )
    fused_march: bool = opt(
        True,
        "On CUDA, walk the rays' sample lattice in one Triton kernel instead of materialising every candidate "
        "sample (the same samples up to rounding at occupancy-cell faces): a 16-frame 128² training render "
        "73.7 -> 32.6 ms on an H100 (BENCHMARKS.md §15.10). false = the torch marcher (always on the CPU).",
        nohash=True,
    )


@dataclass(frozen=True)
class CameraConfig:
    """SPEC 3.3-3.4: training cameras, the reference view and moving-camera clips."""

    radius: float = opt(1.8, "Camera distance from the origin (training and reference).", min=0.1, max=100.0)
    fovy: float = opt(40.0, "Vertical field of view in degrees.", min=1.0, max=170.0)
    uniform_sphere_rate: float = opt(
        0.5, "Probability of drawing a training camera from the upper hemisphere.", min=0.0, max=1.0
    )
    polar_range: tuple[float, float] = opt(
        (45.0, 135.0), "Polar range (degrees) of the other cameras.", min=0.0, max=180.0
    )
    azimuth_range: tuple[float, float] = opt(
        (-180.0, 180.0), "Azimuth range (degrees).", min=-360.0, max=360.0
    )
    upstream_sphere_sampling: bool = opt(
        False,
        "Reproduce upstream's corner-biased hemisphere directions (SPEC 11.12); default: area-uniform.",
    )
    reference_noise: float = opt(
        1e-3, "Std of the one random offset added to every reference-view ray origin and direction.", min=0.0
    )
    max_dpolar: float = opt(
        45.0, "Moving-camera clips: largest polar change over the clip (degrees).", min=0.0, max=180.0
    )
    max_dazimuth: float = opt(
        90.0, "Moving-camera clips: largest azimuth change over the clip (degrees).", min=0.0, max=360.0
    )
    clamp_polar: bool = opt(
        True, "Keep moving cameras off the poles (False = upstream, which can cross them; SPEC 11.12)."
    )


@dataclass(frozen=True)
class ShadingConfig:
    """SPEC 3.1: shading of guidance renders (reference renders use ambient 1 and a white background)."""

    ambient_range: tuple[float, float] = opt(
        (0.1, 1.0), "Ambient ratio k ~ U[lo, hi] on guidance steps.", min=0.0, max=1.0
    )
    light_noise: float = opt(1.0, "Light direction = normalize(camera position + N(0, I) * this).", min=0.0)
    random_background: bool = opt(
        True, "One random background colour per guidance step (False: white, as the reference)."
    )


@dataclass(frozen=True)
class OptimConfig:
    """SPEC 3.9: Adam with two parameter groups, mixed precision."""

    betas: tuple[float, float] = opt((0.9, 0.99), "Adam betas.", min=0.0, max=0.9999)
    eps: float = opt(1e-15, "Adam epsilon.", min=0.0)
    encoder_lr_scale: float = opt(10.0, "Grid learning rate = stage lr * this.", min=0.0)
    mlp_lr_scale: float = opt(1.0, "MLP learning rate = stage lr * this.", min=0.0)


@dataclass(frozen=True)
class LossConfig:
    """SPEC 3.5-3.6: reconstruction losses and regularisers."""

    rgb: float = opt(5.0, "Masked RGB MSE weight on reference steps.", min=0.0)
    mask: float = opt(0.5, "Opacity MSE weight on reference steps.", min=0.0)
    depth: float = opt(0.01, "Pearson depth loss weight on reference steps.", min=0.0)
    entropy: float = opt(1e-3, "Entropy of rendering weights (ramped by min(1, 2*step/iters)).", min=0.0)
    orientation: float = opt(1e-2, "Orientation loss weight.", min=0.0)
    normal_tv: float = opt(0.5, "TV of the composited normal image.", min=0.0)
    normal_blur: float = opt(0.5, "MSE between the normal image and its 9x9 Gaussian blur.", min=0.0)
    time_tv: float = opt(0.1, "Time TV between neighbouring time grids (4D stages).", min=0.0)
    time_tv_points: int = opt(100_000, "Random points per step for the time TV (points form).", min=1)
    time_tv_mode: Literal["points", "table"] = opt(
        "points", "points = upstream's TV on random points (SPEC 3.6); table = TV on the grid tables."
    )


@dataclass(frozen=True)
class StaticConfig:
    """SPEC section 4: the static stage."""

    prompt: str = opt("", "Image description for SD guidance (the suffix below is appended).")
    prompt_suffix: str = opt(", 8k, good quality", "Appended to the static prompt (upstream script).")
    negative_prompt: str = opt("", "Negative prompt of SD guidance (upstream: empty).")
    iters: int = opt(5000, "Training steps.", min=1)
    render_size: int = opt(128, "SDS render resolution.", min=8, max=4096)
    ref_size: int = opt(192, "Reference-view render resolution.", min=8, max=4096)
    known_iters: int = opt(100, "Every step before this is a reference step.", min=0)
    ref_interval: int = opt(4, "Afterwards every N-th step is a reference step.", min=1)
    sd_weight: float = opt(1.0, "SD SDS weight.", min=0.0)
    sd_guidance_scale: float = opt(100.0, "SD CFG scale.", min=0.0)
    sd_t_range: tuple[float, float] = opt(
        (0.2, 0.6), "SD timestep range (fractions of 1000).", min=0.0, max=1.0
    )
    view_dependent_text: bool = opt(True, "Interpolate front/side/back view prompts by azimuth (SPEC 3.7-7).")
    zero123_weight: float = opt(
        40.0, "Zero123 SDS weight at 180 degrees from the reference (angle-scaled).", min=0.0
    )
    zero123_guidance_scale: float = opt(5.0, "Zero123 CFG scale (standard form).", min=0.0)
    zero123_t_range: tuple[float, float] = opt((0.2, 0.6), "Zero123 timestep range.", min=0.0, max=1.0)
    zero123_c_concat: Literal["mode", "sample"] = opt("mode", ZERO123_C_CONCAT_HELP)
    zero123_clip_preprocess: Literal["torch", "processor"] = opt("torch", ZERO123_CLIP_HELP)
    cfg_mode: Literal["upstream", "standard"] = opt(
        "upstream", "upstream = eps_c + s(eps_c - eps_u) (= standard CFG with s+1, SPEC 11.3)."
    )
    sds_grad_scale: Literal["upstream", "nominal"] = opt(
        "upstream",
        "Strength of the SD and Zero123 SDS terms against the reference losses and regularisers. upstream = "
        "as the paper's static stage ran: its SDS bypassed the AMP GradScaler and was then divided by the loss "
        "scale S (SPEC 11.1), so each SDS term is weighted 1/S: the real S under fp16, else the scaler's "
        "schedule without overflows, 2^16 * 2^floor((step-1)/2000). nominal = the weights as written (the "
        "fix; not measured with real weights).",
    )
    normal_warmup_iters: int = opt(1000, "SDS steps before this use normal-map shading.", min=0)
    grid_mask_iters: int = opt(3000, "Mask the finest grid levels until this step (inclusive).", min=0)
    grid_mask_levels: int = opt(8, "How many of the finest levels are masked.", min=0, max=32)
    textureless_rate: float = opt(0.2, "Probability of textureless shading on SDS steps.", min=0.0, max=1.0)
    lr: float = opt(1e-3, "Base learning rate (grids use lr * optim.encoder_lr_scale).", min=0.0)
    grad_clip: float = opt(0.0, "Element-wise gradient clip (0 = none, as upstream static).", min=0.0)
    vae_keep_pixels: int = opt(
        512 * 512,
        "With run.vae_checkpoint: static-stage prior calls of at most this many pixels with grad keep their VAE "
        "activations (SD 512²: 2.5 GiB, Zero123 256²: 0.6 GiB) instead of recomputing them: one recompute chunk "
        "frees nothing at the peak and costs an encoder pass (BENCHMARKS.md §8.3). Same gradients; 0 = recompute.",
        min=0, max=2**31 - 1, nohash=True,
    )  # fmt: skip


@dataclass(frozen=True)
class DynamicConfig:
    """SPEC section 5: the dynamic (coarse) stage."""

    prompt: str = opt("", "Motion prompt for the video prior.")
    prompt_suffix: str = opt(", high-resolution, 8k, good quality", "Appended to the motion prompt.")
    negative_prompt: str = opt("", "Negative prompt of the video prior (upstream: empty).")
    iters: int = opt(10000, "Training steps.", min=1)
    frames: int = opt(16, "Frames per training clip.", min=1, max=256)
    render_size: int = opt(128, "Render resolution per frame.", min=8, max=4096)
    ref_size: int = opt(192, "Reference-view render resolution (t = 0).", min=8, max=4096)
    ref_interval: int = opt(4, "Every N-th step is a reference step.", min=1)
    time_precision: int = opt(256, "Time quantisation of the frame sampler (SPEC 5.1).", min=1)
    zero_rate: float = opt(0.2, "Probability a clip starts at t=0.", min=0.0, max=1.0)
    dynamic_cam_rate: float = opt(0.9, "Probability of a moving camera over the clip.", min=0.0, max=1.0)
    video_weight: float = opt(1.0, "Video SDS weight.", min=0.0)
    video_guidance_scale: float = opt(100.0, "Video CFG scale.", min=0.0)
    video_t_range: tuple[float, float] = opt((0.02, 0.98), "Video timestep range.", min=0.0, max=1.0)
    cfg_mode: Literal["upstream", "standard"] = opt(
        "upstream", "upstream = eps_c + s(eps_c - eps_u) (= standard CFG with s+1, SPEC 11.3)."
    )
    vae_grad_frames: int = opt(
        0, "Back-propagate the VAE encoder through only k frames (0 = all).", min=0, max=256
    )
    vae_keep_pixels: int = opt(
        0, "With run.vae_checkpoint: the video prior keeps the VAE activations of a clip's first frames up to this "
        "many pixels (~0.6 GiB a 256² frame), recomputing the rest; same gradients (refine: 0; 0 = recompute all).",
        min=0, max=2**31 - 1, nohash=True,
    )  # fmt: skip
    zero123_weight: float = opt(40.0, "Zero123 weight on frame 0 of start-from-zero clips.", min=0.0)
    zero123_guidance_scale: float = opt(5.0, "Zero123 CFG scale (standard form).", min=0.0)
    zero123_t_range: tuple[float, float] = opt((0.2, 0.6), "Zero123 timestep range.", min=0.0, max=1.0)
    zero123_c_concat: Literal["mode", "sample"] = opt("mode", ZERO123_C_CONCAT_HELP)
    zero123_clip_preprocess: Literal["torch", "processor"] = opt("torch", ZERO123_CLIP_HELP)
    upstream_view_text: bool = opt(
        False, "Reproduce SPEC 11.6: view-dependent prompts for static-camera clips."
    )
    textureless_rate: float = opt(0.2, "Probability of textureless shading.", min=0.0, max=1.0)
    lr: float = opt(1e-3, "Base learning rate (grids use lr * optim.encoder_lr_scale).", min=0.0)
    grad_clip: float = opt(1.0, "Element-wise gradient clip value (0 = none).", min=0.0)


@dataclass(frozen=True)
class RefineConfig:
    """SPEC section 6: ControlNet-tile semantic refinement with the textual-inversion token.

    Everything the dynamic stage does runs on the same steps, with the ``dynamic`` section's settings.
    """

    prompt: str = opt("", "Refinement prompt; '<token>' stands for the learned token.")
    prompt_suffix: str = opt(", high-resolution, 8k, good quality", "Appended to the refinement prompt.")
    negative_prompt: str = opt("", "Negative prompt of ControlNet guidance (upstream: empty).")
    iters: int = opt(5000, "Training steps.", min=1)
    image_size: int = opt(1024, "ControlNet input resolution (upstream 1024).", min=64, max=4096)
    frames: str = opt(
        "even:2", "Frames per step given to ControlNet: 'even:N' (N evenly spaced), 'all', or '0,8'."
    )
    guidance_scale: float = opt(7.5, "ControlNet CFG scale.", min=0.0)
    cfg_mode: Literal["upstream", "standard"] = opt(
        "upstream", "upstream = eps_c + s(eps_c - eps_u) (= standard CFG with s+1, SPEC 11.3)."
    )
    t_range: tuple[float, float] = opt((0.2, 0.8), "ControlNet timestep range.", min=0.0, max=1.0)
    target: Literal["x0", "sds"] = opt(
        "x0", "x0 = upstream one-step x0 target (--grad_dyn); sds = standard SDS."
    )
    weight: float = opt(1.0, "ControlNet SDS weight (ignored by the x0 target, as upstream).", min=0.0)
    controlnet_prompt: str = opt("best quality, high resolution", "Text given to ControlNet itself.")
    frozen_frames: Literal["read", "all"] = opt(
        "read",
        "Frames the frozen copy renders: read = only those ControlNet reads (the same condition images); "
        "all = the whole clip, as upstream (the same function, 8x the work and memory).",
        nohash=True,
    )
    textureless_rate: float = opt(0.0, "Probability of textureless shading.", min=0.0, max=1.0)
    lr: float = opt(1e-3, "Base learning rate.", min=0.0)
    grad_clip: float = opt(1.0, "Element-wise gradient clip value.", min=0.0)


@dataclass(frozen=True)
class Config:
    """The whole configuration tree."""

    run: RunConfig = dc_field(default_factory=RunConfig)
    models: ModelsConfig = dc_field(default_factory=ModelsConfig)
    preprocess: PreprocessConfig = dc_field(default_factory=PreprocessConfig)
    invert: InvertConfig = dc_field(default_factory=InvertConfig)
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    raymarch: RaymarchConfig = dc_field(default_factory=RaymarchConfig)
    camera: CameraConfig = dc_field(default_factory=CameraConfig)
    shading: ShadingConfig = dc_field(default_factory=ShadingConfig)
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    loss: LossConfig = dc_field(default_factory=LossConfig)
    static: StaticConfig = dc_field(default_factory=StaticConfig)
    dynamic: DynamicConfig = dc_field(default_factory=DynamicConfig)
    refine: RefineConfig = dc_field(default_factory=RefineConfig)
    render: RenderConfig = dc_field(default_factory=RenderConfig)
    export: ExportConfig = dc_field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = dc_field(default_factory=EvaluateConfig)


#: Section names of earlier versions -> their new names (reading an old name is an error naming the new).
RENAMED_SECTIONS: dict[str, str] = {"scene": "field", "renderer": "raymarch"}

#: Fields of earlier versions read as a new field: (section, old key) -> (new key, old value -> new value).
#: A config saved by an earlier version (a project's ``config/<stage>.yaml``) keeps its meaning.
REPLACED_FIELDS: dict[tuple[str, str], tuple[str, dict[object, object]]] = {
    ("static", "legacy_sds_scaling"): ("sds_grad_scale", {True: "upstream", False: "nominal"}),
}
