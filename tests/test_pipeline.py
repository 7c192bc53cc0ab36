"""run-all's pipeline (stage order from the registry) and the prompts it derives."""

from __future__ import annotations

import json

import pytest

from animate124.config import resolve_config
from animate124.engine.runner import StageResult
from animate124.errors import ConfigError, InputError
from animate124.guidance.prompts import check_prompt_length, token_count, token_limit
from animate124.project import Project
from animate124.stages.pipeline import (
    derive_prompts,
    guess_subject,
    run_pipeline,
)
from animate124.stages.spec import STAGE_NAMES, STAGES


def test_upstream_examples_refine_prompts_match(shared_data):
    """The refine prompt of every upstream example is derived exactly; the static prompt names the
    subject (as upstream's panda example), not the whole motion."""
    examples = json.loads((shared_data / "animate124" / "prompts.json").read_text())
    for name, ex in examples.items():
        p = derive_prompts(ex["dynamic"])
        assert p.refine == ex["refine"], name
        assert p.dynamic == ex["dynamic"]
        assert p.static.startswith("a high-resolution DSLR image of ")
    assert derive_prompts(examples["panda-dance"]["dynamic"]).static == examples["panda-dance"]["static"]


@pytest.mark.parametrize(
    "motion, subject, static, refine",
    [
        ("a toy is spinning", "toy", "a high-resolution DSLR image of a toy", "a <token> is spinning"),
        ("an astronaut, helmet in hand, rides a horse", "astronaut", "a high-resolution DSLR image of an astronaut", "an <token>, helmet in hand, rides a horse"),
        ("a space shuttle launching", "space shuttle", "a high-resolution DSLR image of a space shuttle", "a <token> launching"),
        ("the kangaroo is jumping", "kangaroo", "a high-resolution DSLR image of a kangaroo", "the <token> is jumping"),
        ("two pandas dance", "pandas", "a high-resolution DSLR image of two pandas", "two <token> dance"),
        ("a horse gallops in a field", "horse", "a high-resolution DSLR image of a horse", "a <token> gallops in a field"),
    ],
)  # fmt: skip
def test_derived_prompts(motion, subject, static, refine):
    p = derive_prompts(motion)
    assert (p.subject, p.static, p.refine, p.dynamic) == (subject, static, refine, motion)
    assert "is spinning" not in p.static


def test_initializer_is_the_head_noun():
    assert derive_prompts("a full-bodied tiger standing on its hind legs").initializer == "tiger"
    assert derive_prompts("a space shuttle launching").initializer == "shuttle"


def test_emoji_and_bare_verbs_ask_for_a_subject():
    for motion in ("🐼 is dancing", "🐼💃", "is dancing"):
        assert guess_subject(motion) is None
        with pytest.raises(ConfigError, match="cannot tell") as ei:
            derive_prompts(motion)
        assert "--subject" in ei.value.hint
    p = derive_prompts("🐼 is dancing", subject="panda")
    assert p.static == "a high-resolution DSLR image of a panda" and p.dynamic == "🐼 is dancing"
    assert "<token>" in p.refine


def test_token_in_the_motion_prompt_is_not_doubled():
    with pytest.raises(ConfigError, match="<token>"):
        derive_prompts("a <token> is dancing")
    p = derive_prompts("a <token> is dancing", subject="panda")
    assert p.refine == "a <token> is dancing" and "<<" not in p.refine
    assert p.dynamic == "a panda is dancing" and p.static == "a high-resolution DSLR image of a panda"


def test_overrides_win():
    p = derive_prompts("a panda is dancing", static_prompt="a panda, 3d", refine_prompt="a <token> dances")
    assert (p.static, p.refine) == ("a panda, 3d", "a <token> dances")


def test_prompt_length():
    """One limit (the encoder's positions less its start and end markers: 75 for CLIP) and one wording;
    without a tokenizer the count is a lower bound and says so."""
    assert token_count(None, "a panda is dancing, 8k") == 7  # a panda is dancing , 8 k
    assert token_limit(None) == 75
    with pytest.raises(InputError, match=r"the motion prompt is at least 500 tokens long; .* at most 75"):
        check_prompt_length(None, " ".join(["word"] * 500), "motion prompt")
    check_prompt_length(None, " ".join(["word"] * 75), "motion prompt")

    class Tok:  # an exact tokenizer: two tokens per word, 77 positions
        model_max_length = 77

        def __call__(self, text, add_special_tokens=False, truncation=False):
            return type("E", (), {"input_ids": [0, 0] * len(text.split())})()

    check_prompt_length(Tok(), " ".join(["word"] * 37))
    with pytest.raises(InputError) as err:
        check_prompt_length(Tok(), " ".join(["word"] * 38))
    assert err.value.message == "the prompt is 76 tokens long; the text encoder reads at most 75"


def test_pipeline_runs_the_registered_stages_in_order(tmp_path, monkeypatch):
    """run-all is generic over the registry: every stage (render included) in order, --from/--until
    select a slice, and a non-StageResult return (render) is reported as a result."""
    import importlib

    calls = []

    def fake(name, returns=True):
        def run(project, cfg, *, force=False, show_progress=True, **options):
            calls.append((name, options))
            project.create()
            return StageResult(name, skipped=False) if returns else None

        return run

    for stage in STAGES:
        module, _, func = stage.runner.partition(":")
        monkeypatch.setattr(importlib.import_module(module), func, fake(stage.name, stage.name != "render"))
    proj = Project(tmp_path / "p")
    cfg = resolve_config("tiny")
    prompts = derive_prompts("a toy is spinning")
    seen = []
    results = run_pipeline(
        proj,
        cfg,
        options={"preprocess": {"image": "x.png"}},
        prompts=prompts,
        on_start=lambda s: seen.append(s.name),
    )
    assert [c[0] for c in calls] == list(STAGE_NAMES) == seen == [r.stage for r in results]
    assert calls[0][1] == {"image": "x.png"} and calls[1][1] == {}
    assert proj.recorded("prompts")["refine"] == "a <token> is spinning"
    calls.clear()
    run_pipeline(proj, cfg, start="static", stop="refine")
    assert [c[0] for c in calls] == ["static", "dynamic", "refine"]
    with pytest.raises(ConfigError, match="not a stage"):
        run_pipeline(proj, cfg, stop="nowhere")
