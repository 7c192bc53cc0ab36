"""``run-all``: the registered stages in order on one project, and the prompts derived for them.

The stage order comes from :mod:`animate124.stages.spec`; a stage already done with the same config
and inputs is skipped by its runner (and reported as skipped). The prompts of the static and refine
stages are derived from the motion prompt the way the upstream examples are written
(``shared/data/animate124/prompts.json``):

=====================  ===================================================
motion (dynamic)       ``a panda is dancing``
subject                ``panda`` (the noun phrase after the leading article)
static                 ``a high-resolution DSLR image of a panda``
refine                 ``a <token> is dancing`` (the subject replaced by ``<token>``)
=====================  ===================================================
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from animate124.config.schema import Config
from animate124.config.validation import check_text
from animate124.errors import ConfigError
from animate124.project import Project
from animate124.stages.spec import STAGE_NAMES, stage_range

log = logging.getLogger(__name__)

TOKEN = "<token>"
STATIC_TEMPLATE = "a high-resolution DSLR image of {}"

_DETERMINERS = {
    "a", "an", "the", "one", "two", "three", "four", "five", "some", "several", "many", "my", "your",
    "his", "her", "its", "our", "their", "this", "that", "these", "those",
}  # fmt: skip
_SINGULAR = {"a", "an", "one", "this", "that"}
_KEEP_DETERMINER = _DETERMINERS - _SINGULAR - {"the", "my", "your", "his", "her", "its", "our", "their"}
# Words that end a noun phrase: auxiliaries, prepositions, conjunctions, relative pronouns.
_STOP = {
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "does", "do", "did",
    "can", "could", "will", "would", "shall", "should", "may", "might", "must", "gets", "get",
    "with", "without", "in", "on", "at", "of", "to", "into", "onto", "from", "by", "for", "over",
    "under", "above", "below", "near", "behind", "beside", "between", "through", "across", "around",
    "along", "up", "down", "off", "out", "while", "and", "or", "but", "as", "that", "which", "who",
    "whose", "like", "against", "toward", "towards", "inside", "outside", "after", "before", "during",
    "then", "slowly", "quickly", "happily", "gently",
}  # fmt: skip
# Common motion verbs (base form; the "-s" form is checked too) for "two pandas dance".
_VERBS = {
    "dance", "run", "jump", "walk", "play", "fly", "swim", "spin", "sing", "eat", "drink", "ride",
    "turn", "wave", "shake", "nod", "sit", "stand", "roll", "rotate", "move", "fall", "bounce", "hop",
    "launch", "blink", "smile", "laugh", "talk", "look", "climb", "crawl", "kick", "throw", "catch",
    "flap", "swing", "sway", "float", "explode", "burn", "melt", "grow", "open", "close", "wag",
}  # fmt: skip
_TOKEN_RE = re.compile(r"[^\W_][\w'-]*|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Prompts:
    """The prompts of every stage, derived from the motion prompt (each one overridable)."""

    static: str
    dynamic: str
    refine: str
    subject: str  # the object's noun phrase, e.g. "space shuttle"
    initializer: str  # its head noun, the textual-inversion initializer word, e.g. "shuttle"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class _Subject:
    determiner: str | None
    phrase: str
    start: int  # span of determiner + phrase in the prompt
    end: int


def _is_verb_like(word: str, determiner: str | None) -> bool:
    w = word.lower()
    if w in _STOP or w in _VERBS:
        return True
    if len(w) > 4 and w.endswith("ing"):
        return True
    if w.endswith("s") and (w[:-1] in _VERBS or w[:-2] in _VERBS):
        return True
    # after "a"/"an"/"one": a later word in -s is a verb ("a horse gallops"), not a plural
    return (determiner or "").lower() in _SINGULAR and w.endswith("s") and not w.endswith(("ss", "us", "is"))


def _parse_subject(prompt: str) -> _Subject | None:
    """The noun phrase the prompt is about: after a leading determiner, up to the verb, a comma or a
    preposition (at most four words). None when the prompt starts with no usable word."""
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(prompt)]
    if not tokens:
        return None
    det = None
    i = 0
    if tokens[0][0].lower() in _DETERMINERS and len(tokens) > 1:
        det, i = tokens[0][0], 1
    first = tokens[i][0]
    if not first[0].isalnum() or first.lower() in _STOP or first.lower() in _DETERMINERS:
        return None
    words = [tokens[i]]
    for text, s, e in tokens[i + 1 :]:
        if not text[0].isalnum() or len(words) == 4 or _is_verb_like(text, det):
            break
        words.append((text, s, e))
    phrase = prompt[words[0][1] : words[-1][2]]
    return _Subject(det, phrase, tokens[0][1] if det else words[0][1], words[-1][2])


def guess_subject(prompt: str) -> str | None:
    """The object's noun phrase ("a panda is dancing" -> "panda", "a space shuttle launching" ->
    "space shuttle"); None when the prompt has none that can be found (emoji, a bare verb)."""
    found = _parse_subject(prompt)
    return found.phrase if found else None


def _article(phrase: str) -> str:
    first = phrase.lower()
    vowel = first[:1] in "aeiou" and not first.startswith(("uni", "use", "usu", "eu", "one"))
    return "an" if vowel or first.startswith(("hour", "honest", "heir")) else "a"


def _object_words(phrase: str, determiner: str | None) -> str:
    """``phrase`` with a determiner that reads well after "an image of": a/an, or the prompt's own
    numeral/quantifier ("two pandas")."""
    if re.match(rf"(?i)({'|'.join(sorted(_DETERMINERS))})\b", phrase):
        return phrase
    if determiner and determiner.lower() in _KEEP_DETERMINER:
        return f"{determiner.lower()} {phrase}"
    return f"{_article(phrase)} {phrase}"


def _head_noun(phrase: str) -> str:
    words = re.findall(r"[^\W\d_][\w-]*", phrase.lower())
    if not words:
        return "object"
    head = words[-1].split("-")[-1]
    return head[:-2] if head.endswith("'s") else head


def derive_prompts(
    motion: str,
    *,
    subject: str | None = None,
    static_prompt: str | None = None,
    refine_prompt: str | None = None,
) -> Prompts:
    """Prompts of every stage from the motion prompt (see the module docstring).

    ``subject`` (``--subject``) names the object when the prompt does not start with it; a motion
    prompt that contains ``<token>`` needs it (``<token>`` means nothing to the video model).
    Raises ConfigError with a hint when the object cannot be found.
    """
    check_text("the motion prompt", motion)
    for name, text in (
        ("--subject", subject),
        ("--static-prompt", static_prompt),
        ("--refine-prompt", refine_prompt),
    ):
        if text is not None:
            check_text(name, text)
    motion = " ".join(motion.split())
    if not motion:
        raise ConfigError(
            "the motion prompt is empty", hint='give a short description, e.g. "a panda is dancing"'
        )
    subj = " ".join(subject.split()) if subject else None
    if subject is not None and not subj:
        raise ConfigError("--subject is empty", hint="name the object in a word or two, e.g. --subject panda")
    if TOKEN in motion:
        if not subj:
            raise ConfigError(
                f"the motion prompt contains {TOKEN}, which only the refine stage understands",
                hint='give the plain motion prompt ("a panda is dancing"; the refine prompt is derived), '
                "or add --subject WORD so that the other stages read WORD in its place",
            )
        dynamic = motion.replace(TOKEN, subj)
        refine = motion
        static = STATIC_TEMPLATE.format(_object_words(subj, None))
    else:
        found = _parse_subject(motion)
        if subj is None:
            if found is None:
                raise ConfigError(
                    f"cannot tell which object the prompt {motion!r} is about",
                    hint='start the prompt with the object ("a panda is dancing") or name it with --subject panda',
                )
            subj = found.phrase
            static = STATIC_TEMPLATE.format(_object_words(subj, found.determiner))
            refine = motion[: found.end - len(found.phrase)] + TOKEN + motion[found.end :]
        else:
            static = STATIC_TEMPLATE.format(_object_words(subj, None))
            pattern = re.compile(rf"(?<!\w){re.escape(subj)}(?!\w)", re.IGNORECASE)
            refine = pattern.sub(TOKEN, motion, count=1) if pattern.search(motion) else f"{motion}, {TOKEN}"
        dynamic = motion
    if refine_prompt is not None and TOKEN not in refine_prompt:
        log.warning(
            "the refine prompt %r has no %s: the learned token will not be used", refine_prompt, TOKEN
        )
    return Prompts(
        static=(static_prompt or static).strip(),
        dynamic=dynamic,
        refine=(refine_prompt or refine).strip(),
        subject=subj,
        initializer=_head_noun(subj),
    )


# --- run-all ---------------------------------------------------------------------------------------
def run_pipeline(
    project: Project,
    cfg: Config,
    *,
    start: str | None = None,
    stop: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    prompts: Prompts | None = None,
    force: bool = False,
    show_progress: bool = True,
    on_start: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    report: bool = False,
) -> list[Any]:
    """Run the registered stages from ``start`` to ``stop`` (inclusive) and return their results.

    ``report``: a run that reaches the last stage (``render``) ends by writing ``report.html``
    (:func:`animate124.stages.report.run_report_stage`, announced to ``on_start`` as
    :data:`~animate124.stages.report.REPORT_STAGE`; its result is the last one returned; skipped when
    the page would not change). ``run-all`` asks for it.

    Each stage's run function is called as ``run(project, cfg, force=, show_progress=, **options[name])``
    (``options["preprocess"]["image"]`` is the input image). ``prompts`` are recorded in the project's
    manifest (for the single-stage commands' defaults) once the project exists. ``on_start`` and
    ``on_done`` let the caller report progress; the first error propagates.
    """
    from animate124.engine.runner import StageResult

    options = options or {}
    results: list[Any] = []
    stages = stage_range(start, stop)
    for stage in stages:
        if prompts is not None and project.exists():
            project.record("prompts", prompts.as_dict())
        if on_start:
            on_start(stage)
        kwargs = dict(options.get(stage.name, {}))
        result = stage.run_function()(project, cfg, force=force, show_progress=show_progress, **kwargs)
        if not isinstance(result, StageResult):
            result = StageResult(stage.name, skipped=False)
        results.append(result)
        if on_done:
            on_done(result)
    if prompts is not None and project.exists():
        project.record("prompts", prompts.as_dict())
    if report and stages[-1].name == STAGE_NAMES[-1]:
        from animate124.stages.report import REPORT_STAGE, run_report_stage

        if on_start:
            on_start(REPORT_STAGE)
        result = run_report_stage(project, cfg, force=force)
        results.append(result)
        if on_done:
            on_done(result)
    return results
