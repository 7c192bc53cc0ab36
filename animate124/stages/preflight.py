"""The pre-flight: every check a run can make before it writes anything, in one place.

``run-all`` and the stage commands call :func:`preflight` once, before the first stage, with the stages
they will run. It checks, in this order, and raises the first problem (nothing is written):

1. the earlier stages each planned stage needs: done in the project, or planned before it
   (``run-all --from static`` on a project without ``invert`` fails here, before static trains);
2. the input image (readable, large enough; an alpha channel with an object in it);
3. the prompts of the stages that will run: not empty, ``<token>`` only where the learned token will
   exist, and no longer than the text encoder reads, counted with the tokenizer of the very model that
   reads them (the tiny preset's tiny CLIP tokenizer included), worded once by
   :func:`animate124.guidance.prompts.prompt_length_error`;
4. the textual-inversion initializer: one token of SD's tokenizer; a word derived from the prompt that
   is not one becomes "object" here (one decision, said once), a word the user typed is an error;
5. the device, or every device of ``run.devices`` (and, with ``run.tensorboard``, that the tensorboard package is there);
6. every model role the stages need, all missing ones in one message with their total size;
7. free disk space for the stages' outputs (an estimate from the config: fields, optimizer state,
   checkpoints, occupancy grids, previews).

Stages that are up to date are left out of 3-7 (a finished project needs neither models nor disk).
``animate124 batch`` runs it on every row before any task starts with 5 (the device is the one Ray gives
each task) and 6 (it fetches the models the rows need right after) left out, and each task runs it whole.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animate124.config.schema import Config
from animate124.engine.runner import stage_hash
from animate124.errors import ConfigError, InputError, ModelNotFoundError, ProjectError
from animate124.project import Project
from animate124.stages.spec import TRAINING_STAGES, get_stage

log = logging.getLogger(__name__)

TOKEN = "<token>"
FALLBACK_INITIALIZER = "object"
#: Bytes per trained parameter on disk at the peak: the final model (fp32) and, while a checkpoint is
#: replaced, two checkpoints of parameters + Adam's two moments (fp32): 1 + 2 x 3.
_BYTES_PER_PARAM = 4 * 7
#: What a stage writes besides its fields: previews, logs, the input copy, depth maps, videos.
_SMALL_OUTPUTS = {"preprocess": 64 << 20, "invert": 16 << 20, "render": 128 << 20}
_PREVIEW_BYTES = 64 << 20


@dataclass(frozen=True)
class Checked:
    """What the pre-flight decided: the config to run with (the textual-inversion initializer it chose is
    in it), the stages that will do work, one line per decision, and the disk space they need."""

    cfg: Config
    will_run: tuple[str, ...]
    decisions: tuple[str, ...] = ()
    disk_bytes: int = 0
    image_alpha: bool | None = None  # the input image has an alpha channel (None: no image checked)


def with_initializer(prompts: Any, checked: Checked) -> Any:
    """``prompts`` (:class:`~animate124.stages.pipeline.Prompts`) with the textual-inversion initializer the
    pre-flight decided, when the invert stage will run (the project records it and ``invert`` reuses it)."""
    word = checked.cfg.invert.initializer
    if word == prompts.initializer or "invert" not in checked.will_run:
        return prompts
    from dataclasses import replace

    return replace(prompts, initializer=word)


# --- which stages will run -----------------------------------------------------------------------
def planned_runs(
    project: Project, cfg: Config, stages: Sequence[str], image_sha: str | None, force: bool
) -> tuple[str, ...]:
    """The stages of ``stages`` that will do work: all with ``force``, else those not done with the hash
    they will have (the runner's :func:`~animate124.engine.runner.stage_hash`, with the hashes the
    earlier planned stages will record)."""
    if force or not project.exists():
        return tuple(stages)
    manifest = project.read_manifest().get("stages", {})
    planned: dict[str, str] = {}
    runs = []
    for name in stages:
        spec = get_stage(name)
        rec = manifest.get(name, {})
        if name == "render":  # the render stage has its own request cache; count it as running
            runs.append(name)
            continue
        # preprocess and invert hash the image (invert: its copy in the project, the same bytes)
        extra = (image_sha or project.source()[1] or "") if name in ("preprocess", "invert") else ""
        planned[name] = stage_hash(project, spec, cfg, extra, planned)
        if rec.get("status") != "done" or rec.get("config_hash") != planned[name]:
            runs.append(name)
    return tuple(runs)


def check_requirements(project: Project, stages: Sequence[str], command: str) -> None:
    """Raise a ProjectError naming every earlier stage that a planned stage needs and that neither has
    finished in the project nor is planned before it, with the command that produces it."""
    exists = project.exists()
    missing: dict[str, str] = {}
    for i, name in enumerate(stages):
        needs = list(get_stage(name).requires)
        trained = any(s in stages[:i] or (exists and project.is_done(s)) for s in TRAINING_STAGES)
        if name == "render" and not trained:
            needs.append("static")
        for need in needs:
            if need not in stages[:i] and not (exists and project.is_done(need)):
                missing.setdefault(need, name)
    if not missing:
        return
    from animate124.stages.spec import STAGE_NAMES

    what = ", ".join(f"'{need}' (needed by '{by}')" for need, by in missing.items())
    first = min(missing, key=STAGE_NAMES.index)
    image = " IMAGE" if first == "preprocess" else ""
    where = f"in {project.root}" if exists else f"yet ({project.root} is not a project)"
    if command == "run-all":
        hint = f"run `animate124 run-all IMAGE PROMPT --from {first}` (or `animate124 {first}{image} -p {project.root}`)"
    else:
        hint = f"run `animate124 {first}{image} -p {project.root}` first"
    n = len(missing)
    raise ProjectError(
        f"{'stage' if n == 1 else 'stages'} {what} {'has' if n == 1 else 'have'} not finished {where}",
        hint=hint,
    )


# --- the image ----------------------------------------------------------------------------------
def check_image(image: Path, cfg: Config) -> bool:
    """Raise InputError for an image the preprocess stage would refuse; return whether it has alpha
    (then no matting model is needed). An alpha channel must hold an object."""
    import numpy as np

    from animate124.preprocess.image_io import has_alpha, load_image

    img = load_image(image, min_side=cfg.preprocess.min_side, max_side=None)
    if not has_alpha(img):
        return False
    alpha = np.asarray(img.convert("RGBA"))[..., 3]
    frac = float((alpha > 127).mean())
    if frac < cfg.preprocess.min_foreground_fraction:
        raise InputError(
            f"no foreground in {image}: its alpha channel is (almost) fully transparent ({frac:.4%} opaque)",
            hint="pass an RGBA PNG whose alpha marks the object, or an image without alpha",
        )
    return True


# --- tokenizers and prompts ----------------------------------------------------------------------
def tokenizer_for(cfg: Config, role: str) -> Any:
    """The tokenizer of the model ``role`` (``sd`` or ``video``) that reads a prompt: the tiny preset's
    tiny CLIP tokenizer (built in memory), else the cached model's; None when it is not cached (the
    model check reports that)."""
    from transformers import CLIPTokenizer

    if cfg.models.tiny:
        from animate124.models.tiny_tokenizer import tiny_vocab_and_merges

        vocab, merges = tiny_vocab_and_merges()
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="<|endoftext|>")
    try:
        alternative = (
            cfg.models.video_model if role == "video" and cfg.models.video_model != "modelscope" else None
        )
        folder = _store(cfg).resolve(role, alternative) / "tokenizer"
        return CLIPTokenizer.from_pretrained(str(folder))
    except (ModelNotFoundError, OSError, ValueError) as exc:
        log.debug("no %s tokenizer for the prompt check: %s", role, exc)
        return None


def _prompt_texts(cfg: Config, stage: str) -> list[tuple[str, str, str]]:
    """``(what, text, role)``: every text that ``stage``'s priors encode, exactly as they encode it (the
    prompt with its suffix and, where the prior interpolates views, its longest view variant; the
    negative prompts), with the role of the model whose tokenizer reads it. ``<token>`` counts as one
    token, as the learned token does."""
    from animate124.guidance.prompts import view_prompts

    def prompt(section: str, views: bool) -> list[str]:
        sec = getattr(cfg, section)
        text = sec.prompt.strip().replace(TOKEN, FALLBACK_INITIALIZER) + sec.prompt_suffix
        return view_prompts(text) if views else [text]

    readers = {
        "static": (("static", "sd", cfg.static.view_dependent_text),),
        "dynamic": (("dynamic", "video", cfg.dynamic.upstream_view_text),),
        "refine": (
            ("refine", "sd", cfg.dynamic.upstream_view_text),
            ("dynamic", "video", cfg.dynamic.upstream_view_text),
        ),
    }[stage]
    out: list[tuple[str, str, str]] = []
    for section, role, views in readers:
        sec = getattr(cfg, section)
        suffix = f" with its suffix {sec.prompt_suffix!r}" if sec.prompt_suffix else ""
        view = " and view text" if views else ""
        out += [(f"{section} prompt{suffix}{view}", t, role) for t in prompt(section, views)]
        if sec.negative_prompt:
            out.append((f"{section} negative prompt", sec.negative_prompt, role))
    if stage == "refine":
        out.append(("ControlNet prompt (refine.controlnet_prompt)", cfg.refine.controlnet_prompt, "sd"))
    return out


def _tokenizer(cfg: Config, role: str, tokenizers: dict[Any, Any] | None) -> Any:
    """:func:`tokenizer_for`, kept in ``tokenizers`` (per role and models section) when one is given."""
    if tokenizers is None:
        return tokenizer_for(cfg, role)
    key = (role, cfg.models)
    if key not in tokenizers:
        tokenizers[key] = tokenizer_for(cfg, role)
    return tokenizers[key]


def check_prompts(
    cfg: Config, stages: Sequence[str], token_ready: bool, tokenizers: dict[Any, Any] | None = None
) -> None:
    """Raise ConfigError for an empty prompt or ``<token>`` where no learned token will exist, and
    InputError for a text longer than its text encoder reads (the wording of
    :func:`animate124.guidance.prompts.check_prompt_length`, counted with the reading model's tokenizer)."""
    from animate124.guidance.prompts import check_prompt_length

    tokenizers = {} if tokenizers is None else tokenizers
    for stage in stages:
        for section in dict.fromkeys(
            s for s in ("static", "dynamic", "refine") if s == stage or (stage == "refine" and s == "dynamic")
        ):
            text = getattr(cfg, section).prompt.strip()
            if not text:
                raise ConfigError(
                    f"the {section} prompt is empty",
                    hint='pass --prompt "..." (or run `animate124 run-all IMAGE PROMPT`, which derives it)',
                )
            if TOKEN in text and (section != "refine" or not token_ready):
                raise ConfigError(
                    f"the {section} prompt {text!r} contains {TOKEN}, "
                    + (
                        "but no textual-inversion token has been learned"
                        if section == "refine"
                        else "which only the refine stage understands"
                    ),
                    hint="run `animate124 invert` first"
                    if section == "refine"
                    else f"remove {TOKEN} from it",
                )
        for what, text, role in _prompt_texts(cfg, stage):
            check_prompt_length(_tokenizer(cfg, role, tokenizers), text, what)


def decide_initializer(
    cfg: Config, word: str, auto: bool, tokenizers: dict[Any, Any] | None = None
) -> tuple[str, str | None]:
    """The textual-inversion initializer and, when it was replaced, the line that says so.

    ``auto``: the word was derived from the prompt; if SD's tokenizer splits it, "object" is used (the
    word's own embedding does not exist). A word the user typed must be one token (ConfigError)."""
    tok = _tokenizer(cfg, "sd", tokenizers)
    if tok is None:
        return word, None
    if len(tok.encode(word, add_special_tokens=False)) == 1:
        return word, None
    if auto:
        return (
            FALLBACK_INITIALIZER,
            f"'{word}' is not one token of the text encoder, so '{FALLBACK_INITIALIZER}' is used",
        )
    raise ConfigError(
        f"the textual-inversion initializer {word!r} is not one token of the text encoder",
        hint="pass --initializer with a common one-token word for the object, e.g. animal, toy, object",
    )


# --- models -------------------------------------------------------------------------------------
def _store(cfg: Config) -> Any:
    from animate124.engine.runtime import model_cache_dir
    from animate124.models.store import ModelStore

    overrides = {
        role: getattr(cfg.models, role)
        for role in ("sd", "zero123", "video", "controlnet", "depth", "matting", "segment", "clip")
        if getattr(cfg.models, role)
    }
    return ModelStore(cache_dir=model_cache_dir(cfg), offline=True, overrides=overrides)


def needed_roles(
    cfg: Config, stages: Sequence[str], image_alpha: bool | None
) -> list[tuple[str, str | None]]:
    """``(role, alternative)`` of every pretrained model the ``stages`` load, in a stable order."""
    video = (("video", None if cfg.models.video_model == "modelscope" else cfg.models.video_model),)
    zero_dyn = (("zero123", None),) if cfg.dynamic.zero123_weight else ()
    per_stage: dict[str, tuple[tuple[str, str | None], ...]] = {
        "preprocess": (("depth", None), *((("segment", None), ("matting", None)) if not image_alpha else ())),
        "invert": (("sd", None),),
        "static": (
            *((("sd", None),) if cfg.static.sd_weight else ()),
            *((("zero123", None),) if cfg.static.zero123_weight else ()),
        ),
        "dynamic": (*video, *zero_dyn),
        "refine": (*video, *zero_dyn, ("sd", None), ("controlnet", None)),
    }
    roles: list[tuple[str, str | None]] = []
    for stage in stages:
        for r in per_stage.get(stage, ()):
            if r not in roles:
                roles.append(r)
    return roles


def check_models(cfg: Config, stages: Sequence[str], image_alpha: bool | None) -> None:
    """Raise one ModelNotFoundError naming every missing role the stages need, with the total download
    size and ``animate124 models download all``. The tiny preset builds its models on first use."""
    if cfg.models.tiny:
        return
    store = _store(cfg)
    missing: list[tuple[str, str, int]] = []
    for role, alternative in needed_roles(cfg, stages, image_alpha):
        try:
            src = store.source(role, alternative)
            store.resolve(role, alternative)
        except ModelNotFoundError as exc:
            from animate124.models.registry import alternative_spec, get_role

            spec = alternative_spec(role, alternative) if alternative else get_role(role)
            label = f"{role}{':' + alternative if alternative else ''}"
            if "local model folder" in exc.message or "does not exist" in exc.message:
                raise  # a local override that is wrong: its own message says what to fix
            missing.append((label, f"{src.spec.repo_id}", spec.approx_size_bytes))
    if not missing:
        return
    total = sum(size for *_, size in missing)
    names = "; ".join(f"{label} ({repo}, {_gb(size)})" for label, repo, size in missing)
    n = len(missing)
    raise ModelNotFoundError(
        f"{n} model{'s' if n > 1 else ''} needed by {', '.join(stages)} {'are' if n > 1 else 'is'} not in "
        f"the cache {store.hub_dir}: {names}",
        hint=f"run `animate124 models download all` (about {_gb(total)} for these; needs network, and "
        "HF_TOKEN for sd's licence click-through), or `animate124 models download ROLE` for each",
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


# --- disk ---------------------------------------------------------------------------------------
def output_bytes(cfg: Config, stages: Sequence[str]) -> int:
    """An upper estimate of what ``stages`` write at their peak: for a training stage its field and
    occupancy grid (sizes from the config, counted on PyTorch's meta device: no memory) times the model
    and two checkpoints with the optimizer's moments, plus previews; a fixed amount for the others."""
    from animate124.stages.build import build_field, build_occupancy

    total = 0
    for stage in stages:
        if stage in TRAINING_STAGES:
            kind = "static" if stage == "static" else "dynamic"
            params = sum(p.numel() for p in build_field(cfg.field, kind, "meta").parameters())
            occ = build_occupancy(cfg, kind == "dynamic", "meta")
            grid = sum(b.numel() * b.element_size() for b in occ.buffers())
            total += (
                params * _BYTES_PER_PARAM + 3 * grid + (_PREVIEW_BYTES if not cfg.models.tiny else 1 << 20)
            )
        else:
            total += _SMALL_OUTPUTS.get(stage, 0) if not cfg.models.tiny else 1 << 20
    return total


def check_disk(project: Project, needed: int) -> None:
    """Raise a ProjectError when the file system of the project has less than ``needed`` bytes free."""
    base = next((p for p in (project.root, *project.root.parents) if p.exists()), None)
    if base is None or needed <= 0:
        return
    free = shutil.disk_usage(base).free
    if free < needed:
        raise ProjectError(
            f"not enough free disk space for {project.root}: the stages write up to about {_gb(needed)}, "
            f"{_gb(free)} is free",
            hint="free some space, or pass -p DIR on a larger disk",
        )


# --- all of it ----------------------------------------------------------------------------------
def preflight(
    project: Project,
    cfg: Config,
    stages: Sequence[str],
    *,
    command: str,
    image: Path | None = None,
    initializer_auto: bool = False,
    force: bool = False,
    device: bool = True,
    models: bool = True,
    tokenizers: dict[Any, Any] | None = None,
) -> Checked:
    """Every check before ``stages`` run (see the module docstring); raises the first problem found.

    ``image``: the input image of a run that starts with preprocess. ``initializer_auto``: the
    textual-inversion initializer in ``cfg`` was derived from the prompt (it may be replaced by "object").
    ``device=False`` / ``models=False`` leave out the device and model checks (for a caller that checks them
    elsewhere: ``animate124 batch``); without the models cached the prompt lengths are lower bounds.
    ``tokenizers``: a dict that keeps the tokenizers between calls (a batch checks many rows).
    """
    from animate124.engine.runtime import resolve_devices
    from animate124.fileio import file_sha256

    stages = tuple(stages)
    project.check_location()
    if image is None:
        project.require()  # a stage command on a directory that is no project
    check_requirements(project, stages, command)
    alpha = None
    sha = None
    if image is not None:
        alpha = check_image(image, cfg)
        sha = file_sha256(image)
        if project.exists():
            from animate124.stages.preprocess import check_same_image

            check_same_image(project, image, sha, force=force)
    decisions: list[str] = []
    if "invert" in stages:
        initializer, line = decide_initializer(cfg, cfg.invert.initializer, initializer_auto, tokenizers)
        if line:
            from animate124.config.loader import replace

            cfg = replace(cfg, {"invert": {"initializer": initializer}})
            decisions.append(f"textual-inversion initializer: {initializer} ({line})")
    will_run = planned_runs(project, cfg, stages, sha, force)
    token_ready = "invert" in stages or (project.exists() and project.is_done("invert"))
    check_prompts(cfg, [s for s in will_run if s in TRAINING_STAGES], token_ready, tokenizers)
    if device:
        resolve_devices(cfg)  # run.device, or every one of run.devices
    if cfg.run.tensorboard and any(s in will_run for s in ("invert", *TRAINING_STAGES)):
        from animate124.engine.scalars import check_tensorboard

        check_tensorboard()
    if models:
        check_models(cfg, [s for s in will_run if s != "render"], alpha)
    needed = output_bytes(cfg, will_run)
    check_disk(project, needed)
    return Checked(
        cfg=cfg, will_run=will_run, decisions=tuple(decisions), disk_bytes=needed, image_alpha=alpha
    )
