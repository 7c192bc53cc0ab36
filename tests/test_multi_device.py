"""One asset's priors on several devices (``run.devices`` / ``--gpus N``, issue 29), on the CPU.

torch has one CPU device, so ``run.devices=cpu,cpu`` cannot show that a tensor changed device. It runs the
whole multi-device path instead (the placement, every prior wrapped in a PlacedPrior, the copies to the
prior's device and back), and the tests make that path observable: the copies are spied on and made real
copies (``copy=True``: a new tensor, the same values, a differentiable copy), and each step checks that every
prior's loss the trainer adds is such a copy to the first device. The three stages, assembled as their
``run_*`` functions assemble them, must then give bit for bit the one-device results: the losses of every
logged step and the trained weights. A change of the random numbers' order (a prior called in another order,
a draw added or moved), a loss not brought back, or a copy that changes values fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from animate124.cli.app import app
from animate124.config import resolve_config
from animate124.errors import ConfigError
from animate124.guidance import placement as placement_mod
from animate124.guidance.interface import GuidanceOutput, Views
from animate124.guidance.placement import PlacedPrior, views_to
from animate124.project import Project
from animate124.stages.placement import PriorPlacement, place_priors

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy.png"
CPU = torch.device("cpu")
PROMPTS = {
    "static": {"prompt": "a toy"},
    "dynamic": {"prompt": "a toy is spinning"},
    "refine": {"prompt": "a <token> is spinning"},
}


def tiny(**sections) -> object:
    opts = {k: dict(v) for k, v in PROMPTS.items()}
    for sec, vals in sections.items():
        opts.setdefault(sec, {}).update(vals)
    return resolve_config("tiny", None, opts, [])


# ---------------------------------------------------------------------------------------- config, CLI
def test_run_devices_are_checked_before_any_work():
    from animate124.engine.runtime import resolve_devices, training_device

    assert resolve_devices(tiny(run={"device": "cpu"})) == (CPU,)
    cpus = tiny(run={"devices": "cpu, cpu"})
    assert resolve_devices(cpus) == (CPU, CPU) and training_device(cpus) == CPU
    assert resolve_devices(tiny(run={"device": "cpu", "devices": "cpu,cpu"})) == (CPU, CPU)
    with pytest.raises(ConfigError, match=r"run.devices: 'gpu1' is not a device"):
        resolve_devices(tiny(run={"devices": "cpu,gpu1"}))
    with pytest.raises(ConfigError, match=r"run.devices: 'auto' is not a device"):
        resolve_devices(tiny(run={"devices": "auto,cpu"}))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="run.devices holds cuda:0 but this machine has no usable CUDA"):
            resolve_devices(tiny(run={"devices": "cuda:0,cuda:1"}))
    else:
        with pytest.raises(ConfigError, match="mixes device kinds"):
            resolve_devices(tiny(run={"devices": "cuda:0,cpu"}))
        with pytest.raises(ConfigError, match="run.device is cpu but run.devices starts with cuda:0"):
            resolve_devices(tiny(run={"device": "cpu", "devices": "cuda:0"}))


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the refusal on a machine without 2 GPUs")
def test_gpus_is_refused_before_anything_is_written(tmp_path):
    """``run-all --gpus 2`` on a machine without two GPUs: exit 2, a message naming the device, no project."""
    project = tmp_path / "p"
    args = ["run-all", str(TOY), "a toy is spinning", "-p", str(project), "--preset", "tiny", "--gpus", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "run.devices holds cuda:" in res.output
    assert not project.exists()


def test_gpus_is_an_option_of_the_training_commands_only():
    runner = CliRunner()
    for command in ("static", "dynamic", "refine", "run-all"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--gpus" in out, command
    for command in ("preprocess", "invert", "render"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--gpus" not in out, command


def test_gpus_sets_the_first_n_cuda_devices():
    from animate124.cli.common import Common, build_config

    cfg = build_config(Common(preset="tiny", gpus=3), check_device=False)
    assert cfg.run.devices == "cuda:0,cuda:1,cuda:2"
    assert build_config(Common(preset="tiny"), check_device=False).run.devices == ""


# ---------------------------------------------------------------------------------------- the rule
STAGE_PRIORS = {
    "static": ["sd", "zero123"],
    "dynamic": ["video", "zero123"],
    "refine": ["video", "zero123", "controlnet"],
}


def test_the_placement_rule():
    """Heaviest prior first onto the device with the least prior work, a tie away from the first device."""
    assert place_priors(["sd", "zero123"], 1) == {"sd": 0, "zero123": 0}
    assert place_priors(["sd", "zero123"], 2) == {"sd": 1, "zero123": 0}
    assert place_priors(["sd", "zero123"], 3) == {"sd": 1, "zero123": 2}
    assert place_priors(["video", "zero123"], 2) == {"video": 1, "zero123": 0}
    assert place_priors(["video"], 2) == {"video": 1}
    refine = ["video", "zero123", "controlnet"]
    assert place_priors(refine, 2) == {"video": 0, "zero123": 0, "controlnet": 1}
    assert place_priors(refine, 3) == {"video": 2, "zero123": 0, "controlnet": 1}
    assert place_priors(refine, 4) == {"video": 2, "zero123": 3, "controlnet": 1}


def test_the_docs_table_is_the_rule():
    """Every row of docs/gpu.md's placement table is what :func:`place_priors` gives."""
    text = (REPO / "docs" / "gpu.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) >= 5
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        stage, n = cells[0].strip("`"), int(cells[1])
        want = place_priors(STAGE_PRIORS[stage], n)
        for i, cell in enumerate(cells[2 : 2 + n]):
            on = {w.strip() for w in cell.replace("field", "").split(",") if w.strip()}
            assert on == {name for name, d in want.items() if d == i}, (row, want)


# ---------------------------------------------------------------------------------------- the wrapper
class _Prior:
    name = "sd"
    loss_key = "sds"
    frames = "even:2"

    def __call__(self, images, views, *, step, generator=None, noise=None, t=None):
        eps = torch.randn(images.shape, generator=generator)
        return GuidanceOutput({"sds": (images * eps).sum()}, {"t": 1.0})


def test_a_placed_prior_reads_and_writes_through():
    inner = _Prior()
    placed = PlacedPrior(inner, CPU, CPU)
    assert (placed.name, placed.loss_key, placed.frames) == ("sd", "sds", "even:2")
    placed.unet = "replaced"  # release_graphs swaps a prior's networks like this
    assert inner.unet == "replaced" and "unet" not in vars(placed)
    cond = torch.rand(1, 2, 3, 4, 4)
    views = Views.from_relative([[0.0, 0.0]], [[0.0, 10.0]], [[0.0, 0.0]], condition=cond)
    assert views_to(views, CPU) is views  # nothing to move: the same views
    images = torch.rand(1, 2, 3, 4, 4, requires_grad=True)
    out = placed(images, views, step=0, generator=torch.Generator().manual_seed(0))
    ref = inner(images, views, step=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.losses["sds"], ref.losses["sds"]) and out.diagnostics == {"t": 1.0}
    (grad,) = torch.autograd.grad(out.losses["sds"], images)
    assert grad.abs().sum() > 0


def test_one_device_builds_the_priors_unwrapped():
    """Without run.devices the priors are built on the training device and returned as they are."""
    place = PriorPlacement.of(tiny(), ["sd", "zero123"], CPU)
    assert not place.several
    marker = object()
    assert place.build("sd", lambda d: marker) is marker
    two = PriorPlacement.of(tiny(run={"devices": "cpu,cpu"}), ["sd", "zero123"], CPU)
    built = two.build("sd", lambda d: _Prior())
    assert isinstance(built, PlacedPrior) and built.home == CPU
    assert two.describe() == "sd -> cpu, zero123 -> cpu"


# ---------------------------------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A tiny project with preprocess and invert done (copied by each run)."""
    from animate124.stages.invert import run_invert
    from animate124.stages.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("multi") / "base"
    p = Project(root)
    run_preprocess(p, tiny(), TOY)
    run_invert(p, tiny(), show_progress=False)
    return root


def _run_stages(prepared: Path, root: Path, devices: str) -> Project:
    from animate124.stages.dynamic import run_dynamic
    from animate124.stages.refine import run_refine
    from animate124.stages.static import run_static

    shutil.copytree(prepared, root)
    p = Project(root)
    cfg = tiny(run={"devices": devices}, dynamic={"iters": 6}, refine={"iters": 3})
    for run in (run_static, run_dynamic, run_refine):
        run(p, cfg, show_progress=False)
    return p


def _losses(p: Project, stage: str) -> list[dict[str, float]]:
    recs = [json.loads(x) for x in p.log_path(stage).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss")} for r in recs]


def _weights(p: Project, artifact: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(p.artifact(artifact)))


def _stage_of(system: object) -> str:
    from animate124.stages.refine import RefineSystem
    from animate124.stages.system import DynamicSystem

    if isinstance(system, RefineSystem):
        return "refine"
    return "dynamic" if isinstance(system, DynamicSystem) else "static"


def _brought_home(loss: torch.Tensor, homes: list[torch.Tensor]) -> bool:
    """``loss`` is one of the copies made to the first device, or (static, ``sds_grad_scale=upstream``) such
    a copy times 1/S: its autograd node's input is the copy's node."""
    if any(loss is c for c in homes):
        return True
    inputs = [f for f, _ in loss.grad_fn.next_functions] if loss.grad_fn is not None else []
    return any(c.grad_fn is not None and c.grad_fn in inputs for c in homes)


@pytest.mark.slow
def test_static_dynamic_refine_on_two_devices_equal_one_device(prepared, tmp_path, monkeypatch):
    """``run.devices=cpu,cpu`` against the one-device path, static -> dynamic -> refine at the tiny preset
    (module docstring): the same loss terms at every logged step and the same trained weights, bit for bit;
    and the multi-device path really ran: every prior is a PlacedPrior on the device the rule gives, its
    renders were copied to it, and every prior loss the trainer added was copied back to the first device."""
    from animate124.stages import system as system_mod

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact equality needs the same summation order in both runs
    try:
        one = _run_stages(prepared, tmp_path / "one", "")

        copies: list[tuple[torch.Tensor, torch.Tensor, torch.device]] = []
        real_to_device = placement_mod.to_device

        def spy_to_device(x, device, dtype=None):
            out = real_to_device(x, device, dtype).to(device, copy=True)  # a new tensor: the copy is visible
            copies.append((x, out, torch.device(device)))
            return out

        checked: dict[str, int] = {}
        real_step = system_mod.NerfSystem.training_step

        def spy_step(self, step, loss_scale):
            copies.clear()
            out = real_step(self, step, loss_scale)
            stage = _stage_of(self)
            priors = self.guidance_priors()
            assert priors and all(isinstance(p, PlacedPrior) for p in priors), priors
            names = [p.name for p in priors]
            assert {p.name: p.device for p in priors} == dict.fromkeys(names, CPU)
            assert all(p.home == CPU for p in priors)
            if out.scalars.get("reference"):
                return out
            sent = [src for src, _, _ in copies if src.ndim == 5]  # the renders (and the condition) sent out
            assert sent, f"{stage}: no render was sent to a prior's device"
            homes = [c for src, c, _ in copies if src.ndim == 0]
            for prior in priors:
                loss = out.losses.get(prior.loss_key)
                if loss is None:
                    continue  # Zero123 on a clip that does not start at t = 0
                assert _brought_home(loss, homes), f"{stage}: {prior.name}'s loss was not brought home"
                checked[stage] = checked.get(stage, 0) + 1
            return out

        monkeypatch.setattr(placement_mod, "to_device", spy_to_device)
        monkeypatch.setattr(system_mod.NerfSystem, "training_step", spy_step)
        two = _run_stages(prepared, tmp_path / "two", "cpu,cpu")
    finally:
        torch.set_num_threads(threads)
    assert set(checked) == {"static", "dynamic", "refine"} and min(checked.values()) >= 2, checked
    for stage in ("static", "dynamic", "refine"):
        a, b = _losses(one, stage), _losses(two, stage)
        assert a == b and len(a) >= 3, stage
        assert any(k not in ("loss", "loss/rgb", "loss/mask", "loss/depth") for r in a for k in r), stage
    for artifact in ("static_model", "dynamic_model", "refine_model"):
        a, b = _weights(one, artifact), _weights(two, artifact)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (artifact, k)


# ---------------------------------------------------------------------------------------- two GPUs
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def _tiny_prior_on(store, name: str, device: torch.device):
    """The tiny prior ``name`` as the stages load it on a GPU (fp16 networks, VAE recompute, CUDA graphs)."""
    from helpers_guidance import make_controlnet, make_sd, make_video, make_zero123

    from animate124.guidance.graphs import graph_prior_networks
    from animate124.models.loaders import load_controlnet, load_sd, load_video, load_zero123

    kw = dict(device=device, dtype=torch.float16)
    if name == "sd":
        prior = make_sd(load_sd(store, **kw), checkpoint_encoder=True)
    elif name == "zero123":
        ref = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(device)
        prior = make_zero123(load_zero123(store, **kw), reference=ref, checkpoint_encoder=True)
    elif name == "video":
        prior = make_video(load_video(store, **kw), checkpoint_encoder=True)
    else:
        prior = make_controlnet(load_sd(store, **kw), load_controlnet(store, **kw), checkpoint_encoder=True)
    return graph_prior_networks(prior, enabled=True)


@pytest.mark.gpu
@TWO_GPUS
@pytest.mark.parametrize("name", ("sd", "zero123", "video", "controlnet"))
def test_a_prior_on_the_second_gpu_passes_the_agreement_rule(store, name: str) -> None:
    """The prior on cuda:1 behind a PlacedPrior (home cuda:0) against the same prior on cuda:0: the loss and
    the gradient arrive on cuda:0, and the gradient passes the agreement rule (``guidance/agreement.py``), on
    the graph-recording call and on a replay (the graph recorded on cuda:1's own capture stream)."""
    from helpers_guidance import still_views

    from animate124.guidance.agreement import compare, sds_gradient
    from animate124.guidance.graphs import GraphedCall

    home, away = torch.device("cuda", 0), torch.device("cuda", 1)
    frames = 1 if name in ("sd", "zero123") else 4
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(1, frames, 3, 16, 16, generator=gen).to(home)
    cond = torch.rand(1, frames, 3, 16, 16, generator=gen).to(home)
    views = still_views(torch.linspace(20.0, 40.0, frames)[None], -10.0, frames=frames, condition=cond)
    reference_prior = _tiny_prior_on(store, name, home)
    placed = PlacedPrior(_tiny_prior_on(store, name, away), away, home)
    for call in range(3):
        ref = sds_gradient(reference_prior, images, views, seed=7 + call, autocast=torch.float16)
        got = sds_gradient(placed, images, views, seed=7 + call, autocast=torch.float16)
        assert got.device == home
        a = compare(ref, got)
        print(f"{name} call {call}: cosine {a.cosine:.7f}, norm error {a.norm_error:.2e}")
        assert a.passes(), (call, a)
    unet = placed.unet
    if isinstance(unet, GraphedCall):
        assert unet.replays > 0 and all(r.inputs[0].device == away for r in unet._graphs.values())


@pytest.mark.gpu
@TWO_GPUS
def test_the_three_stages_on_two_gpus_match_one(prepared, tmp_path) -> None:
    """static -> dynamic -> refine at the tiny preset with ``run.devices=cuda:0,cuda:1`` against
    ``run.device=cuda:0``: the losses of each stage's first logged guidance step agree to 1e-4 (the same
    weights, the same random numbers; the renderer's atomics and fp16 may make later steps drift apart within
    rounding), and every stage finishes."""
    from animate124.stages.dynamic import run_dynamic
    from animate124.stages.refine import run_refine
    from animate124.stages.static import run_static

    runs = {}
    for label, run_cfg in (("one", {"device": "cuda:0"}), ("two", {"devices": "cuda:0,cuda:1"})):
        root = tmp_path / label
        shutil.copytree(prepared, root)
        p = Project(root)
        cfg = tiny(run=run_cfg, dynamic={"iters": 6}, refine={"iters": 3})
        for run in (run_static, run_dynamic, run_refine):
            run(p, cfg, show_progress=False)
        runs[label] = p
    reference_only = {"loss", "loss/rgb", "loss/mask", "loss/depth"}
    for stage in ("static", "dynamic", "refine"):
        one = next(r for r in _losses(runs["one"], stage) if set(r) - reference_only)  # a guidance step
        two = _losses(runs["two"], stage)[_losses(runs["one"], stage).index(one)]
        assert one.keys() == two.keys(), stage
        for k, v in one.items():
            assert two[k] == pytest.approx(v, rel=1e-4, abs=1e-7), (stage, k)


# ---------------------------------------------------------------------------------------- the benchmark record
def test_the_multi_gpu_record_reads_rates_and_card_peaks(tmp_path) -> None:
    """``benchmarks/multi_gpu.py``: each stage's steady rate from the two projects' logs, the speedup, and the
    largest nvidia-smi ``memory.used`` per card."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from multi_gpu import record

    for label, ms in (("one", {"static": 100, "refine": 600}), ("two", {"static": 80, "refine": 400})):
        logs = tmp_path / label / "logs"
        logs.mkdir(parents=True)
        for stage, step_ms in ms.items():
            lines = [json.dumps({"step": s, "time": 1000.0 + s * step_ms / 1000.0}) for s in range(0, 41, 5)]
            (logs / f"{stage}.jsonl").write_text("\n".join(lines) + "\n")
    smi = tmp_path / "smi.csv"
    smi.write_text("0, 1024\n1, 512\n0, 3072\n1, 2048\nnot, a row\n")
    out = record(tmp_path / "one", tmp_path / "two", 2, "H100", smi_several=smi)
    assert set(out["stages"]) == {"static", "refine"}
    refine = out["stages"]["refine"]
    assert refine["one"]["ms_per_step"] == pytest.approx(600.0) and refine["several"]["ms_per_step"] == 400.0
    assert refine["speedup"] == pytest.approx(1.5)
    assert out["stages"]["static"]["speedup"] == pytest.approx(1.25)
    assert out["peak_used_gib_per_card"] == {"one": None, "several": [3.0, 2.0]}
