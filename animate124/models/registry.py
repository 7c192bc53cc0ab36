"""Model registry: every pretrained model the pipeline uses is a *role* with a Hub repo, a revision,
the files to fetch and its licence.

Sources: /work/shared/notes/hf-layouts.md (repo layouts, file lists, licences), ecosystem.md section 3
(loading rules), SPEC.md section 10 (the upstream model identifiers), DESIGN.md "Models and downloads".

Pure data, no heavy imports: the CLI can import this module for ``animate124 models list``.

File selection. ``allow_patterns`` names the exact files our loaders read (configs, tokenizer files and,
for repos whose layout is known, the exact weight files: fp16 safetensors where the repo has them,
never the multi-GB single-file checkpoints at the SD root). When ``auto_weights`` is true the weight
files are not known in advance (an override repo, Yuyang-z's upload, CLIPSeg); the downloader then
lists the repo and picks, per folder, the best standard weight file (see :func:`pick_weight_files`).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

# Standard weight file names in preference order: fp16 safetensors variant, default safetensors,
# fp16 pickle variant, default pickle. fp16 files halve the download; loaders cast to the requested dtype.
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
WEIGHT_PREFERENCE: tuple[tuple[str, ...], ...] = (
    ("diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"),
    ("diffusion_pytorch_model.safetensors", "model.safetensors"),
    ("diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin"),
    ("diffusion_pytorch_model.bin", "pytorch_model.bin"),
)
WEIGHT_FILE_NAMES: frozenset[str] = frozenset(n for group in WEIGHT_PREFERENCE for n in group)

# Kinds of required components (used by ModelStore.verify / is_cached):
#   "model"      config.json + one standard weight file
#   "tokenizer"  vocab.json + merges.txt, or tokenizer.json
#   "scheduler"  scheduler_config.json
#   "projection" Zero123 camera projection: clip_camera_projection/ or cc_projection/ (config + weights)
#   "file:<name>" a single named file
COMPONENT_KINDS = ("model", "tokenizer", "scheduler", "projection")


@dataclass(frozen=True)
class RoleSpec:
    """One pretrained model: where it lives on the Hub, which files we use, and its licence.

    ``components`` lists ``(subfolder, kind)`` pairs that must be present for the loader to work
    (subfolder "" is the repo root). ``variant`` is informational (which weight flavour the listed
    files are); loaders pick the variant from the files actually present.
    """

    role: str
    repo_id: str
    revision: str
    allow_patterns: tuple[str, ...]
    ignore_patterns: tuple[str, ...] = ()
    licence: str = "unknown"
    licence_note: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    alternatives: dict[str, str] = field(default_factory=dict)
    variant: str | None = None
    dtype_note: str = ""
    approx_size_bytes: int = 0
    components: tuple[tuple[str, str], ...] = ()
    auto_weights: bool = False
    gated: bool = False
    #: Expected sha256 of files of the revision (repo-relative path -> hex), from the team's offline copies
    #: of the Hub repos (``shared/data/hf-configs/*/_file_manifest.json``, SOURCES.md); checked by
    #: ``animate124 models verify`` and after every download. Only hashes someone has seen are listed.
    file_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def repo_ids(self) -> tuple[str, ...]:
        """The default id first, then the accepted aliases."""
        return (self.repo_id, *self.aliases)


def pick_weight_files(files: Iterable[str], ignore_patterns: Iterable[str] = ()) -> list[str]:
    """Choose, per folder, the most preferred standard weight file present in a repo listing.

    ``files`` are repo-relative paths. Non-standard names (the SD root ``v1-5-pruned*.ckpt``, the
    ``fp16_ema``/``non_ema`` variants, ``tf_model.h5``) are never picked.
    """
    ignore = tuple(ignore_patterns)
    by_dir: dict[str, set[str]] = {}
    for f in files:
        if any(fnmatch.fnmatch(f, p) for p in ignore):
            continue
        d, name = posixpath.split(f)
        if name in WEIGHT_FILE_NAMES:
            by_dir.setdefault(d, set()).add(name)
    chosen: list[str] = []
    for d, names in sorted(by_dir.items()):
        for group in WEIGHT_PREFERENCE:
            hit = [n for n in group if n in names]
            if hit:
                chosen.append(posixpath.join(d, hit[0]) if d else hit[0])
                break
    return chosen


# --------------------------------------------------------------------------------------------------
# Default repos (hf-layouts.md). Revisions: a full 40-hex commit where the notes give one that exists
# in that very repo (hf-layouts.md, hf-configs/SOURCES.md); otherwise "main" (noted per entry), and then,
# where the notes give them, the expected sha256 of the weight files (checked after every download).
# Nothing here is guessed: a role without a known commit or hash says so.

_SD_TOKENIZER = (
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
)

SD = RoleSpec(
    role="sd",
    repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    # "main": the notes' commit 1d0c4ebf… is runwayml's; whether the re-hosted repo keeps that history
    # is not verified (hf-layouts.md section 9), so a pin could break every download.
    revision="main",
    allow_patterns=(
        "model_index.json",
        "scheduler/scheduler_config.json",
        *_SD_TOKENIZER,
        "feature_extractor/preprocessor_config.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ),
    ignore_patterns=("*.ckpt", "v1-5-pruned*", "safety_checker/*"),
    licence="CreativeML OpenRAIL-M",
    licence_note=(
        "CreativeML OpenRAIL-M: use restrictions apply (see the model card). The repo has a licence "
        "click-through; accept it on the Hub and set HF_TOKEN if the download is refused."
    ),
    description="Stable Diffusion 1.5 (static SDS, textual inversion, ControlNet base)",
    aliases=("runwayml/stable-diffusion-v1-5", "sd-legacy/stable-diffusion-v1-5"),
    variant="fp16",
    dtype_note="fp16 variant files (model.fp16 / diffusion_pytorch_model.fp16 safetensors); cast on load",
    approx_size_bytes=246_144_864 + 1_719_125_304 + 167_335_342 + 1_600_000,
    components=(
        ("unet", "model"),
        ("vae", "model"),
        ("text_encoder", "model"),
        ("tokenizer", "tokenizer"),
        ("scheduler", "scheduler"),
    ),
    gated=True,
    # runwayml's files at 1d0c4ebf (hf-configs/stable-diffusion-v1-5--…/_file_manifest.json); the re-hosted
    # repo carries the same files (SOURCES.md, source C). Weights only: configs may have gained commits.
    file_sha256={
        "text_encoder/model.fp16.safetensors": "77795e2023adcf39bc29a884661950380bd093cf0750a966d473d1718dc9ef4e",
        "unet/diffusion_pytorch_model.fp16.safetensors": "c83908253f9a64d08c25fc90874c9c8aef9a329ce1ca5fb909d73b0c83d1ea21",
        "vae/diffusion_pytorch_model.fp16.safetensors": "4fbcf0ebe55a0984f5a5e00d8c4521d52359af7229bb4d81890039d2aa16dd7c",
    },
)

_ZERO123_META = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "feature_extractor/preprocessor_config.json",
    "unet/config.json",
    "vae/config.json",
    "image_encoder/config.json",
)
_ZERO123_COMPONENTS = (
    ("unet", "model"),
    ("vae", "model"),
    ("image_encoder", "model"),
    ("scheduler", "scheduler"),
    ("", "projection"),
)
_ZERO123_LICENCE = dict(licence="MIT", licence_note="MIT (Zero123 / Zero123-XL weights).")

ZERO123 = RoleSpec(
    role="zero123",
    repo_id="ashawkey/zero123-xl-diffusers",
    revision="10e9e8e75adaa3bf77f5ac9c381419016fed68c7",  # main, 2023-11-08 (hf-configs/SOURCES.md)
    allow_patterns=(
        *_ZERO123_META,
        "clip_camera_projection/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "image_encoder/model.safetensors",
        "clip_camera_projection/diffusion_pytorch_model.safetensors",
    ),
    # never the repo's custom module: we load the projection as a raw state dict (no remote code)
    ignore_patterns=("*.py",),
    description="Zero123-XL novel-view diffusion (static stage SDS)",
    alternatives={
        "bennyguo": "bennyguo/zero123-xl-diffusers",
        "kxic": "kxic/zero123-xl",
        "yuyang": "Yuyang-z/zero123-xl",
    },
    variant=None,
    dtype_note="fp16 weights stored under the default names (variant must be None)",
    approx_size_bytes=2_500_000_000,
    components=_ZERO123_COMPONENTS,
    **_ZERO123_LICENCE,
)

ZERO123_BENNYGUO = RoleSpec(
    role="zero123",
    repo_id="bennyguo/zero123-xl-diffusers",
    revision="ae385edfaf74c677408f96bd04b513483bd326ac",  # main, 2023-08-25 (hf-configs/SOURCES.md)
    allow_patterns=(
        *_ZERO123_META,
        "clip_camera_projection/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "image_encoder/model.fp16.safetensors",
        "clip_camera_projection/diffusion_pytorch_model.fp16.safetensors",
    ),
    ignore_patterns=("*.py", "*fp16_ema*"),
    description="Zero123-XL, threestudio conversion (clip_camera_projection, variant fp16)",
    variant="fp16",
    dtype_note="variant='fp16' (also fp32 default and fp16_ema on the Hub; we fetch fp16)",
    approx_size_bytes=2_500_000_000,
    components=_ZERO123_COMPONENTS,
    **_ZERO123_LICENCE,
)

ZERO123_KXIC = RoleSpec(
    role="zero123",
    repo_id="kxic/zero123-xl",
    revision="7d8aec2223b93e84eb26893d1e732e013523474b",  # main, 2023-08-02 (hf-configs/SOURCES.md)
    allow_patterns=(
        *_ZERO123_META,
        "cc_projection/config.json",
        "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.bin",
        "image_encoder/pytorch_model.bin",
        "cc_projection/diffusion_pytorch_model.bin",
    ),
    ignore_patterns=("*.py", "safety_checker/*"),
    description="Zero123-XL, diffusers community conversion (cc_projection, fp32 .bin)",
    dtype_note="fp32 pickle .bin only (loaded through the libraries' safe path / weights_only)",
    approx_size_bytes=5_000_000_000,
    components=_ZERO123_COMPONENTS,
    **_ZERO123_LICENCE,
)

ZERO123_YUYANG = RoleSpec(
    role="zero123",
    repo_id="Yuyang-z/zero123-xl",
    revision="9d13d7e06d88f6275f07f9f6abe65b6408c2fdc9",
    allow_patterns=(*_ZERO123_META, "cc_projection/config.json"),
    ignore_patterns=("*.py", "safety_checker/*", "*.ckpt"),
    description="Zero123-XL as linked by Animate124 (cc_projection, ProjectionModel)",
    dtype_note="weight files not verified offline; picked per folder from the repo listing",
    approx_size_bytes=5_000_000_000,
    components=_ZERO123_COMPONENTS,
    auto_weights=True,
    **_ZERO123_LICENCE,
)

_VIDEO_META = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
)
_VIDEO_COMPONENTS = (
    ("unet", "model"),
    ("vae", "model"),
    ("text_encoder", "model"),
    ("tokenizer", "tokenizer"),
    ("scheduler", "scheduler"),
)
_NC = dict(
    licence="CC-BY-NC-4.0",
    licence_note=(
        "NON-COMMERCIAL: CC-BY-NC-4.0 (the model card text says CC-BY-NC-ND). Research and personal use "
        "only; outputs of the video stage inherit this restriction."
    ),
)

VIDEO = RoleSpec(
    role="video",
    repo_id="ali-vilab/text-to-video-ms-1.7b",
    revision="8227dddca75a8561bf858d604cc5dae52b954d01",  # hf-layouts.md section 2 (2023-12-01)
    allow_patterns=(
        *_VIDEO_META,
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ),
    description="ModelScope text-to-video 1.7B (dynamic stage video SDS)",
    aliases=("damo-vilab/text-to-video-ms-1.7b",),
    alternatives={"zeroscope": "cerspense/zeroscope_v2_576w"},
    variant="fp16",
    dtype_note="variant='fp16' safetensors",
    approx_size_bytes=680_821_102 + 2_822_650_226 + 167_335_350 + 1_600_000,
    components=_VIDEO_COMPONENTS,
    # hf-configs/ali-vilab--text-to-video-ms-1.7b/_file_manifest.json (the pinned commit)
    file_sha256={
        "text_encoder/model.fp16.safetensors": "6ab158327d06ce861b5c78843672c78433ea82fcf03f142097ba204b81251cd2",
        "unet/diffusion_pytorch_model.fp16.safetensors": "f972e78d39735baa09aab1cf60dd19f213e32f1c5a89382385e1a7f647b2e537",
        "vae/diffusion_pytorch_model.fp16.safetensors": "c8b011e5a18c53888d51a81aa28223ddec87b450c14dc9650d9c3ebbcd17624e",
    },
    **_NC,
)

VIDEO_ZEROSCOPE = RoleSpec(
    role="video",
    repo_id="cerspense/zeroscope_v2_576w",
    # commit hashes seen only as short ids (the original upload 7348728…'s model_index does not load in
    # diffusers); the UNet's sha256 is on its Hub blob page (hf-configs/SOURCES.md)
    revision="main",
    allow_patterns=(
        *_VIDEO_META,
        "text_encoder/pytorch_model.bin",
        "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.bin",
    ),
    ignore_patterns=("zs2_576w/*",),
    file_sha256={
        "unet/diffusion_pytorch_model.bin": "42b51ea486109b7479366e01aae7e267a81bb750c13eb5c6b765a3d5bc7987c9"
    },
    description="zeroscope v2 576w (ModelScope fine-tune at 576x320)",
    dtype_note="fp16 weights under the default .bin names; variant must be None",
    approx_size_bytes=3_700_000_000,
    components=_VIDEO_COMPONENTS,
    **_NC,
)

CONTROLNET = RoleSpec(
    role="controlnet",
    repo_id="lllyasviel/control_v11f1e_sd15_tile",
    revision="main",  # main = 3f87770… (short hash only; the known sha256 is of the original .pth, not this .bin)
    allow_patterns=("config.json", "diffusion_pytorch_model.bin"),
    ignore_patterns=("images/*", "*.png"),
    licence="OpenRAIL",
    licence_note="OpenRAIL (ControlNet 1.1); use restrictions of the SD 1.5 licence apply too.",
    description="ControlNet 1.1 tile for SD 1.5 (refinement stage)",
    dtype_note="fp32 pickle .bin is the only weight file on main",
    approx_size_bytes=1_445_157_124,
    components=(("", "model"),),
)

_DEPTH_META = ("config.json", "preprocessor_config.json")
DEPTH = RoleSpec(
    role="depth",
    repo_id="Intel/dpt-beit-large-512",
    revision="main",  # config seen at d69e82b, preprocessor at 152c0d7 (short hashes)
    allow_patterns=(*_DEPTH_META, "model.safetensors"),
    licence="MIT",
    licence_note="MIT",
    description="DPT-BEiT-L 512 monocular depth (MiDaS 3.1 in transformers format)",
    alternatives={"depth_anything": "depth-anything/Depth-Anything-V2-Small-hf"},
    approx_size_bytes=1_376_000_000,
    components=(("", "model"),),
)

DEPTH_ANYTHING = RoleSpec(
    role="depth",
    repo_id="depth-anything/Depth-Anything-V2-Small-hf",
    revision="main",
    allow_patterns=(*_DEPTH_META, "model.safetensors"),
    licence="Apache-2.0",
    licence_note="Apache-2.0 (Small only; the Large model is CC-BY-NC-4.0)",
    description="Depth-Anything-V2 Small (relative depth)",
    approx_size_bytes=99_000_000,
    components=(("", "model"),),
)

_CLIP_TOKENIZER = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")

SEGMENT = RoleSpec(
    role="segment",
    repo_id="CIDAS/clipseg-rd64-refined",
    revision="main",
    allow_patterns=("config.json", "preprocessor_config.json", *_CLIP_TOKENIZER),
    licence="Apache-2.0",
    licence_note="Apache-2.0 (model card licence tag, seen on the Hub pages)",
    description="CLIPSeg: coarse foreground mask from a text query (background removal, step 1)",
    approx_size_bytes=603_000_000,
    components=(("", "model"), ("", "tokenizer")),
    # main had only pytorch_model.bin at upload; a safetensors copy may exist now: pick from the listing
    auto_weights=True,
)

MATTING = RoleSpec(
    role="matting",
    repo_id="hustvl/vitmatte-small-composition-1k",
    revision="main",  # main = 6a58ad7… (adds model.safetensors)
    allow_patterns=("config.json", "preprocessor_config.json", "model.safetensors"),
    licence="Apache-2.0",
    licence_note="Apache-2.0 (model card licence tag, seen on the Hub pages)",
    description="ViTMatte-S: refines a trimap into a soft alpha matte (background removal, step 2)",
    approx_size_bytes=103_000_000,
    components=(("", "model"),),
)

CLIP = RoleSpec(
    role="clip",
    repo_id="openai/clip-vit-large-patch14",
    revision="32bd64288804d66eefd0ccbe215aa642df71cc41",  # hf-layouts.md section 6
    allow_patterns=(
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        *_CLIP_TOKENIZER,
        "model.safetensors",
    ),
    licence="MIT",
    licence_note="MIT (OpenAI CLIP)",
    description="CLIP ViT-L/14 (evaluation metrics: CLIP score, image-image similarity)",
    approx_size_bytes=1_710_540_580 + 4_000_000,
    components=(("", "model"), ("", "tokenizer")),
    # hf-configs/openai--clip-vit-large-patch14/_file_manifest.json (the pinned commit)
    file_sha256={"model.safetensors": "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb"},
)

ROLES: dict[str, RoleSpec] = {
    s.role: s for s in (SD, ZERO123, VIDEO, CONTROLNET, DEPTH, SEGMENT, MATTING, CLIP)
}

# Every repo whose layout the registry knows (defaults and alternatives), by repo id.
KNOWN_REPOS: dict[str, RoleSpec] = {
    s.repo_id: s
    for s in (
        *ROLES.values(),
        ZERO123_BENNYGUO,
        ZERO123_KXIC,
        ZERO123_YUYANG,
        VIDEO_ZEROSCOPE,
        DEPTH_ANYTHING,
    )
}


def get_role(role: str) -> RoleSpec:
    """The default spec of ``role``; raises :class:`animate124.errors.ConfigError` for unknown roles."""
    try:
        return ROLES[role]
    except KeyError:
        from animate124.errors import ConfigError

        raise ConfigError(f"unknown model role {role!r}", hint=f"roles: {', '.join(ROLES)}") from None


def spec_for(role: str, repo_id: str, revision: str | None = None) -> RoleSpec:
    """The spec describing ``repo_id`` when it serves ``role``.

    Known repos (defaults, aliases, alternatives) get their own file list. An unknown repo id is
    assumed to have the role's default layout; its weights are then picked from the repo listing.
    """
    base = get_role(role)
    spec = KNOWN_REPOS.get(repo_id)
    if spec is None and repo_id in base.aliases:
        spec = replace(base, repo_id=repo_id, aliases=(), revision="main", file_sha256={})
    if spec is None:
        meta = tuple(p for p in base.allow_patterns if posixpath.basename(p) not in WEIGHT_FILE_NAMES)
        spec = replace(
            base,
            repo_id=repo_id,
            aliases=(),
            revision="main",
            allow_patterns=meta,
            auto_weights=True,
            file_sha256={},
            description=f"{base.description} (override)",
        )
    if spec.role != role:
        spec = replace(spec, role=role)
    if revision and revision != spec.revision:  # another revision: the known hashes may not apply
        spec = replace(spec, revision=revision, file_sha256={})
    return spec


def alternative_spec(role: str, name: str) -> RoleSpec:
    """The spec of a named alternative of ``role`` (e.g. ``("video", "zeroscope")``)."""
    base = get_role(role)
    if name not in base.alternatives:
        from animate124.errors import ConfigError

        raise ConfigError(
            f"role {role!r} has no alternative {name!r}",
            hint=f"alternatives: {', '.join(base.alternatives) or 'none'}",
        )
    return spec_for(role, base.alternatives[name])


def download_command(role: str, alternative: str | None = None) -> str:
    """The CLI command that fetches a role (quoted in error messages)."""
    cmd = f"animate124 models download {role}"
    return f"{cmd} --alternative {alternative}" if alternative else cmd
