"""The training stages on the tiny preset: prerequisites, SIGKILL + resume, the refine stage's frozen copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from animate124.config import resolve_config
from animate124.errors import InputError, ProjectError
from animate124.project import Project

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
PROMPTS = {"static": {"prompt": "a toy"}, "dynamic": {"prompt": "a toy is spinning"}}


def tiny(**sections) -> object:
    opts = {k: dict(v) for k, v in PROMPTS.items()}
    opts["refine"] = {"prompt": "a <token> is spinning"}
    for sec, vals in sections.items():
        opts.setdefault(sec, {}).update(vals)
    return resolve_config("tiny", None, opts, [])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with preprocess and invert done (copied by each test)."""
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("stages") / "base"
    p = Project(root)
    cfg = tiny()
    run_preprocess(p, cfg, TOY)
    run_invert(p, cfg, show_progress=False)
    return root


@pytest.fixture(scope="module")
def dynamic_done(prepared, tmp_path_factory) -> Path:
    """``prepared`` with the static and dynamic stages run at the tiny preset (copied by each test)."""
    from animate124.stages.dynamic import run_dynamic
    from animate124.stages.static import run_static

    root = tmp_path_factory.mktemp("stages") / "dynamic_done"
    p = _copy(prepared, root)
    run_static(p, tiny(), show_progress=False)
    run_dynamic(p, tiny(), show_progress=False)
    return root


def _copy(src: Path, dst: Path) -> Project:
    shutil.copytree(src, dst)
    return Project(dst)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_stage_without_its_prerequisite_names_the_command(prepared, tmp_path):
    from animate124.stages.dynamic import run_dynamic

    p = _copy(prepared, tmp_path / "p")
    with pytest.raises(ProjectError) as ei:
        run_dynamic(p, tiny(), show_progress=False)
    assert "static" in ei.value.message and "animate124 static" in (ei.value.hint or "")


def test_token_in_a_prompt_without_a_learned_token_is_a_clear_error(prepared, tmp_path):
    from animate124.stages.static import run_static

    p = _copy(prepared, tmp_path / "p")
    with pytest.raises(InputError, match="<token>"):
        run_static(p, tiny(static={"prompt": "a <token> on a table"}), show_progress=False)
    assert p.stage_record("static")["status"] == "failed"


_RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    from animate124.config import resolve_config
    from animate124.project import Project
    from animate124.stages.spec import get_stage
    stage, root = sys.argv[1], sys.argv[2]
    opts = {"static": {"prompt": "a toy", "iters": 12}, "dynamic": {"prompt": "a toy is spinning", "iters": 12},
            "refine": {"prompt": "a <token> is spinning", "iters": 9}, "run": {"checkpoint_every": 3}}
    cfg = resolve_config("tiny", None, opts, [])
    get_stage(stage).run_function()(Project(root), cfg, show_progress=False)
    """
)


# The default thread count: a run sums in a fixed order at any thread count (run.deterministic; the static
# and dynamic stages' exact resume is tests/test_reproducible.py).
ENV = dict(os.environ)


def _run_killed(stage: str, project: Project, env: dict[str, str] = ENV) -> int:
    """Start the stage in a subprocess, SIGKILL it once a checkpoint exists, return that checkpoint's step."""
    from animate124.engine.checkpoint import load_latest_checkpoint

    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_SCRIPT, stage, str(project.root)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = project.stage(stage).checkpoints
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(ckpt.glob("ckpt-*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, f"the stage ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    ck = load_latest_checkpoint(ckpt)
    assert ck is not None
    return ck.step


def _kill_cfg(stage: str) -> object:
    return tiny(
        static={"iters": 12},
        dynamic={"iters": 12},
        refine={"prompt": "a <token> is spinning", "iters": 9},
        run={"checkpoint_every": 3},
    )


def test_refine_frozen_copy_is_the_dynamic_result_after_a_resume(prepared, tmp_path, monkeypatch):
    from animate124.stages import refine as refine_mod
    from animate124.stages.dynamic import run_dynamic
    from animate124.stages.static import run_static

    cfg = _kill_cfg("refine")
    p = _copy(prepared, tmp_path / "p")
    run_static(p, cfg, show_progress=False)
    run_dynamic(p, cfg, show_progress=False)
    killed_at = _run_killed("refine", p)
    assert 0 < killed_at < 9

    seen: list[refine_mod.RefineSystem] = []
    orig = refine_mod.RefineSystem.__init__

    def spy(self, **kw):
        orig(self, **kw)
        seen.append(self)

    monkeypatch.setattr(refine_mod.RefineSystem, "__init__", spy)
    r = refine_mod.run_refine(p, cfg, show_progress=False)
    assert r.resumed and r.metrics["resumed_from_step"] == killed_at
    (system,) = seen
    dyn = _tensors(p.artifact("dynamic_model"))
    frozen = {f"field/{k}": v for k, v in system.frozen_field.state_dict().items()}
    assert frozen.keys() <= dyn.keys()
    for k, v in frozen.items():
        assert torch.equal(v.cpu(), dyn[k]), k
    trained = _tensors(p.artifact("refine_model"))
    assert not torch.equal(trained["field/encoder.embeddings"], dyn["field/encoder.embeddings"])


def test_refine_frozen_copy_renders_only_the_frames_controlnet_reads(dynamic_done, tmp_path, monkeypatch):
    """``refine.frozen_frames=read`` (default) renders only the 2 frames of the tiny clip's 4 that ControlNet
    reads, and gives it the same condition images (bit for bit) and the same loss as rendering the whole
    clip and keeping those two (``all``, upstream), from the same state of the same step."""
    from animate124.stages import refine as refine_mod

    p = _copy(dynamic_done, tmp_path / "p")
    seen: list[refine_mod.RefineSystem] = []
    orig_init, orig_render = refine_mod.RefineSystem.__init__, refine_mod.RefineSystem.render
    asked: list[object] = []

    def spy_init(self, **kw):
        orig_init(self, **kw)
        seen.append(self)

    def spy_render(self, field, *a, **kw):
        if field is self.frozen_field:
            asked.append(kw.get("frames"))
        return orig_render(self, field, *a, **kw)

    monkeypatch.setattr(refine_mod.RefineSystem, "__init__", spy_init)
    monkeypatch.setattr(refine_mod.RefineSystem, "render", spy_render)
    refine_mod.run_refine(p, tiny(refine={"iters": 1}), show_progress=False)
    (system,) = seen
    real = system.controlnet
    conditions: list[torch.Tensor] = []

    def recorder(images, views, **kw):
        conditions.append(views.condition.clone())
        return real(images, views, **kw)

    system.controlnet = recorder
    recorder.frames = real.frames
    state = system.generator.get_state()
    losses = {}
    for mode in ("read", "all"):
        system.frozen_frames = mode
        system.generator.set_state(state)
        asked.clear()
        with torch.no_grad():
            terms, _ = system.guidance_step(2, 1.0)
        losses[mode] = float(terms["controlnet"])
        assert asked == ([[0, 2]] if mode == "read" else [None])
    read, whole = conditions
    assert read.shape == whole.shape and read.shape[1] == 4
    assert torch.equal(read[:, [0, 2]], whole[:, [0, 2]]) and whole[:, [0, 2]].abs().sum() > 0
    assert read[:, [1, 3]].abs().sum() == 0  # never read by ControlNet
    assert losses["read"] == losses["all"]


def test_a_step_out_of_gpu_memory_is_run_again_with_the_render_checkpointed(prepared, tmp_path, monkeypatch):
    """The static stage's 3rd and 4th training renders raise CUDA's out-of-memory error: the trainer runs the step
    again with the priors' kept VAE activations dropped (``static.vae_keep_pixels=0``), then again with
    ``raymarch.checkpoint_field=1`` (the system's ``save_memory``, one saver per failure), the stage finishes, the
    manifest says from which step and the last change, and every later training render is checkpointed."""
    from animate124.stages import system as system_mod
    from animate124.stages.static import run_static

    seen: list[int] = []
    real = system_mod.render

    def spy(*a, **kw):
        if torch.is_grad_enabled() and kw.get("compute_normals"):
            seen.append(kw.get("checkpoint_field", 0))
            if len(seen) in (3, 4):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **kw)

    monkeypatch.setattr(system_mod, "render", spy)
    p = _copy(prepared, tmp_path / "p")
    run_static(p, tiny(), show_progress=False)
    rec = p.stage_record("static")
    assert rec["status"] == "done"
    saving = rec["metrics"]["memory_saving"]
    assert saving["change"].startswith("raymarch.checkpoint_field=1") and saving["step"] >= 1
    assert saving["retries"] == 2
    assert seen[:4] == [0, 0, 0, 0] and set(seen[4:]) == {1}


@pytest.mark.slow
def test_grad_stats_leave_every_stage_unchanged_and_name_each_loss_group(prepared, tmp_path):
    """``run.grad_stats_every=1``: every step of static, dynamic and refine also takes the gradient of each
    loss group through the same graph (the renderer's and grid's backward, the priors' VAE recompute, the
    time TV), yet every result is bit for bit that of the run without it; each stage's log names its groups.
    One thread: bit-exact equality needs the same floating-point summation order in both runs."""
    from animate124.stages.dynamic import run_dynamic
    from animate124.stages.refine import run_refine
    from animate124.stages.static import run_static

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    projects = []
    try:
        for every in (0, 1):
            p = _copy(prepared, tmp_path / f"every{every}")
            cfg = tiny(run={"grad_stats_every": every}, dynamic={"iters": 4}, refine={"iters": 2})
            for run in (run_static, run_dynamic, run_refine):
                run(p, cfg, show_progress=False)
            projects.append(p)
    finally:
        torch.set_num_threads(threads)
    off, on = projects
    for artifact in ("static_model", "dynamic_model", "refine_model"):
        a, b = _tensors(off.artifact(artifact)), _tensors(on.artifact(artifact))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (artifact, k)
    import json

    def groups(p: Project, stage: str) -> tuple[set[str], int]:
        recs = [json.loads(x) for x in p.log_path(stage).read_text().splitlines()]
        return {k for r in recs for k in r if k.startswith("grad/")}, sum("grad/total" in r for r in recs)

    assert groups(off, "static") == (set(), 0)
    keys, n = groups(on, "static")
    assert keys == {"grad/reference", "grad/regularizers", "grad/sd", "grad/zero123", "grad/total"} and n == 8
    keys, n = groups(on, "dynamic")
    assert {
        "grad/reference",
        "grad/regularizers",
        "grad/time_tv",
        "grad/video",
        "grad/total",
    } <= keys and n == 4
    assert keys <= {
        "grad/reference",
        "grad/regularizers",
        "grad/time_tv",
        "grad/video",
        "grad/zero123",
        "grad/total",
    }
    keys, n = groups(on, "refine")
    assert {
        "grad/controlnet",
        "grad/video",
        "grad/time_tv",
        "grad/regularizers",
        "grad/total",
    } <= keys and n == 2


def test_refine_condition_is_an_independent_render_of_the_dynamic_result(dynamic_done, tmp_path, monkeypatch):
    """The ControlNet condition of a refine step equals a render of the dynamic stage's saved result (loaded
    here on its own), with the rays, times, shading, light, background and random numbers of that step's
    trainable render, at the frames ControlNet reads (SPEC 6 step 1) — not a render of the field being
    refined, nor of another stage's result. The step checked is the second (both are guidance steps), after
    one update of the trainable field."""
    from animate124.render.renderer import render
    from animate124.stages import refine as refine_mod
    from animate124.stages.artifacts import load_trained

    p = _copy(dynamic_done, tmp_path / "p")
    cfg = tiny(refine={"iters": 2})
    calls: list[dict] = []
    conditions: list[torch.Tensor] = []
    orig_render, orig_init = refine_mod.RefineSystem.render, refine_mod.RefineSystem.__init__

    def spy_render(self, field, occupancy, cameras, times, **kw):
        if field is self.field and kw.get("frames") is None:  # the trainable render: its arguments, generator
            calls.append({"cameras": cameras, "times": times, "state": kw["generator"].get_state(), **kw})
        return orig_render(self, field, occupancy, cameras, times, **kw)

    def spy_init(self, **kw):
        orig_init(self, **kw)
        real = self.controlnet

        def recorder(images, views, **k):
            conditions.append(views.condition.clone())
            return real(images, views, **k)

        recorder.frames, recorder.name, recorder.loss_key = real.frames, real.name, real.loss_key
        self.controlnet = recorder

    monkeypatch.setattr(refine_mod.RefineSystem, "render", spy_render)
    monkeypatch.setattr(refine_mod.RefineSystem, "__init__", spy_init)
    refine_mod.run_refine(p, cfg, show_progress=False)
    clips = [c for c in calls if c["times"] is not None and c["times"].shape[1] > 1]  # the clips, not t = 0
    assert len(clips) == len(conditions) == 2
    call, cond = clips[-1], conditions[-1]
    dyn = load_trained(p.artifact("dynamic_model"), torch.device("cpu"))
    replay = torch.Generator().set_state(call["state"])
    r = cfg.raymarch
    want = render(
        dyn.field, call["cameras"], call["times"], shading=call["shading"], ambient=call["ambient"],
        light_dir=call["light_dir"], bg_color=call["bg_color"], occupancy=dyn.occupancy, perturb=True,
        generator=replay, compute_normals=True, normal_eps=r.normal_eps, max_steps=r.max_steps,
        min_near=r.min_near, delta_mode="metric" if r.metric_step else "upstream", t_thresh=r.transmittance_thresh,
    ).rgb  # fmt: skip
    read = [0, 2]  # tiny: 4 frames, even:2
    torch.testing.assert_close(cond[:, read], want[:, read], rtol=0, atol=1e-6)
    assert cond[:, read].abs().sum() > 0 and cond[:, [1, 3]].abs().sum() == 0
    refined = load_trained(p.artifact("refine_model"), torch.device("cpu"))
    other = render(
        refined.field, call["cameras"], call["times"], shading=call["shading"], ambient=call["ambient"],
        light_dir=call["light_dir"], bg_color=call["bg_color"], occupancy=refined.occupancy, perturb=True,
        generator=torch.Generator().set_state(call["state"]), compute_normals=True, normal_eps=r.normal_eps,
        max_steps=r.max_steps, min_near=r.min_near, t_thresh=r.transmittance_thresh,
    ).rgb  # fmt: skip
    assert not torch.allclose(other[:, read], want[:, read], atol=1e-4)  # the refined field renders otherwise
