"""``run-all``: every stage in order on one project, resuming where an earlier run stopped."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from animate124.config.schema import Config
from animate124.errors import InputError
from animate124.project import Project

ORDER = ("preprocess", "invert", "static", "dynamic", "refine")
_ARTICLES = {"a", "an", "the", "one", "two", "some"}


@dataclass(frozen=True)
class Prompts:
    static: str
    dynamic: str
    refine: str
    subject: str


def guess_subject(prompt: str) -> str:
    """The object word: the first word after a leading article ("a panda is dancing" -> "panda")."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", prompt)
    for i, w in enumerate(words):
        if w.lower() in _ARTICLES and i + 1 < len(words):
            return words[i + 1].lower()
    return words[0].lower() if words else "object"


def derive_prompts(
    motion: str,
    *,
    subject: str | None = None,
    static_prompt: str | None = None,
    refine_prompt: str | None = None,
) -> Prompts:
    """Prompts of every stage from the motion prompt, following the upstream examples
    (``shared/data/animate124/prompts.json``): static = "a high-resolution DSLR image of <motion>",
    refine = the motion prompt with the subject word replaced by ``<token>``."""
    subj = (subject or guess_subject(motion)).strip()
    if not subj:
        raise InputError("the subject word is empty")
    static = static_prompt or f"a high-resolution DSLR image of {motion}"
    if refine_prompt:
        refine = refine_prompt
    else:
        pattern = re.compile(rf"\b{re.escape(subj)}\b", re.IGNORECASE)
        refine = pattern.sub("<token>", motion, count=1) if pattern.search(motion) else f"{motion}, <token>"
    return Prompts(static=static, dynamic=motion, refine=refine, subject=subj)


def run_pipeline(
    project: Project,
    cfg: Config,
    image: Path,
    *,
    until: str | None = None,
    force: bool = False,
    show_progress: bool = True,
    report: Callable | None = None,
    auto_initializer: bool = True,
) -> None:
    """Run preprocess, invert, static, dynamic, refine (up to ``until``); finished stages are skipped."""
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess
    from animate124.stages.spec import get_stage

    for stage in ORDER:
        if stage == "preprocess":
            result = run_preprocess(project, cfg, image, force=force)
        elif stage == "invert":
            result = run_invert(
                project, cfg, force=force, show_progress=show_progress, auto_initializer=auto_initializer
            )
        else:
            result = get_stage(stage).run_function()(project, cfg, force=force, show_progress=show_progress)
        if report:
            report(result)
        if stage == until:
            return
